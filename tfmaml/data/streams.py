"""Endless or bounded streams of meta-batches, seeded by their index.

Every pipeline draws batch `i` from stateless random ops seeded by
`(seed, i)`: the stream is reproducible, and batch `i` does not depend on
what was read before it, which makes resuming a run at batch `i` exact.
"""

from collections.abc import Callable

import tensorflow as tf

# Seeds of the three streams of tasks, offset from `config.seed` so that
# training, validation and test tasks never coincide.
SPLIT_SEED_OFFSETS = {"train": 0, "validation": 1_000_003, "test": 2_000_029}


def indexed_stream(
    make_batch: Callable[[tf.Tensor], object],
    num_batches: int | None,
    start: int = 0,
) -> tf.data.Dataset:
    """Maps batch indices `start, start + 1, ...` (up to `num_batches`, or
    forever) through `make_batch`, in parallel and in order, prefetched.

    Args:
        make_batch: Maps a batch index (int64 scalar) to a batch.
        num_batches: The index to stop before, or `None` for forever.
        start: The first index. Defaults to `0`.
    """
    indices = (
        tf.data.Dataset.counter(start)
        if num_batches is None
        else tf.data.Dataset.range(start, num_batches)
    )
    return indices.map(
        make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    ).prefetch(tf.data.AUTOTUNE)


def batch_seeds(seed: int, index: tf.Tensor, count: int) -> tf.Tensor:
    """`count` independent stateless seeds for batch `index`.

    Args:
        seed: The stream's seed.
        index: The batch index.
        count: How many seeds.
    """
    return tf.random.experimental.stateless_split(
        tf.stack([tf.constant(seed, tf.int64), index]), num=count
    )
