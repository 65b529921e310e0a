"""N-way K-shot episodes gathered in the graph from class-indexed images.

All images of a split live in one tensor, grouped by class (see
`tfmaml.data.sources`). A meta-batch is drawn with a handful of vectorised
ops: random scores ranked by `tf.math.top_k` pick distinct classes per task
and distinct examples per class, and one `tf.gather` collects the images.
Randomness is stateless and seeded by `(seed, batch index)` (see
`tfmaml.data.streams`).
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfmaml.batches import EPISODE_ROWS
from tfmaml.batches import EPISODE_TURNS
from tfmaml.batches import QUERY_X
from tfmaml.batches import SUPPORT_X
from tfmaml.batches import SUPPORT_Y
from tfmaml.checks import check_int
from tfmaml.checks import check_optional_int
from tfmaml.data import sources
from tfmaml.data.augmentation import AffineAugmentation
from tfmaml.data.augmentation import check_augment
from tfmaml.data.sources import ClassIndexedImages
from tfmaml.data.streams import batch_seeds
from tfmaml.data.streams import indexed_stream

# The augmentation's draws: a stream of their own, so turning augmentation
# on leaves the sampled classes and examples as they were.
AUGMENTATION_SEED_OFFSET = 3_000_017


def episodes(
    source,
    num_ways: int,
    num_shots: int,
    num_queries: int,
    meta_batch_size: int,
    *,
    seed: int = 0,
    rotations: bool = False,
    reflections: bool = False,
    group_by: str | None = None,
    augment: AffineAugmentation | None = None,
    num_batches: int | None = None,
    start: int = 0,
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of meta-batches of N-way K-shot episodes.

    Each task picks `num_ways` distinct classes (with `rotations`, a class
    rotated by 90, 180 or 270 degrees is a class of its own; with
    `reflections`, so is its mirror image), then
    `num_shots + num_queries` distinct examples of each: the first
    `num_shots` form the support set and the rest the query set, so no
    example is in both. Classes are labelled `0..num_ways-1` in a random
    order per task. Elements are `(x, y)` in the `tfmaml.MAML` layout:
    `support_x [B, N*K, ...]`, `support_y [B, N*K]` (int32),
    `query_x [B, N*Q, ...]` and `y [B, N*Q]`, examples ordered by label.

    Args:
        source: The split's labelled images, already preprocessed (see
            `prepare`): a `ClassIndexedImages`, a finite `tf.data.Dataset`
            of `(image, label)` (e.g. a TFDS split loaded with
            `as_supervised=True`), or an `(images, labels)` pair of arrays.
        num_ways: Classes per task (N).
        num_shots: Support examples per class (K).
        num_queries: Query examples per class.
        meta_batch_size: Tasks per element (B).
        seed: Seeds the stream. Defaults to `0`.
        rotations: Whether rotated classes are new classes (Omniglot
            practice). Defaults to `False`.
        reflections: Whether mirrored (left-right) classes are new classes
            too: with `rotations`, the eight symmetries of the square make
            eight classes of each. A character's mirror image is another
            character, as its rotations are. On Omniglot's 20-way recipe
            (150-step screening) it raised validation accuracy on a
            held-out alphabet by 1.3 points and left the test alphabets
            level (benchmarks/RESULTS.md). Defaults to `False`.
        group_by: A metadata field of `source` (e.g. `"alphabet"`): each
            task then draws all its classes from one group, picked
            uniformly among the groups with at least `num_ways` classes
            (Lake et al.'s within-alphabet one-shot runs; harder, since
            characters of one alphabet look alike). `grouped_classes`
            says which groups take part. Defaults to `None`: classes
            from anywhere in the split.
        augment: An `AffineAugmentation`: every support and query image
            gets its own random affine distortion (same class), drawn
            from the stream's seed and the batch index like the rest.
            Defaults to `None`: images as they are.
        num_batches: Number of elements; `None` (the default) repeats
            forever.
        start: The index of the first element: a stream started at
            `i` gives exactly the elements `i, i + 1, ...` of one
            started at 0 (how a resumed run continues). Defaults to 0.

    Returns:
        A `tf.data.Dataset`.

    Raises:
        ValueError: If the split has fewer classes than `num_ways`, a class
            has fewer than `num_shots + num_queries` examples (the class is
            named), a count is not a positive int, or `group_by` is not a
            field, splits a class, or leaves no group of `num_ways` classes.

    Example:

    >>> import numpy as np
    >>> from tfmaml.data import sources
    >>> images = np.random.rand(40, 8, 8, 1).astype("float32")
    >>> split = sources.from_arrays(images, np.arange(40) % 5)
    >>> x, y = next(iter(episodes(split, 3, 1, 2, meta_batch_size=4)))
    >>> tuple(x["support_x"].shape), tuple(y.shape)
    ((4, 3, 8, 8, 1), (4, 6))
    """
    sample = _index_sampler(
        source,
        num_ways,
        num_shots,
        num_queries,
        meta_batch_size,
        seed=seed,
        rotations=rotations,
        reflections=reflections,
        group_by=group_by,
    )
    images = tf.constant(sample.source.images)
    check_optional_int("num_batches", num_batches, minimum=1)
    check_int("start", start, minimum=0)
    check_augment(augment, images, sample.source.name)

    def make_batch(index):
        x, y = gather_episodes(
            images, sample(index), num_shots, rotations, reflections
        )
        if augment is not None:
            x = augment.apply_to_episodes(
                x, batch_seeds(seed + AUGMENTATION_SEED_OFFSET, index, 1)[0]
            )
        return x, y

    return indexed_stream(make_batch, num_batches, start)


