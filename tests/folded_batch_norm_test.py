"""`tfmaml.folded_batch_norm`: which convolutions get their batch norm
folded in, read from the Keras graph; the folded pass computes the same
outputs and moving statistics as the layers do, the same second-order
meta-loss and meta-gradients (checked against finite differences too), and
nothing changes outside the block or in another thread."""

import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmaml
from tfmaml import folded_batch_norm
from tfmaml.model import Episode

TASKS, SHOTS, QUERIES, WAYS = 2, 6, 5, 3


def _names(network, training=True):
    folds = folded_batch_norm.folded_convolutions(network, training)
    return [(f.convolution.name, f.norm.name) for f in folds]


def _conv_bn(conv=None, norm=None, shape=(7, 7, 1), between=()):
    inputs = keras.Input(shape)
    x = (conv or keras.layers.Conv2D(9, 3, padding="same", name="conv"))(inputs)
    for layer in between:
        x = layer(x)
    x = (norm or tfmaml.BatchNormalization(name="norm"))(x)
    x = keras.layers.Activation("tanh")(x)
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D(2)(x))
    return keras.Model(inputs, keras.layers.Dense(WAYS, name="head")(x))


def _randomise(network, seed=0):
    """Moves every weight off its initial value (biases, gammas and betas
    start at 0 or 1, where mistakes hide)."""
    rng = np.random.default_rng(seed)
    for variable in network.weights:
        if "moving_variance" in variable.path:
            variable.assign(rng.uniform(0.5, 2.0, variable.shape))
        else:
            variable.assign(
                np.asarray(variable) + rng.normal(size=variable.shape) * 0.5
            )


def test_conv4_folds_its_first_layer_only():
    # 3 x 3 x 1 = 9 patch entries against 64 filters; the other layers
    # have 3 x 3 x 64 = 576.
    net = tfmaml.networks.conv4((28, 28, 1), 5)
    assert _names(net) == [("conv_0", "norm_0")]
    rgb = tfmaml.networks.conv4((84, 84, 3), 5, filters=32)
    assert _names(rgb) == [("conv_0", "norm_0")]  # 27 entries, 32 filters


CONVOLUTIONS = {
    "same": (lambda: keras.layers.Conv2D(9, 3, padding="same"), (7, 7, 1)),
    "pooled": (
        lambda: keras.Sequential(
            [
                keras.layers.Conv2D(9, 3, padding="same"),
                keras.layers.MaxPooling2D(2),
            ]
        ),
        (7, 7, 1),
    ),
    "pooled_same_1d": (
        lambda: keras.Sequential(
            [
                keras.layers.Conv1D(5, 3),
                keras.layers.MaxPooling1D(3, strides=2, padding="same"),
            ]
        ),
        (9, 1),
    ),
    "strided": (lambda: keras.layers.Conv2D(6, (3, 2), strides=2), (7, 7, 1)),
    "dilated": (
        lambda: keras.layers.Conv2D(8, 2, dilation_rate=2, padding="same"),
        (7, 7, 2),
    ),
    "no_bias": (lambda: keras.layers.Conv2D(9, 3, use_bias=False), (7, 7, 1)),
    "same_1d": (lambda: keras.layers.Conv1D(5, 3, padding="same"), (9, 1)),
    "strided_1d": (lambda: keras.layers.Conv1D(4, 2, strides=2), (9, 2)),
    "3d": (lambda: keras.layers.Conv3D(8, 2, padding="same"), (4, 4, 4, 1)),
}


@pytest.mark.parametrize("case", list(CONVOLUTIONS))
@pytest.mark.parametrize("training", [True, False])
def test_folded_outputs_and_moving_statistics_are_the_layers(
    float64, case, training
):
    make, shape = CONVOLUTIONS[case]
    conv, pool = make(), None
    if isinstance(conv, keras.Sequential):  # A convolution and its pool.
        conv, pool = conv.layers
    norm = tfmaml.BatchNormalization(num_steps=1, name="norm")
    inputs = keras.Input(shape)
    outputs = norm(conv(inputs))
    net = keras.Model(inputs, outputs if pool is None else pool(outputs))
    _randomise(net)
    (fold,) = folded_batch_norm.folded_convolutions(net, training)
    assert (fold.convolution, fold.norm) == (conv, norm)
    x = tf.constant(np.random.default_rng(1).normal(size=(3, *shape)) + 0.7)
    state = [tf.convert_to_tensor(v) for v in net.non_trainable_variables]
    mapping = list(zip(net.non_trainable_variables, state, strict=True))

    def run(fold):
        with keras.StatelessScope(state_mapping=mapping) as scope:
            if fold:
                with folded_batch_norm.folding(net, training):
                    outputs = net(x, training=training)
            else:
                outputs = net(x, training=training)
            moved = [
                scope.get_current_value(v) for v in net.non_trainable_variables
            ]
        return outputs.numpy(), [np.asarray(m) for m in moved]

    calls = []
    original = folded_batch_norm.folded_call

    def counted(*args):
        calls.append(args)
        return original(*args)

    folded_batch_norm.folded_call = counted
    try:
        outputs, moved = run(fold=True)
    finally:
        folded_batch_norm.folded_call = original
    assert len(calls) == 1  # Folded, not run as the layers.
    reference, reference_moved = run(fold=False)
    np.testing.assert_allclose(outputs, reference, rtol=0, atol=1e-12)
    for ours, theirs, before in zip(moved, reference_moved, state, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)
        # Moved in training only, as the layer's own call moves them.
        assert np.array_equal(ours, before) != training
    layers = [conv, norm] if pool is None else [conv, norm, pool]
    assert not any("call" in vars(layer) for layer in layers)


