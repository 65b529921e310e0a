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
from tfmaml.data.streams import batch_seeds
from tfmaml.data.streams import indexed_stream


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
    labels, order = tf.constant(labels), tf.constant(order, tf.int32)

    def make_batch(index):
        draw = batch_seeds(seed, index, 2)
        picked = tf.random.stateless_uniform(
            [batch_size], draw[0], maxval=count, dtype=tf.int32
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
