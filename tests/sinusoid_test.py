"""`tfmaml.data.sinusoid`: layout, task family, reproducibility, errors."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfmaml import data


def _first(dataset):
    x, y = next(iter(dataset))
    return {k: v.numpy() for k, v in x.items()}, y.numpy()


def test_batches_have_the_maml_layout():
    x, y = _first(data.sinusoid(num_shots=5, num_queries=7, meta_batch_size=3))
    assert x["support_x"].shape == (3, 5, 1)
    assert x["support_y"].shape == (3, 5, 1)
    assert x["query_x"].shape == (3, 7, 1)
    assert y.shape == (3, 7, 1)
    assert y.dtype == np.float32


def test_support_and_query_come_from_one_sinusoid_per_task():
    tasks = data.sample_sinusoid_tasks(
        tf.constant([3, 4], tf.int64),
        num_shots=10,
        num_queries=10,
        meta_batch_size=500,
    )
    amplitude = tasks.amplitude.numpy()[:, None, None]
    phase = tasks.phase.numpy()[:, None, None]
    for x, y in (
        (tasks.support_x, tasks.support_y),
        (tasks.query_x, tasks.query_y),
    ):
        np.testing.assert_allclose(
            y, amplitude * np.sin(x.numpy() - phase), atol=1e-5
        )
    assert 0.1 <= amplitude.min() and amplitude.max() <= 5.0
    assert 0.0 <= phase.min() and phase.max() <= math.pi
    assert -5.0 <= tasks.support_x.numpy().min()
    assert tasks.query_x.numpy().max() <= 5.0
    # The ranges are covered, not a corner of them.
    assert amplitude.max() - amplitude.min() > 4.5
    assert phase.max() - phase.min() > 2.9


def test_the_stream_is_reproducible_and_seeds_differ():
    first = [_first(data.sinusoid(seed=7).skip(i)) for i in (0, 3)]
    again = [_first(data.sinusoid(seed=7).skip(i)) for i in (0, 3)]
    other = _first(data.sinusoid(seed=8))
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1["support_x"], x2["support_x"])
    assert not np.array_equal(first[0][1], first[1][1])
    assert not np.array_equal(first[0][1], other[1])


def test_num_batches_bounds_the_stream():
    assert len(list(data.sinusoid(meta_batch_size=2, num_batches=4))) == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_shots": 0}, "num_shots=0"),
        ({"num_queries": -1}, "num_queries=-1"),
        ({"meta_batch_size": 2.5}, "meta_batch_size=2.5"),
        ({"num_batches": 0}, "num_batches=0"),
        ({"amplitude_range": (5.0, 0.1)}, r"amplitude_range=\(5.0, 0.1\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.sinusoid(**kwargs)
