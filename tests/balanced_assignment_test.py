"""ProtoNet's set-level inference (`assignment_steps`): Sinkhorn's balanced
assignment of a task's queries, its marginals and invariances, its limit
(the optimal assignment, by brute force), a case it gets right that each
query alone gets wrong, and every path against a NumPy computation."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from prototypes_test import SCE
from prototypes_test import _hand_logits
from prototypes_test import _image_embedding
from prototypes_test import _image_task
from prototypes_test import _logits_on_every_path

import tfmaml
from tfmaml.balanced_assignment import balanced_log_assignment


def _hand_assignment(logits, steps, sharpness=16.0):
    """NumPy: scale by sharpness / median gap, rows to distributions, then
    `steps` rounds of columns to `Q / W` each and rows to 1."""
    logits = np.asarray(logits, "f8")
    gaps = logits.max(1, keepdims=True) - logits
    plan = logits * sharpness / np.median(gaps)

    def normalise(a, axis):
        top = a.max(axis, keepdims=True)
        return a - top - np.log(np.exp(a - top).sum(axis, keepdims=True))

    plan = normalise(plan, 1)
    for _ in range(steps):
        plan = normalise(plan, 0) + np.log(len(logits) / logits.shape[1])
        plan = normalise(plan, 1)
    return plan


def test_the_plan_gives_each_query_a_distribution_and_each_class_its_share():
    logits = np.random.default_rng(0).normal(size=(12, 4)) * 3
    plan = np.exp(balanced_log_assignment(logits, steps=1000).numpy())
    np.testing.assert_allclose(plan.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(plan.sum(0), 12 / 4, atol=1e-4)
    # Without iterations: the (scaled) softmax of each row alone.
    alone = np.exp(balanced_log_assignment(logits, steps=0).numpy())
    np.testing.assert_allclose(alone.sum(1), 1.0, atol=1e-6)
    assert np.abs(alone.sum(0) - 3).max() > 0.1
    np.testing.assert_array_equal(alone.argmax(1), logits.argmax(1))


def test_a_row_shift_or_a_common_scale_changes_nothing():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(10, 5))
    moved = 2.5 * logits + rng.normal(size=(10, 1)) * 10
    np.testing.assert_allclose(
        balanced_log_assignment(moved, steps=20).numpy(),
        balanced_log_assignment(logits, steps=20).numpy(),
        atol=1e-9,
    )


def test_it_matches_a_numpy_computation_in_float32_and_float64():
    logits = np.random.default_rng(2).normal(size=(9, 3))
    expected = _hand_assignment(logits, steps=7, sharpness=5.0)
    for dtype, tolerance in (("f8", 1e-10), ("f4", 1e-4)):
        result = balanced_log_assignment(logits.astype(dtype), 7, 5.0)
        assert result.numpy().dtype == dtype
        np.testing.assert_allclose(result.numpy(), expected, atol=tolerance)


def test_sharp_and_long_it_finds_the_optimal_assignment():
    """One query a class: the argmax of a sharp plan is the permutation
    with the largest summed logits (brute force over all 120), wherever
    the best permutation beats the next by a margin."""
    rng = np.random.default_rng(3)
    ways, checked = 5, 0
    for _ in range(60):
        logits = rng.normal(size=(ways, ways))
        totals = sorted(
            (logits[range(ways), p].sum(), p)
            for p in itertools.permutations(range(ways))
        )
        if totals[-1][0] - totals[-2][0] < 0.3:
            continue
        plan = balanced_log_assignment(logits, steps=300, sharpness=200.0)
        np.testing.assert_array_equal(plan.numpy().argmax(1), totals[-1][1])
        checked += 1
    assert checked >= 30


def _line_model(**options):
    """A ProtoNet whose embedding is the identity on the plane."""
    embedding = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(
                2, use_bias=False, kernel_initializer="identity"
            ),
        ]
    )
    model = tfmaml.ProtoNet(embedding, **options)
    model.compile("sgd", loss=SCE)
    return model


def test_two_queries_nearest_one_class_are_split_between_the_two():
    """Class 0's drawing at 0 and class 1's at 4 on a line; queries at 1
    (class 0) and 1.8 (class 1, but nearer 0's). Alone, both are class
    0; together, one class each, the cheaper way round is right."""
    support = np.array([[0.0, 0.0], [4.0, 0.0]], "f4")
    labels = np.array([0, 1], "int32")
    queries = np.array([[1.0, 0.0], [1.8, 0.0]], "f4")
    alone = _line_model().adapt_and_predict(support, labels, queries)
    together = _line_model(assignment_steps=20).adapt_and_predict(
        support, labels, queries
    )
    np.testing.assert_array_equal(np.argmax(alone, -1), [0, 0])
    np.testing.assert_array_equal(np.argmax(together, -1), [0, 1])


@pytest.mark.slow
@pytest.mark.parametrize("distance", ["squared_euclidean", "cosine"])
def test_every_path_assigns_the_queries_as_numpy_does(
    distance, tmp_path, run_without_tfmaml
):
    steps, sharpness = 6, 9.0
    model = tfmaml.ProtoNet(
        _image_embedding(),
        distance=distance,
        assignment_steps=steps,
        assignment_sharpness=sharpness,
    )
    model.compile("adam", loss=SCE)
    support, labels, queries = _image_task(11)
    net = model.base_model
    logits, _ = _hand_logits(
        net(support).numpy(), labels, net(queries).numpy(), distance
    )
    expected = _hand_assignment(logits, steps, sharpness)
    # The assignment moved the logits beyond a row's shift.
    moved = expected - logits
    assert np.ptp(moved - moved.mean(1, keepdims=True), axis=1).max() > 0.05
    paths, loaded = _logits_on_every_path(
        model, support, labels, queries, tmp_path, run_without_tfmaml
    )
    assert (loaded.assignment_steps, loaded.assignment_sharpness) == (
        steps,
        sharpness,
    )
    for path, result in paths.items():
        np.testing.assert_allclose(
            result, expected, rtol=1e-4, atol=1e-4, err_msg=path
        )


def test_bad_assignment_options_are_named():
    with pytest.raises(ValueError, match=r"assignment_steps=-1"):
        tfmaml.ProtoNet(_image_embedding(), assignment_steps=-1)
    with pytest.raises(ValueError, match=r"assignment_steps=2.5"):
        tfmaml.ProtoNet(_image_embedding(), assignment_steps=2.5)
    for bad in (0, -1.0, float("inf")):
        with pytest.raises(ValueError, match=r"assignment_sharpness="):
            tfmaml.ProtoNet(
                _image_embedding(), assignment_steps=5, assignment_sharpness=bad
            )
    with pytest.raises(TypeError, match=r"assignment_sharpness='sharp'"):
        tfmaml.balanced_assignment.BalancedAssignment(3, sharpness="sharp")


def test_fewer_queries_than_classes_are_refused():
    """One query cannot be spread over three classes: its plan would be
    the uniform share whatever its logits, so it is an error."""
    model = tfmaml.ProtoNet(_image_embedding(), assignment_steps=5)
    model.compile("adam", loss=SCE)
    support, labels, queries = _image_task(12)
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least as"):
        model.adapt_and_predict(support, labels, queries[:2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least as"):
        model.adapt(support, labels)(queries[:1])
    assert model.adapt_and_predict(support, labels, queries[:3]).shape == (3, 3)
