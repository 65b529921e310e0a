"""The model-agnostic contract, network kind by network kind.

For each kind of network a Keras user already has: `fit` moves its
weights; `adapt`'s copy, `adapt_and_predict`, the `.keras` round trip and
the exported `adapt_and_predict` in a process without tfmaml give the same
adapted outputs; adapting again does not retrace; nothing of it writes the
model's variables. A Keras application backbone goes through
`exact_batch_norm` and its second-order meta-gradient is checked by finite
differences."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmaml

WAYS, SHOTS, TASKS = 3, 2, 2
SUPPORT = WAYS * SHOTS


@keras.saving.register_keras_serializable(package="contract_test")
class WithTraining(keras.Model):
    """Subclassed, `call(x, training)`: dropout only in training."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.dropout = keras.layers.Dropout(0.5)
        self.logits = keras.layers.Dense(WAYS)

    def call(self, x, training=None):
        return self.logits(self.dropout(self.hidden(x), training=training))


@keras.saving.register_keras_serializable(package="contract_test")
class WithoutTraining(keras.Model):
    """Subclassed, `call(x)` alone: Keras' call context reaches the
    dropout."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.dropout = keras.layers.Dropout(0.5)
        self.logits = keras.layers.Dense(WAYS)

    def call(self, x):
        return self.logits(self.dropout(self.hidden(x)))


def _floats(shape):
    return lambda rng, n: rng.normal(size=(n, *shape)).astype("float32")


def _tokens(rng, n):
    # Token ids in [1, 20), zero-padded tails (masked by the embedding).
    ids = rng.integers(1, 20, size=(n, 12)).astype("int32")
    lengths = rng.integers(4, 13, size=n)
    ids[np.arange(12)[None] >= lengths[:, None]] = 0
    return ids


def _attention():
    x = keras.Input((6, 8))
    attended = keras.layers.MultiHeadAttention(2, 4)(x, x)
    h = keras.layers.LayerNormalization()(x + attended)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(x, keras.layers.Dense(WAYS)(h))


def _subclassed(cls):
    network = cls()
    network(np.zeros((1, 5), "float32"))
    return network


def _state_network(dropout=0.3):
    # Non-trainable state of three kinds: a normalisation adapted to data,
    # Keras' batch norm moving statistics, and dropout's seed generator.
    norm = keras.layers.Normalization()
    norm.adapt(np.random.default_rng(1).normal(3.0, 2.0, (64, 5)))
    return keras.Sequential(
        [
            keras.Input((5,)),
            norm,
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(WAYS),
        ]
    )


# name -> (network builder, input maker, first order)
KINDS = {
    "mlp": (lambda: tfmaml.networks.mlp((5,), WAYS), _floats((5,)), False),
    "conv4": (
        lambda: tfmaml.networks.conv4((16, 16, 1), WAYS, filters=4),
        _floats((16, 16, 1)),
        False,
    ),
    "embedding_gru": (
        lambda: keras.Sequential(
            [
                keras.Input((12,), dtype="int32"),
                keras.layers.Embedding(20, 8, mask_zero=True),
                keras.layers.GRU(8),
                keras.layers.Dense(WAYS),
            ]
        ),
        _tokens,
        False,
    ),
    "attention": (_attention, _floats((6, 8)), False),
    "conv1d": (
        lambda: keras.Sequential(
            [
                keras.Input((16, 2)),
                keras.layers.Conv1D(4, 3, activation="relu"),
                keras.layers.GlobalAveragePooling1D(),
                keras.layers.Dense(WAYS),
            ]
        ),
        _floats((16, 2)),
        False,
    ),
    "separable_conv": (
        lambda: keras.Sequential(
            [
                keras.Input((8, 8, 2)),
                keras.layers.SeparableConv2D(4, 3, activation="relu"),
                keras.layers.DepthwiseConv2D(3),
                keras.layers.Flatten(),
                keras.layers.Dense(WAYS),
            ]
        ),
        _floats((8, 8, 2)),
        False,
    ),
    "subclassed_with_training": (
        lambda: _subclassed(WithTraining),
        _floats((5,)),
        False,
    ),
    "subclassed_without_training": (
        lambda: _subclassed(WithoutTraining),
        _floats((5,)),
        False,
    ),
    "non_trainable_state": (_state_network, _floats((5,)), True),
    "mobilenet_v3_small": (
        lambda: tfmaml.networks.exact_batch_norm(_mobilenet()),
        _floats((32, 32, 3)),
        False,
    ),
}


def _mobilenet():
    return keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3),
        alpha=0.75,
        minimalistic=True,
        weights=None,
        classes=WAYS,
        include_preprocessing=False,
        classifier_activation=None,
    )


def _episodes(make_inputs, rng):
    labels = np.tile(np.arange(WAYS, dtype="int32"), SHOTS)
    x = {
        "support_x": np.stack(
            [make_inputs(rng, SUPPORT) for _ in range(TASKS)]
        ),
        "support_y": np.stack([labels] * TASKS),
        "query_x": np.stack([make_inputs(rng, SUPPORT) for _ in range(TASKS)]),
    }
    return x, np.stack([labels] * TASKS)


def _compiled(network, first_order):
    model = tfmaml.MAML(
        network,
        inner_lr=0.05,
        inner_steps=1,
        eval_inner_steps=2,
        first_order=first_order,
    )
    model.compile(
        keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _values(model):
    return [v.numpy().copy() for v in model.variables]


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_network_kind_trains_adapts_round_trips_and_exports(
    kind, tmp_path, run_without_tfmaml
):
    build, make_inputs, first_order = KINDS[kind]
    model = _compiled(build(), first_order)
    rng = np.random.default_rng(0)
    x, y = _episodes(make_inputs, rng)

    before = [w.numpy().copy() for w in model.base_model.trainable_weights]
    model.fit(x, y, batch_size=TASKS, epochs=2, verbose=0)
    moved = [
        not np.array_equal(old, new.numpy())
        for old, new in zip(
            before, model.base_model.trainable_weights, strict=True
        )
    ]
    assert sum(moved) >= len(moved) // 2 + 1, kind

    # Adapting and predicting, in every way, leaves the variables alone.
    trained = _values(model)
    sx, sy, qx = x["support_x"][0], x["support_y"][0], x["query_x"][0]
    expected = model.adapt_and_predict(sx, sy, qx).numpy()
    copy_outputs = model.adapt(sx, sy)(qx, training=False)
    np.testing.assert_allclose(copy_outputs, expected, atol=1e-5, rtol=1e-5)
    # Another task of the same shapes reuses the traced function.
    model.adapt_and_predict(x["support_x"][1], sy, x["query_x"][1])
    function = model.cached_function(("adapt_and_predict", 2), None)
    assert function.experimental_get_tracing_count() == 1

    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(
        loaded.adapt_and_predict(sx, sy, qx), expected, atol=1e-5, rtol=1e-5
    )

    spec = tf.TensorSpec((None, *qx.shape[1:]), qx.dtype)
    model.export(tmp_path / "saved", input_signature=spec)
    for old, new in zip(trained, _values(model), strict=True):
        np.testing.assert_array_equal(old, new)

    np.savez(tmp_path / "task.npz", sx=sx, sy=sy, qx=qx)
    result = run_without_tfmaml(
        """
        import json
        import numpy as np
        import tensorflow as tf
        task = np.load("task.npz")
        served = tf.saved_model.load("saved")
        out = served.signatures["adapt_and_predict"](
            support_x=tf.constant(task["sx"]),
            support_y=tf.constant(task["sy"]),
            query_x=tf.constant(task["qx"]),
        )
        print(json.dumps(out["predictions"].numpy().tolist()))
        """
    )
    served = np.array(json.loads(result.stdout.splitlines()[-1]))
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=1e-5)


def test_exact_batch_norm_replaces_keras_batch_norm_and_keeps_weights():
    network = _state_network(dropout=0.0)
    network.layers[2].set_weights(
        [w + 0.5 for w in network.layers[2].get_weights()]
    )
    with pytest.raises(ValueError, match="exact_batch_norm"):
        tfmaml.MAML(network)
    copy = tfmaml.networks.exact_batch_norm(network)
    kinds = [type(layer).__name__ for layer in copy.layers]
    assert kinds.count("BatchNormalization") == 1
    norm = copy.layers[kinds.index("BatchNormalization")]
    assert isinstance(norm, tfmaml.BatchNormalization)
    source = network.layers[kinds.index("BatchNormalization")]
    np.testing.assert_array_equal(norm.gamma.numpy(), source.gamma.numpy())
    np.testing.assert_array_equal(norm.beta.numpy(), source.beta.numpy())
    # The other layers' weights, trainable or not, are copied.
    for new, old in zip(copy.layers, network.layers, strict=True):
        if new is not norm:
            for a, b in zip(new.get_weights(), old.get_weights(), strict=True):
                np.testing.assert_array_equal(a, b)
    # In training both normalise with the batch's statistics.
    x = np.random.default_rng(0).normal(size=(7, 5)).astype("float32")
    np.testing.assert_allclose(
        copy(x, training=True), network(x, training=True), atol=1e-4
    )
    tfmaml.MAML(copy)  # Second order now accepts it.


def test_exact_batch_norm_refuses_a_subclassed_model():
    with pytest.raises(ValueError, match="Functional or Sequential"):
        tfmaml.networks.exact_batch_norm(_subclassed(WithTraining))


@pytest.mark.slow
def test_mobilenet_meta_gradient_matches_finite_differences(float64):
    # Second-order MAML through a whole Keras application backbone (its
    # batch norms exact): the meta-gradient along a random direction
    # against a central difference of the meta-loss.
    # A small inner rate: the backbone's normalised 1x1 features make the
    # adapted loss steep, and a central difference needs a smooth stretch.
    model = tfmaml.MAML(
        tfmaml.networks.exact_batch_norm(_mobilenet()), inner_lr=0.005
    )
    model.compile(
        keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = _episodes(_floats((32, 32, 3)), np.random.default_rng(0))
    episode = tfmaml.batches.Episode(
        support_x=tf.constant(x["support_x"], tf.float64),
        support_y=tf.constant(x["support_y"]),
        query_x=tf.constant(x["query_x"], tf.float64),
        query_y=tf.constant(y),
        sample_weight=None,
    )
    variables = model.base_model.trainable_variables
    rng = np.random.default_rng(1)
    direction = [rng.normal(size=v.shape) for v in variables]
    norm = np.sqrt(sum(float(np.sum(d**2)) for d in direction))
    direction = [d / norm for d in direction]

    def meta_loss():
        results = model.solve_tasks(
            episode, steps=1, first_order=False, training=True
        )
        return tf.reduce_mean(results.loss)

    with tf.GradientTape() as tape:
        loss = meta_loss()
    gradients = tape.gradient(loss, variables)
    analytic = sum(
        float(np.sum(g.numpy() * d))
        for g, d in zip(gradients, direction, strict=True)
    )
    original = [v.numpy() for v in variables]
    epsilon, values = 1e-6, []
    for sign in (1.0, -1.0):
        for v, o, d in zip(variables, original, direction, strict=True):
            v.assign(o + sign * epsilon * d)
        values.append(float(meta_loss()))
    for v, o in zip(variables, original, strict=True):
        v.assign(o)
    numeric = (values[0] - values[1]) / (2 * epsilon)
    assert abs(analytic - numeric) <= 1e-6 * abs(numeric)
    # Guard: the second-order terms matter here.
    with tf.GradientTape() as tape:
        results = model.solve_tasks(
            episode, steps=1, first_order=True, training=True
        )
        first = tape.gradient(tf.reduce_mean(results.loss), variables)
    first_order = sum(
        float(np.sum(g.numpy() * d))
        for g, d in zip(first, direction, strict=True)
    )
    assert abs(first_order - numeric) > 0.1 * abs(numeric)