class DeviceEpisodes:
    """Episodes gathered on the accelerator, from images that live there.

    `episodes` gathers images inside the `tf.data` pipeline, on the host,
    and every meta-batch of images is then copied to the device. Here the
    split's images are copied to `device` once; the pipeline yields only
    the sampled indices (a few kilobytes per meta-batch), and `tfmaml.MAML`
    gathers the images inside its train step, on the device. The episodes
    are those of `episodes` with the same arguments.

    Args:
        source: As for `episodes`.
        *episode_args: `episodes`' `num_ways`, `num_shots`, `num_queries`
            and `meta_batch_size` (one definition, `_index_sampler`, checks
            both).
        device: Where the images live, e.g. `"/GPU:0"`. Defaults to the
            first GPU, else the CPU.
        **episode_kwargs: `episodes`' `seed`, `rotations`, `reflections`
            and `group_by`
            (not `augment`: distortions run in `episodes`' pipeline).

    Example:

    >>> import numpy as np, keras, tfmaml
    >>> from tfmaml.data import sources
    >>> images = np.random.rand(40, 16, 16, 1).astype("float32")
    >>> split = sources.from_arrays(images, np.arange(40) % 5)
    >>> train = DeviceEpisodes(split, 3, 1, 2, meta_batch_size=4)
    >>> net = tfmaml.networks.conv4((16, 16, 1), 3, filters=4)
    >>> model = tfmaml.MAML(net, 0.1).gather_episodes_from(train)
    >>> model.compile("adam", loss=keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))
    >>> history = model.fit(train.indices(), steps_per_epoch=2, verbose=0)
    """

    def __init__(
        self, source, *episode_args, device: str | None = None, **episode_kwargs
    ):
        if "augment" in episode_kwargs:
            raise TypeError(
                "DeviceEpisodes does not distort images: `augment` is an "
                "argument of tfmaml.data.episodes only."
            )
        self._sample = _index_sampler(source, *episode_args, **episode_kwargs)
        self.num_shots = self._sample.num_shots
        self.rotations = self._sample.rotations
        self.reflections = self._sample.reflections
        if device is None:
            gpus = tf.config.list_logical_devices("GPU")
            device = gpus[0].name if gpus else "/CPU:0"
        self.device = device
        with tf.device(device):
            self.images = tf.identity(tf.constant(self._sample.source.images))

    def indices(
        self, num_batches: int | None = None, start: int = 0
    ) -> tf.data.Dataset:
        """The dataset to `fit` on: meta-batches of sampled indices,
        `{"episode_rows": [B, N, K+Q], "episode_turns": [B, N]}` (int64),
        which `gather` turns into episodes. `num_batches` and `start` are
        as for `episodes`."""
        check_optional_int("num_batches", num_batches, minimum=1)
        check_int("start", start, minimum=0)

        def make_batch(index):
            rows, turns = self._sample(index)
            return {EPISODE_ROWS: rows, EPISODE_TURNS: turns}

        return indexed_stream(make_batch, num_batches, start)

    def gather(self, indices) -> tuple[dict, tf.Tensor]:
        """Gathers the episodes `(x, y)` of a batch from `indices`."""
        with tf.device(self.device):
            return gather_episodes(
                self.images,
                (indices[EPISODE_ROWS], indices[EPISODE_TURNS]),
                self.num_shots,
                self.rotations,
                self.reflections,
            )


