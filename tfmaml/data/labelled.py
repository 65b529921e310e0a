"""Batches of labelled images drawn from every class of a split at once.

Few-shot episodes show a network 20 classes at a time. Whole-class
training (a classifier over all of a split's classes, then its embedding
used for prototypes: Chen et al. 2019, Tian et al. 2020) sees every class
in every step, and on Omniglot's five training alphabets 3.3 minutes of it
gave a better embedding than the 26-minute episodic ProtoNet recipe
(benchmarks/RESULTS.md). This is its data: batch `i` is drawn from
stateless random ops seeded by `(seed, i)`, like the episodes, so a run
resumed at batch `i` sees what it would have seen.
"""

import numpy as np
import tensorflow as tf

from tfmaml.checks import check_int
from tfmaml.checks import check_optional_int
from tfmaml.data.augmentation import AffineAugmentation
from tfmaml.data.augmentation import check_augment
from tfmaml.data.episodes import AUGMENTATION_SEED_OFFSET
from tfmaml.data.episodes import _as_class_indexed
from tfmaml.data.episodes import _orient
from tfmaml.data.episodes import _orientations
from tfmaml.data.episodes import check_orientable
from tfmaml.data.episodes import grouped_classes
from tfmaml.data.streams import batch_seeds
from tfmaml.data.streams import indexed_stream

# Seeds the draws of grouped batches apart from the images' and the
# distortions', so that `group_by=None` keeps the stream it always had.
GROUP_SEED_OFFSET = 5_000_011


def labelled_classes(source, *, rotations=False, reflections=False) -> int:
    """How many classes `labelled_batches` labels in `source` (each class
    times its orientations)."""
    source = _as_class_indexed(source)
    return source.num_classes * _orientations(rotations, reflections)