def test_float32_outputs_agree_to_rounding():
    net = _conv_bn()
    _randomise(net)
    x = tf.constant(
        np.random.default_rng(1).normal(size=(8, 7, 7, 1)) + 0.7, "float32"
    )
    reference = net(x, training=True).numpy()
    with folded_batch_norm.folding(net, True):
        outputs = net(x, training=True).numpy()
    np.testing.assert_allclose(outputs, reference, rtol=0, atol=2e-5)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_float32_statistics_survive_inputs_far_from_zero(padding):
    # Raw pixel values: the patches' second moment is 1e6 times their
    # variance, which float32 could not take it from. The fold takes each
    # input channel's mean off first; against float64 it stays as close as
    # the layers' own float32 pass.
    conv = keras.layers.Conv2D(18, 3, padding=padding, name="conv")
    net = _conv_bn(conv, tfmaml.BatchNormalization(name="norm"), (7, 7, 2))
    assert _names(net) == [("conv", "norm")]  # 18 patch entries.
    _randomise(net)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 7, 7, 2)) + [1000.0, -500.0]
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        twin = _conv_bn(
            keras.layers.Conv2D(18, 3, padding=padding, name="conv"),
            tfmaml.BatchNormalization(name="norm"),
            (7, 7, 2),
        )
    finally:
        keras.config.set_dtype_policy(previous)
    twin.set_weights(net.get_weights())
    exact = twin(tf.constant(x), training=True).numpy()
    layers = net(tf.constant(x, "float32"), training=True).numpy()
    with folded_batch_norm.folding(net, True):
        folded = net(tf.constant(x, "float32"), training=True).numpy()
    error = np.abs(folded - exact).max()
    assert error <= max(2 * np.abs(layers - exact).max(), 1e-5), error


@pytest.mark.parametrize(
    "case",
    [
        "more_entries_than_filters",
        "channels_first",
        "groups",
        "causal",
        "activation",
        "called_twice",
        "norm_output_read_twice",
        "moving_statistics_at_inference",
        "keras_batch_norm",
        "subclassed_layer",
        "between",
        "not_a_first_layer",
    ],
)
def test_what_the_graph_does_not_show_is_not_folded(case):
    conv = keras.layers.Conv2D(9, 3, padding="same", name="conv")
    norm = tfmaml.BatchNormalization(name="norm")
    training = True
    if case == "more_entries_than_filters":
        net = _conv_bn(keras.layers.Conv2D(8, 3), shape=(7, 7, 1))
    elif case == "channels_first":
        conv = keras.layers.Conv2D(9, 3, data_format="channels_first")
        net = _conv_bn(conv, tfmaml.BatchNormalization(axis=1), (1, 7, 7))
    elif case == "groups":
        net = _conv_bn(keras.layers.Conv2D(18, 3, groups=2), shape=(7, 7, 2))
    elif case == "causal":  # Keras' call pads before the convolution.
        inputs = keras.Input((9, 1))
        conv = keras.layers.Conv1D(5, 3, padding="causal")
        net = keras.Model(inputs, norm(conv(inputs)))
    elif case == "activation":
        net = _conv_bn(keras.layers.Conv2D(9, 3, activation="relu"))
    elif case == "called_twice":
        inputs = keras.Input((7, 7, 1))
        x = keras.layers.Add()([norm(conv(inputs)), conv(inputs)])
        net = keras.Model(inputs, x)
    elif case == "norm_output_read_twice":
        inputs = keras.Input((7, 7, 1))
        x = conv(inputs)
        net = keras.Model(inputs, [norm(x), x])
    elif case == "moving_statistics_at_inference":
        norm = tfmaml.BatchNormalization(
            num_steps=1, use_moving_statistics=True
        )
        net, training = _conv_bn(norm=norm), False
    elif case == "keras_batch_norm":
        net = _conv_bn(norm=keras.layers.BatchNormalization())
    elif case == "subclassed_layer":

        class MyConv(keras.layers.Conv2D):
            pass

        net = _conv_bn(MyConv(9, 3))
    elif case == "between":
        net = _conv_bn(between=[keras.layers.Activation("linear")])
    else:  # Its patches would need a gradient: not the case measured.
        inputs = keras.Input((7, 7, 1))
        x = keras.layers.Activation("tanh")(inputs)
        net = keras.Model(inputs, norm(conv(x)))
    assert _names(net, training) == []