def gather_episodes(
    images: tf.Tensor,
    indices: tuple,
    num_shots: int,
    rotations: bool,
    reflections: bool = False,
) -> tuple[dict, tf.Tensor]:
    """Collects the episodes `(x, y)` in the `tfmaml.MAML` layout from the
    class-indexed `images` and sampled `(rows [B, N, K+Q], turns [B, N])`
    (the orientation of each class, see `_orient`).

    Args:
        images: The class-indexed images of a split.
        indices: Sampled `(rows [B, N, K+Q], turns [B, N])`.
        num_shots: Support examples per class (K).
        rotations: Whether orientations include quarter turns.
        reflections: Whether they include mirror images.
    """
    rows, turns = indices
    x = tf.gather(images, rows)  # [B, N, K+Q, H, W, C]
    x = _orient(x, turns, rotations, reflections)
    shape = tf.shape(rows)
    labels = tf.broadcast_to(
        tf.range(shape[1], dtype=tf.int32)[None, :, None], shape
    )

    def merge(t):
        return tf.reshape(t, tf.concat([[shape[0], -1], tf.shape(t)[3:]], 0))

    support = {
        SUPPORT_X: merge(x[:, :, :num_shots]),
        SUPPORT_Y: merge(labels[:, :, :num_shots]),
        QUERY_X: merge(x[:, :, num_shots:]),
    }
    return support, merge(labels[:, :, num_shots:])


class _IndexSampler(NamedTuple):
    source: ClassIndexedImages
    sample: Callable
    num_shots: int
    rotations: bool
    reflections: bool

    def __call__(self, index):
        return self.sample(index)


def _index_sampler(
    source,
    num_ways,
    num_shots,
    num_queries,
    meta_batch_size,
    *,
    seed=0,
    rotations=False,
    reflections=False,
    group_by=None,
):
    """Validates the request and returns the stateless sampler of batch
    `index`'s `(rows [B, N, K+Q], turns [B, N])`."""
    check_int("num_ways", num_ways, minimum=1)
    check_int("num_shots", num_shots, minimum=1)
    check_int("num_queries", num_queries, minimum=1)
    check_int("meta_batch_size", meta_batch_size, minimum=1)
    source = _as_class_indexed(source)
    orientations = _orientations(rotations, reflections)
    num_classes = source.num_classes * orientations
    if num_ways > num_classes:
        made = " and ".join(
            name
            for name, on in (
                ("rotations", rotations),
                ("reflections", reflections),
            )
            if on
        )
        raise ValueError(
            f"Split {source.name!r} has {num_classes} classes"
            f"{f' (with {made})' if made else ''}; an episode asks "
            f"for num_ways={num_ways}."
        )
    per_class = num_shots + num_queries
    smallest = int(np.argmin(source.class_sizes))
    if source.class_sizes[smallest] < per_class:
        raise ValueError(
            f"Class {source.class_names[smallest]!r} of split {source.name!r} "
            f"has {source.class_sizes[smallest]} examples; an episode needs "
            f"num_shots + num_queries = {per_class} of every class."
        )
    check_orientable(source, rotations, reflections)
    starts = tf.constant(source.class_starts, tf.int64)
    sizes = tf.constant(source.class_sizes, tf.int64)
    max_size = int(source.class_sizes.max())
    if group_by is not None:
        groups = grouped_classes(
            source, group_by, num_ways, rotations, reflections
        )
        # The group of each (class, orientation), as an index into `groups`
        # (-1: a group too small to take part).
        class_group = np.full(source.num_classes, -1)
        for g, members in enumerate(groups.values()):
            class_group[list(members)] = g
        class_group = tf.constant(np.repeat(class_group, orientations))

    def sample(index):
        if group_by is None:
            seeds = batch_seeds(seed, index, 2)
            class_scores = tf.random.stateless_uniform(
                [meta_batch_size, num_classes], seeds[0]
            )
        else:
            seeds = batch_seeds(seed, index, 3)
            group = tf.random.stateless_uniform(
                [meta_batch_size, 1],
                seeds[2],
                maxval=len(groups),
                dtype=tf.int64,
            )
            class_scores = tf.where(
                class_group[None, :] == group,
                tf.random.stateless_uniform(
                    [meta_batch_size, num_classes], seeds[0]
                ),
                -1.0,  # Below every score in [0, 1): never picked.
            )
        chosen = tf.math.top_k(class_scores, num_ways).indices
        chosen = tf.cast(chosen, tf.int64)
        base, turns = chosen // orientations, chosen % orientations
        example_scores = tf.random.stateless_uniform(
            [meta_batch_size, num_ways, max_size], seeds[1]
        )
        # Positions past a class's size can never be picked.
        valid = (
            tf.range(max_size, dtype=tf.int64)
            < tf.gather(sizes, base)[..., None]
        )
        example_scores = tf.where(valid, example_scores, -1.0)
        picked = tf.cast(
            tf.math.top_k(example_scores, per_class).indices, tf.int64
        )
        rows = tf.gather(starts, base)[..., None] + picked
        return rows, turns

    return _IndexSampler(source, sample, num_shots, rotations, reflections)


