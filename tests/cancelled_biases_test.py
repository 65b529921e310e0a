"""`tfmaml.cancelled_biases`: which biases batch norm cancels, read from the
Keras graph; the meta-loss does not depend on them, their meta-gradient is
exactly zero, and every other meta-gradient is the one with them
differentiated."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmaml
from tfmaml import cancelled_biases
from tfmaml.model import Episode

TASKS, SHOTS, QUERIES, WAYS = 2, 6, 5, 3


def _paths(network, training=True, part=None):
    indices = cancelled_biases.cancelled_indices(network, training, part)
    return [network.trainable_variables[i].path for i in indices]


def _conv_bn(*, conv=None, norm=None, between=()):
    inputs = keras.Input((6, 6, 1))
    conv = conv or keras.layers.Conv2D(2, 3, padding="same", name="conv")
    x = conv(inputs)
    for layer in between:
        x = layer(x)
    x = (norm or tfmaml.BatchNormalization(name="norm"))(x)
    x = keras.layers.Flatten()(keras.layers.Activation("tanh")(x))
    return keras.Model(inputs, keras.layers.Dense(WAYS, name="head")(x))


def test_conv4_has_every_convolution_bias_cancelled_and_not_the_head():
    net = tfmaml.networks.conv4((28, 28, 1), 5)
    assert sorted(_paths(net)) == [f"conv4/conv_{i}/bias" for i in range(4)]


def test_dense_then_batch_norm_and_a_nested_model_are_read():
    inner = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, name="inner_dense"),
            tfmaml.BatchNormalization(),
        ],
        name="inner",
    )
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2, name="head")(inner(inputs))
    net = keras.Model(inputs, outputs)
    assert _paths(net) == ["inner/inner_dense/bias"]


def test_a_converted_keras_network_has_its_biases_found():
    # A `keras.applications`-style block: Keras' batch norm, converted.
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Conv2D(4, 1, name="conv_b")(x)
    x = keras.layers.BatchNormalization(name="bn_b")(x)
    net = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    assert _paths(net) == []  # Keras' layer: not tfmaml's.
    converted = tfmaml.networks.exact_batch_norm(net)
    assert sorted(_paths(converted)) == ["conv_a/bias", "conv_b/bias"]


class _OwnConv(keras.layers.Conv2D):
    """A subclass may add its bias anywhere: not trusted."""


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(2, 3)
        self.norm = tfmaml.BatchNormalization()

    def call(self, x):
        return self.norm(self.conv(x))


def _conv_output_returned():
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    return keras.Model(inputs, [tfmaml.BatchNormalization()(x), x])


def _conv_output_used_twice():
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(1, 3, padding="same", name="conv")(inputs)
    y = keras.layers.Add()([tfmaml.BatchNormalization()(x), x])
    return keras.Model(inputs, y)


def _conv(**kwargs):
    return keras.layers.Conv2D(2, 3, padding="same", name="conv", **kwargs)


LEFT_DIFFERENTIATED = {
    "no bias": lambda: _conv_bn(conv=_conv(use_bias=False)),
    "activation between": lambda: _conv_bn(
        between=[keras.layers.Activation("relu")]
    ),
    "activation in the layer": lambda: _conv_bn(conv=_conv(activation="relu")),
    "bias regulariser": lambda: _conv_bn(conv=_conv(bias_regularizer="l2")),
    "activity regulariser": lambda: _conv_bn(
        conv=_conv(activity_regularizer="l2")
    ),
    "normalised over another axis": lambda: _conv_bn(
        norm=tfmaml.BatchNormalization(axis=1)
    ),
    "Keras' batch norm": lambda: _conv_bn(
        norm=keras.layers.BatchNormalization()
    ),
    "a subclass of Conv2D": lambda: _conv_bn(
        conv=_OwnConv(2, 3, padding="same")
    ),
    "output also returned": _conv_output_returned,
    "output used twice": _conv_output_used_twice,
}


@pytest.mark.parametrize("case", sorted(LEFT_DIFFERENTIATED))
def test_what_the_graph_does_not_show_for_certain_is_differentiated(case):
    assert _paths(LEFT_DIFFERENTIATED[case]()) == []


def test_a_subclassed_models_call_is_not_read():
    net = _Subclassed()
    net(np.zeros((2, 6, 6, 1), "float32"))
    assert _paths(net) == []


def test_moving_statistics_cancel_the_bias_in_training_only():
    net = _conv_bn(norm=tfmaml.BatchNormalization(num_steps=1, **_MOVING))
    assert _paths(net, training=True) == ["conv/bias"]
    assert _paths(net, training=False) == []


_MOVING = {"use_moving_statistics": True}


def test_a_part_ending_at_the_convolution_keeps_its_bias():
    net = _conv_bn()
    body = keras.Model(net.inputs, net.get_layer("conv").output)
    assert _paths(net) == ["conv/bias"]
    assert _paths(net, part=body) == []


def test_the_environment_variable_turns_it_off(monkeypatch):
    net = _conv_bn()
    monkeypatch.setenv(cancelled_biases.ENVIRONMENT_VARIABLE, "0")
    assert _paths(net) == []
    monkeypatch.setenv(cancelled_biases.ENVIRONMENT_VARIABLE, "yes")
    with pytest.raises(ValueError, match="TFMAML_CANCELLED_BIASES.*'yes'"):
        _paths(net)


# The maths: float64 second-order meta-gradients.


def _episode(seed=0):
    rng = np.random.default_rng(seed)
    return Episode(
        support_x=tf.constant(rng.normal(size=(TASKS, SHOTS, 6, 6, 1))),
        support_y=tf.constant(rng.integers(0, WAYS, (TASKS, SHOTS))),
        query_x=tf.constant(rng.normal(size=(TASKS, QUERIES, 6, 6, 1))),
        query_y=tf.constant(rng.integers(0, WAYS, (TASKS, QUERIES))),
        sample_weight=None,
    )


def _two_cancelled_biases():
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(3, 3, padding="same", name="conv")(inputs)
    x = tfmaml.BatchNormalization()(x)
    x = keras.layers.MaxPooling2D(2)(keras.layers.Activation("relu")(x))
    x = keras.layers.Dense(4, name="dense")(keras.layers.Flatten()(x))
    x = keras.layers.Activation("tanh")(tfmaml.BatchNormalization()(x))
    return keras.Model(inputs, keras.layers.Dense(WAYS, name="head")(x))


def test_the_meta_loss_does_not_depend_on_a_cancelled_bias(
    float64, second_order_maml
):
    net = _two_cancelled_biases()
    assert sorted(_paths(net)) == ["conv/bias", "dense/bias"]
    meta, episode = second_order_maml(net), _episode()
    loss, _ = meta(episode)
    for path in ("conv/bias", "dense/bias"):
        bias = next(v for v in net.trainable_variables if v.path == path)
        bias.assign(np.random.default_rng(1).normal(size=bias.shape) * 3.0)
    moved, _ = meta(episode)
    np.testing.assert_allclose(moved, loss, rtol=1e-12)
    # Not so for a bias that batch norm does not follow: the head's.
    head = net.get_layer("head").bias
    head.assign(head.numpy() + np.arange(WAYS))
    assert abs(meta(episode)[0] - loss) > 1e-3


def test_cancelled_gradients_are_zero_and_the_others_unchanged(
    float64, monkeypatch, second_order_maml
):
    net = _two_cancelled_biases()
    meta, episode = second_order_maml(net), _episode()
    loss, gradients = meta(episode)
    monkeypatch.setenv(cancelled_biases.ENVIRONMENT_VARIABLE, "0")
    reference_loss, reference = meta(episode)
    assert loss == pytest.approx(reference_loss, rel=1e-13)
    scale = max(np.abs(g).max() for g in reference)
    for variable, ours, theirs in zip(
        net.trainable_variables, gradients, reference, strict=True
    ):
        if variable.path in ("conv/bias", "dense/bias"):
            assert not ours.any()
            # Differentiated, the gradient is rounding noise.
            assert np.abs(theirs).max() < 1e-12 * scale
        else:
            np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=0)