def test_the_environment_variable_turns_it_off(monkeypatch):
    net = _conv_bn()
    monkeypatch.setenv(folded_batch_norm.ENVIRONMENT_VARIABLE, "0")
    with folded_batch_norm.folding(net, True):
        assert "call" not in vars(net.get_layer("conv"))
    monkeypatch.setenv(folded_batch_norm.ENVIRONMENT_VARIABLE, "yes")
    with pytest.raises(ValueError, match="TFMAML_FOLDED_BATCH_NORM.*'yes'"):
        with folded_batch_norm.folding(net, True):
            pass


def test_another_thread_runs_the_layers_as_they_are():
    net = _conv_bn()
    conv = net.get_layer("conv")
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 7, 7, 1)))
    x = tf.cast(x, "float32")
    plain = conv(x).numpy()
    seen = {}
    with folded_batch_norm.folding(net, True):
        assert "call" in vars(conv)
        worker = threading.Thread(target=lambda: seen.update(y=conv(x)))
        worker.start()
        worker.join()
    np.testing.assert_array_equal(seen["y"].numpy(), plain)
    assert "call" not in vars(conv)


# The maths: float64 second-order meta-gradients.


def _episode(seed=0):
    rng = np.random.default_rng(seed)
    return Episode(
        support_x=tf.constant(rng.normal(size=(TASKS, SHOTS, 7, 7, 1)) + 0.5),
        support_y=tf.constant(rng.integers(0, WAYS, (TASKS, SHOTS))),
        query_x=tf.constant(rng.normal(size=(TASKS, QUERIES, 7, 7, 1)) + 0.5),
        query_y=tf.constant(rng.integers(0, WAYS, (TASKS, QUERIES))),
        sample_weight=None,
    )


def _per_step_net(pooled=False):
    # MAML++'s per-step batch norm: a parameter row per inner step.
    norm = tfmaml.BatchNormalization(num_steps=2, name="norm")
    if not pooled:
        return _conv_bn(norm=norm)
    # As Conv4 does: batch norm, then max-pooling, then the activation.
    inputs = keras.Input((7, 7, 1))
    x = norm(keras.layers.Conv2D(9, 3, padding="same", name="conv")(inputs))
    x = keras.layers.Activation("tanh")(keras.layers.MaxPooling2D(2)(x))
    x = keras.layers.Dense(WAYS, name="head")(keras.layers.Flatten()(x))
    return keras.Model(inputs, x)


@pytest.mark.parametrize("pooled", [False, True])
def test_meta_gradients_are_the_unfolded_ones(
    float64, monkeypatch, pooled, second_order_maml
):
    net = _per_step_net(pooled)
    _randomise(net)
    meta, episode = second_order_maml(net), _episode()
    assert _names(net) == [("conv", "norm")]
    loss, gradients = meta(episode)
    monkeypatch.setenv(folded_batch_norm.ENVIRONMENT_VARIABLE, "0")
    reference_loss, reference = meta(episode)
    assert loss == pytest.approx(reference_loss, rel=1e-12)
    scale = max(np.abs(g).max() for g in reference)
    for variable, ours, theirs in zip(
        net.trainable_variables, gradients, reference, strict=True
    ):
        if variable.path == "conv/bias":  # Cancelled: exactly zero.
            assert not ours.any()
        else:
            assert np.abs(theirs).max() > 1e-6 * scale
            np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=0)


@pytest.mark.parametrize("pooled", [False, True])
def test_meta_gradient_matches_finite_differences(
    float64, pooled, second_order_maml
):
    net = _per_step_net(pooled)
    _randomise(net)
    meta, episode = second_order_maml(net), _episode()
    _, gradients = meta(episode)
    rng = np.random.default_rng(2)
    for path in ("conv/kernel", "norm/gamma", "norm/beta"):
        index, variable = next(
            (i, v)
            for i, v in enumerate(net.trainable_variables)
            if v.path == path
        )
        start = variable.numpy()
        for _ in range(2):
            entry = tuple(rng.integers(0, n) for n in start.shape)
            losses = []
            for step in (1e-5, -1e-5):
                moved = start.copy()
                moved[entry] += step
                variable.assign(moved)
                losses.append(meta(episode)[0])
            variable.assign(start)
            numeric = (losses[0] - losses[1]) / 2e-5
            assert gradients[index][entry] == pytest.approx(
                numeric, rel=1e-5, abs=1e-9
            )