def labelled_batches(
    source,
    batch_size: int,
    *,
    seed: int = 0,
    rotations: bool = False,
    reflections: bool = False,
    augment: AffineAugmentation | None = None,
    group_by: str | None = None,
    group_fraction: float = 1.0,
    num_batches: int | None = None,
    start: int = 0,
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of `(images [B, ...], labels [B])` batches.

    Each example is an image of the split drawn uniformly (with
    replacement) in a uniformly drawn orientation: with `rotations` a
    class turned by 90, 180 or 270 degrees is a class of its own, with
    `reflections` so is its mirror image, as in `tfmaml.data.episodes`.
    Class `c` in orientation `o` has label `o * num_classes + c`
    (`labelled_classes` counts them).

    Args:
        source: The split's labelled images, preprocessed (as for
            `episodes`).
        batch_size: Examples per batch (B).
        seed: Seeds the stream. Defaults to `0`.
        rotations: Rotated classes are classes. Defaults to `False`.
        reflections: Mirrored classes are classes. Defaults to `False`.
        augment: An `AffineAugmentation` applied to every image, each its
            own draw. Defaults to `None`.
        group_by: A metadata field of `source` (e.g. `"alphabet"`): a
            grouped batch draws all its images from one group, picked
            uniformly, each image uniformly among the group's. Why: a
            network normalised by batch statistics sees a within-alphabet
            task's images normalised by one alphabet's statistics, and a
            grouped batch trains it in that regime (on Omniglot's 20-way
            tasks it measured level over two seeds, so the recipe does not
            use it; benchmarks/RESULTS.md). Defaults to `None`: every image
            drawn from the whole split.
        group_fraction: With `group_by`, the fraction of batches that are
            grouped, each batch drawn grouped or not by its own seed; the
            others draw from the whole split. Defaults to `1.0`.
        num_batches: Number of batches; `None` (the default) repeats
            forever.
        start: The index of the first batch (a resumed run). Defaults to 0.

    Raises:
        ValueError: If a count is not a positive int, `augment`'s ranges
            are bad, or rotations, reflections or `augment` meet examples
            that are not (height, width, channels) images (square, for
            rotations).
        TypeError: If `augment` is not an `AffineAugmentation`.

    Example:

    >>> import numpy as np
    >>> from tfmaml.data import sources
    >>> images = np.random.rand(40, 8, 8, 1).astype("float32")
    >>> split = sources.from_arrays(images, np.arange(40) % 5)
    >>> x, y = next(iter(labelled_batches(split, 16, rotations=True)))
    >>> tuple(x.shape), int(max(y)) < 20
    ((16, 8, 8, 1), True)
    """
    source = _as_class_indexed(source)
    check_int("batch_size", batch_size, minimum=1)
    check_int("start", start, minimum=0)
    check_optional_int("num_batches", num_batches, minimum=1)
    check_orientable(source, rotations, reflections)
    group_fraction = _check_group_fraction(group_by, group_fraction)
    images = tf.constant(source.images)
    check_augment(augment, images, source.name)
    # Image `order[i]` of the split is of class `labels[i]`.
    labels = np.repeat(
        np.arange(source.num_classes, dtype=np.int32), source.class_sizes
    )
    spans = zip(source.class_starts, source.class_sizes, strict=True)
    order = np.concatenate([np.arange(s, s + n) for s, n in spans])
    orientations = _orientations(rotations, reflections)
    count = len(order)
    if group_by is not None:
        groups = _GroupPositions(source, group_by, labels)
    labels, order = tf.constant(labels), tf.constant(order, tf.int32)

    def make_batch(index):
        draw = batch_seeds(seed, index, 2)
        picked = tf.random.stateless_uniform(
            [batch_size], draw[0], maxval=count, dtype=tf.int32
        )
        if group_by is not None:
            draws = batch_seeds(seed + GROUP_SEED_OFFSET, index, 3)
            grouped = tf.random.stateless_uniform([], draws[0])
            picked = tf.where(
                grouped < group_fraction,
                groups.draw(batch_size, draws[1:]),
                picked,
            )
        turns = tf.random.stateless_uniform(
            [batch_size], draw[1], maxval=orientations, dtype=tf.int32
        )
        x = tf.gather(images, tf.gather(order, picked))
        y = tf.gather(labels, picked) + turns * source.num_classes
        if orientations > 1:
            # `_orient` turns `[tasks, classes, examples, ...]`.
            x = _orient(x[None, :, None], turns[None], rotations, reflections)
            x = x[0, :, 0]
        if augment is not None:
            x = augment(
                x, batch_seeds(seed + AUGMENTATION_SEED_OFFSET, index, 1)[0]
            )
        return x, y

    return indexed_stream(make_batch, num_batches, start)


def _check_group_fraction(group_by, group_fraction) -> float:
    if group_by is None:
        if group_fraction != 1.0:
            raise ValueError(
                "`group_fraction` is the fraction of batches drawn from one "
                "group, but `group_by` is None (no groups). Received: "
                f"group_fraction={group_fraction!r}"
            )
        return 1.0
    if (
        isinstance(group_fraction, bool)
        or not isinstance(group_fraction, int | float)
        or not 0.0 < group_fraction <= 1.0
    ):
        raise ValueError(
            "`group_fraction` must be a number in (0, 1]. Received: "
            f"group_fraction={group_fraction!r}"
        )
    return float(group_fraction)


class _GroupPositions:
    """Every group's images as positions in `labelled_batches`' image
    order, for drawing a batch from one group."""

    def __init__(self, source, group_by, labels):
        # `labels[i]`: the class at position i. Orientations do not change
        # a class's group, so classes are counted once.
        spans = [
            np.flatnonzero(np.isin(labels, classes))
            for classes in grouped_classes(source, group_by, 1).values()
        ]
        sizes = np.array([len(span) for span in spans])
        self.positions = tf.constant(np.concatenate(spans), tf.int32)
        self.starts = tf.constant(np.cumsum(sizes) - sizes, tf.int32)
        self.sizes = tf.constant(sizes, tf.int32)

    def draw(self, batch_size, seeds):
        """`batch_size` positions from one group: the group uniform among
        them (`seeds[0]`), each image uniform within it (`seeds[1]`)."""
        group = tf.random.stateless_uniform(
            [], seeds[0], maxval=tf.size(self.sizes), dtype=tf.int32
        )
        within = tf.random.stateless_uniform(
            [batch_size], seeds[1], maxval=self.sizes[group], dtype=tf.int32
        )
        return tf.gather(self.positions, self.starts[group] + within)
