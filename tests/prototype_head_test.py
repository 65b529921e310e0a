"""ProtoNet's fitted head (`head_steps`): gradient descent from the
prototypes on the support embeddings and their views, checked against a
NumPy computation on every path."""

import numpy as np
import pytest
import tensorflow as tf
from prototypes_test import SCE
from prototypes_test import _hand_logits
from prototypes_test import _image_embedding
from prototypes_test import _image_task
from prototypes_test import _logits_on_every_path

import tfmaml
from tfmaml import prototype_head
from tfmaml import views

DISTANCES = prototype_head.DISTANCES


def prototypes_logits(queries, protos, distance):
    return tfmaml.prototypes.prototype_logits(queries, protos, distance)


def _copies(net, images, count, augment):
    """`[1 + count, N, dim]`: the embeddings of `images` and of their
    `count` copies, copy i moving every image by the i-th fixed draw."""
    copies = [
        augment(
            images, tf.constant([views.VIEW_SEED, i], tf.int64), one_draw=True
        )
        for i in range(count)
    ]
    return np.stack([net(x).numpy() for x in [images, *copies]])


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _hand_head(stack, labels, queries, steps, rate, distance):
    """By hand, in float64: the head from the prototypes of `stack`'s mean,
    `steps` steps of gradient descent on the mean cross-entropy of every
    copy (the softmax's gradient `p - onehot`), then the queries' logits."""
    stack, queries = stack.astype("f8"), queries.astype("f8")
    ways = labels.max() + 1
    mean = stack.mean(0)
    protos = np.stack([mean[labels == k].mean(0) for k in range(ways)])
    x = stack.reshape(-1, stack.shape[-1])
    onehot = np.eye(ways)[np.tile(labels, len(stack))]
    if distance == "cosine":
        features, kernel, bias = _unit, _unit(protos).T, np.zeros(ways)
    else:
        features, kernel, bias = (
            (lambda f: f),
            2 * protos.T,
            -(protos**2).sum(-1),
        )
    for _ in range(steps):
        logits = features(x) @ kernel + bias
        p = np.exp(logits - logits.max(-1, keepdims=True))
        g = (p / p.sum(-1, keepdims=True) - onehot) / len(x)
        kernel = kernel - rate * features(x).T @ g
        bias = bias - rate * g.sum(0)
    out = features(queries) @ kernel + bias
    if distance == "cosine":
        return out
    return out - (queries**2).sum(-1, keepdims=True)


@pytest.mark.parametrize("distance", DISTANCES)
def test_the_initial_head_gives_the_prototype_logits(distance):
    rng = np.random.default_rng(0)
    protos = rng.normal(size=(4, 5)).astype("f4")
    queries = rng.normal(size=(7, 5)).astype("f4")
    head = prototype_head.initial_head(protos, distance)
    np.testing.assert_allclose(
        prototype_head.head_logits(queries, *head, distance),
        prototypes_logits(queries, protos, distance),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("distance", DISTANCES)
def test_the_fitted_head_matches_gradient_descent_by_hand_on_every_path(
    distance, tmp_path, run_without_tfmaml
):
    augment = tfmaml.data.AffineAugmentation(20.0, 0.1, 0.1, 0.1)
    steps, rate = 5, 2.0
    model = tfmaml.ProtoNet(
        _image_embedding(),
        distance=distance,
        support_views=2,
        query_views=1,
        view_augmentation=augment,
        head_steps=steps,
        head_learning_rate=rate,
    )
    model.compile("adam", loss=SCE)
    support, labels, queries = _image_task(7)
    net = model.base_model
    stack = _copies(net, support, 2, augment)
    viewed_queries = _copies(net, queries, 1, augment).mean(0)
    expected = _hand_head(stack, labels, viewed_queries, steps, rate, distance)
    # The head moved: its logits are not the prototypes'.
    prototypes_only, _ = _hand_logits(
        stack.mean(0), labels, viewed_queries, distance
    )
    assert np.abs(expected - prototypes_only).max() > 0.05
    paths, loaded = _logits_on_every_path(
        model, support, labels, queries, tmp_path, run_without_tfmaml
    )
    assert (loaded.head_steps, loaded.head_learning_rate) == (steps, rate)
    for path, logits in paths.items():
        np.testing.assert_allclose(
            logits, expected, rtol=1e-4, atol=1e-4, err_msg=path
        )


def test_the_head_fits_the_support_set():
    """Learning happens: the fitted head classifies support copies that
    the prototypes get wrong, and its support loss falls with more steps."""
    rng = np.random.default_rng(3)
    ways, copies = 4, 6
    # Each class's copies are spread along one shared direction, so the
    # nearest class mean misplaces some of them.
    centres = rng.normal(size=(ways, 3))
    spread = rng.normal(size=(copies, 1, 1)) * np.array([3.0, 0.0, 0.0])
    stack = (centres[None] + spread).astype("f4")
    labels = np.arange(ways, dtype="int32")
    protos = stack.mean(0)
    losses, errors = [], []
    for steps in (1, 10, 100):
        head = prototype_head.fit_head(
            protos,
            stack,
            labels,
            steps=steps,
            learning_rate=0.5,
            distance="squared_euclidean",
        )
        logits = prototype_head.head_logits(
            stack.reshape(-1, 3), *head, "squared_euclidean"
        )
        targets = np.tile(labels, copies)
        losses.append(float(SCE(targets, logits)))
        errors.append(int((np.argmax(logits, -1) != targets).sum()))
    before = prototypes_logits(
        stack.reshape(-1, 3), protos, "squared_euclidean"
    )
    assert (np.argmax(before, -1) != np.tile(labels, copies)).sum() > errors[-1]
    assert losses[0] > losses[1] > losses[2]


def test_bad_head_options_are_named():
    with pytest.raises(ValueError, match=r"head_steps=-1"):
        tfmaml.ProtoNet(_image_embedding(), head_steps=-1)
    with pytest.raises(ValueError, match=r"head_steps=1.5"):
        tfmaml.ProtoNet(_image_embedding(), head_steps=1.5)
    with pytest.raises(ValueError, match=r"head_learning_rate=0"):
        tfmaml.ProtoNet(_image_embedding(), head_steps=3, head_learning_rate=0)
    with pytest.raises(ValueError, match=r"head_learning_rate=nan"):
        tfmaml.ProtoNet(_image_embedding(), head_learning_rate=float("nan"))
    with pytest.raises(ValueError, match=r"distance='l1'"):
        prototype_head.HeadLogits(np.zeros((2, 3)), np.zeros(3), "l1")
