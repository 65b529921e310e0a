"""Sinusoid regression tasks, the toy problem of the MAML paper (section 5.1).

A task is `y = amplitude * sin(x - phase)` with the amplitude drawn from
U[0.1, 5], the phase from U[0, pi] and inputs from U[-5, 5]. Meta-batches are
drawn in the TensorFlow graph with stateless random ops seeded by
`(seed, batch index)` (see `tfmaml.data.streams`).
"""

import math
from typing import NamedTuple

import tensorflow as tf

from tfmaml.batches import QUERY_X
from tfmaml.batches import SUPPORT_X
from tfmaml.batches import SUPPORT_Y
from tfmaml.checks import check_int
from tfmaml.checks import check_optional_int
from tfmaml.data.streams import batch_seeds
from tfmaml.data.streams import indexed_stream


class SinusoidTasks(NamedTuple):
    """A meta-batch of sinusoid tasks with their true parameters.

    `amplitude` and `phase` are `[tasks]`; the inputs and labels are
    `[tasks, examples, 1]`.
    """

    amplitude: tf.Tensor
    phase: tf.Tensor
    support_x: tf.Tensor
    support_y: tf.Tensor
    query_x: tf.Tensor
    query_y: tf.Tensor


def sample_sinusoid_tasks(
    seed,
    *,
    num_shots: int,
    num_queries: int,
    meta_batch_size: int,
    amplitude_range: tuple[float, float] = (0.1, 5.0),
    phase_range: tuple[float, float] = (0.0, math.pi),
    input_range: tuple[float, float] = (-5.0, 5.0),
) -> SinusoidTasks:
    """Draws one meta-batch of sinusoid tasks, vectorised over tasks.

    Args:
        seed: A stateless seed: an int tensor of shape `[2]`.
        num_shots: Support points per task (K).
        num_queries: Query points per task.
        meta_batch_size: Tasks in the meta-batch.
        amplitude_range: Bounds of the uniform amplitude. Defaults to
            `(0.1, 5.0)`.
        phase_range: Bounds of the uniform phase. Defaults to `(0, pi)`.
        input_range: Bounds of the uniform inputs. Defaults to `(-5, 5)`.

    Returns:
        A `SinusoidTasks`.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    params = tf.random.stateless_uniform([2, meta_batch_size], seeds[0])
    amplitude = _scale(params[0], amplitude_range)
    phase = _scale(params[1], phase_range)
    x = _scale(
        tf.random.stateless_uniform(
            [meta_batch_size, num_shots + num_queries, 1], seeds[1]
        ),
        input_range,
    )
    y = amplitude[:, None, None] * tf.sin(x - phase[:, None, None])
    return SinusoidTasks(
        amplitude=amplitude,
        phase=phase,
        support_x=x[:, :num_shots],
        support_y=y[:, :num_shots],
        query_x=x[:, num_shots:],
        query_y=y[:, num_shots:],
    )


def sinusoid(
    num_shots: int = 10,
    *,
    num_queries: int | None = None,
    meta_batch_size: int = 25,
    seed: int = 0,
    num_batches: int | None = None,
    start: int = 0,
    amplitude_range: tuple[float, float] = (0.1, 5.0),
    phase_range: tuple[float, float] = (0.0, math.pi),
    input_range: tuple[float, float] = (-5.0, 5.0),
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of meta-batches of sinusoid regression tasks.

    Each element is `(x, y)` in the layout `tfmaml.MAML` trains on:
    `x = {"support_x": [B, K, 1], "support_y": [B, K, 1], "query_x":
    [B, Q, 1]}` and `y = query_y: [B, Q, 1]`, float32.

    Args:
        num_shots: Support points per task (K). Defaults to `10`.
        num_queries: Query points per task. Defaults to `num_shots`, as in
            the MAML paper.
        meta_batch_size: Tasks per element (B). Defaults to `25`.
        seed: Seeds the whole stream. Defaults to `0`.
        num_batches: Number of elements; `None` (the default) repeats
            forever.
        start: The index of the first element: a stream started at `i`
            gives exactly the elements `i, i + 1, ...` of one started at 0
            (how a resumed run continues where it stopped). Defaults to 0.
        amplitude_range: Defaults to `(0.1, 5.0)`.
        phase_range: Defaults to `(0, pi)`.
        input_range: Defaults to `(-5, 5)`.

    Returns:
        A `tf.data.Dataset` of `(x, y)` pairs.

    Raises:
        ValueError: If a count is not a positive int or a range is empty.

    Example:

    >>> data = sinusoid(num_shots=5, meta_batch_size=4, num_batches=2)
    >>> x, y = next(iter(data))
    >>> tuple(x["support_x"].shape), tuple(y.shape)
    ((4, 5, 1), (4, 5, 1))
    """
    num_queries = num_shots if num_queries is None else num_queries
    check_int("num_shots", num_shots, minimum=1)
    check_int("num_queries", num_queries, minimum=1)
    check_int("meta_batch_size", meta_batch_size, minimum=1)
    check_optional_int("num_batches", num_batches, minimum=1)
    check_int("start", start, minimum=0)
    for name, (low, high) in (
        ("amplitude_range", amplitude_range),
        ("phase_range", phase_range),
        ("input_range", input_range),
    ):
        if not low <= high:
            raise ValueError(
                f"`{name}` must be (low, high) with low <= high. "
                f"Received: {name}={(low, high)}"
            )

    def make_batch(index):
        tasks = sample_sinusoid_tasks(
            batch_seeds(seed, index, 1)[0],
            num_shots=num_shots,
            num_queries=num_queries,
            meta_batch_size=meta_batch_size,
            amplitude_range=amplitude_range,
            phase_range=phase_range,
            input_range=input_range,
        )
        x = {
            SUPPORT_X: tasks.support_x,
            SUPPORT_Y: tasks.support_y,
            QUERY_X: tasks.query_x,
        }
        return x, tasks.query_y

    return indexed_stream(make_batch, num_batches, start)


def _scale(unit, bounds):
    low, high = bounds
    return low + (high - low) * unit