def grouped_classes(
    source,
    group_by: str,
    num_ways: int,
    rotations: bool = False,
    reflections: bool = False,
) -> dict[str, tuple[int, ...]]:
    """The groups that within-group episodes draw from: each group of
    `source`'s `group_by` field with at least `num_ways` classes (counting
    rotated classes with `rotations`, mirrored ones with `reflections`),
    mapped to its class indices.

    Args:
        source: The split (anything `episodes` takes).
        group_by: A metadata field, e.g. `"alphabet"`.
        num_ways: Classes per task.
        rotations: Whether rotated classes count as classes.
        reflections: Whether mirrored classes count as classes.

    Raises:
        ValueError: If `group_by` is not a field of `source` (the fields
            are named), a class's examples disagree on it (the class is
            named), or no group has `num_ways` classes (each group's count
            is given).
    """
    source = _as_class_indexed(source)
    if group_by not in source.metadata:
        raise ValueError(
            f"`group_by={group_by!r}` is not a field of split "
            f"{source.name!r}; its fields: {sorted(source.metadata)}."
        )
    values = np.asarray(source.metadata[group_by])
    members = {}
    for c, (start, size) in enumerate(
        zip(source.class_starts, source.class_sizes, strict=True)
    ):
        own = set(values[start : start + size].tolist())
        if len(own) != 1:
            raise ValueError(
                f"Class {source.class_names[c]!r} of split {source.name!r} "
                f"has examples in several {group_by!r} groups: "
                f"{sorted(map(str, own))}."
            )
        members.setdefault(str(own.pop()), []).append(c)
    orientations = _orientations(rotations, reflections)
    groups = {
        name: tuple(classes)
        for name, classes in sorted(members.items())
        if len(classes) * orientations >= num_ways
    }
    if not groups:
        counts = {n: len(c) * orientations for n, c in sorted(members.items())}
        raise ValueError(
            f"No {group_by!r} group of split {source.name!r} has "
            f"num_ways={num_ways} classes; classes per group: {counts}."
        )
    return groups


def _as_class_indexed(source):
    if isinstance(source, ClassIndexedImages):
        return source
    if isinstance(source, tf.data.Dataset):
        return sources.from_dataset(source)
    if isinstance(source, tuple) and len(source) == 2:
        return sources.from_arrays(*source)
    raise TypeError(
        "`source` must be a ClassIndexedImages, a tf.data.Dataset of "
        "(image, label) or an (images, labels) tuple. Received: "
        f"{type(source).__name__}"
    )


def check_orientable(source, rotations, reflections):
    """Raises `ValueError` naming the shape if `rotations` or `reflections`
    meet examples of `source` they cannot turn: not (height, width,
    channels) images, or, for rotations, not square ones."""
    if (rotations or reflections) and source.images.ndim != 4:
        raise ValueError(
            "Rotations and reflections turn images of shape (height, width, "
            f"channels); split {source.name!r} has examples of shape "
            f"{source.images.shape[1:]}."
        )
    if rotations and source.images.shape[1] != source.images.shape[2]:
        raise ValueError(
            f"Rotations need square images; split {source.name!r} has images "
            f"of shape {source.images.shape[1:]}."
        )


def _orientations(rotations, reflections):
    """How many classes each class of a split makes."""
    return (4 if rotations else 1) * (2 if reflections else 1)


def _orient(x, turns, rotations, reflections):
    """Turns each class's images `[B, N, E, H, W, C]` to its orientation
    `turns[b, n]`: with `rotations`, `turns % 4` quarter turns, after a
    left-right mirror when `reflections` and `turns` is past the quarter
    turns (`>= 4`, or `>= 1` without rotations)."""
    if reflections:
        quarter_turns = 4 if rotations else 1
        mirrored = (turns >= quarter_turns)[:, :, None, None, None, None]
        x = tf.where(mirrored, tf.reverse(x, axis=[4]), x)
        turns = turns % quarter_turns
    if rotations:
        x = _rotate(x, turns)
    return x


def _rotate(x, turns):
    """Rotates each class's images `[B, N, E, H, W, C]` by `turns[b, n]`
    quarter turns counter-clockwise, as `tf.image.rot90`."""
    quarter = tf.reverse(tf.transpose(x, [0, 1, 2, 4, 3, 5]), axis=[3])
    half = tf.reverse(x, axis=[3, 4])
    three_quarters = tf.reverse(quarter, axis=[3, 4])
    choices = tf.stack([x, quarter, half, three_quarters], axis=2)
    index = tf.reshape(turns, [tf.shape(turns)[0], tf.shape(turns)[1], 1])
    return tf.squeeze(tf.gather(choices, index, axis=2, batch_dims=2), axis=2)
