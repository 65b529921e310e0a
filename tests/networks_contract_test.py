"""The model-agnostic contract, network kind by network kind.

For each kind of network a Keras user already has: `fit` moves its
weights; `adapt`'s copy, `adapt_and_predict`, the `.keras` round trip and
the exported `adapt_and_predict` in a process without tfmaml give the same
adapted outputs (one signature argument per named input); adapting again
does not retrace; nothing of it writes the model's variables. A Keras
application backbone goes through `exact_batch_norm` and its second-order
meta-gradient is checked by finite differences."""

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


def _two_named_inputs():
    # Token ids and a float feature vector, as a dict of named inputs.
    ids = keras.Input((12,), dtype="int32", name="ids")
    extra = keras.Input((5,), name="extra")
    embedded = keras.layers.GlobalAveragePooling1D()(
        keras.layers.Embedding(20, 6)(ids)
    )
    h = keras.layers.Concatenate()([embedded, extra])
    h = keras.layers.Dense(8, activation="relu")(h)
    return keras.Model(
        {"ids": ids, "extra": extra}, keras.layers.Dense(WAYS)(h)
    )


def _lookup_network():
    # A lookup table (not a variable) maps raw ids to indices.
    return keras.Sequential(
        [
            keras.Input((12,), dtype="int32"),
            keras.layers.IntegerLookup(vocabulary=np.arange(1, 20, 2)),
            keras.layers.Embedding(11, 6),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(WAYS),
        ]
    )


def _named_inputs(rng, n):
    return {"ids": _tokens(rng, n), "extra": _floats((5,))(rng, n)}


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
    "two_named_inputs": (_two_named_inputs, _named_inputs, False),
    "lookup_table": (_lookup_network, _tokens, False),
    # First order here: the second-order meta-gradient through this
    # backbone is checked against finite differences below, and tracing
    # it again for fit, adapt and export took a minute of the suite.
    "mobilenet_v3_small": (
        lambda: tfmaml.networks.exact_batch_norm(_mobilenet()),
        _floats((32, 32, 3)),
        True,
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

    def tasks():
        inputs = [make_inputs(rng, SUPPORT) for _ in range(TASKS)]
        return keras.tree.map_structure(lambda *t: np.stack(t), *inputs)

    x = {
        "support_x": tasks(),
        "support_y": np.stack([labels] * TASKS),
        "query_x": tasks(),
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
    sx, sy, qx = (
        keras.tree.map_structure(lambda t: t[0], x[key])
        for key in ("support_x", "support_y", "query_x")
    )
    expected = model.adapt_and_predict(sx, sy, qx).numpy()
    copy_outputs = model.adapt(sx, sy)(qx, training=False)
    np.testing.assert_allclose(copy_outputs, expected, atol=1e-5, rtol=1e-5)
    # Another task of the same shapes reuses the traced function.
    model.adapt_and_predict(
        *(
            keras.tree.map_structure(lambda t: t[1], x[key])
            for key in ("support_x", "support_y", "query_x")
        )
    )
    function = model.cached_function(("adapt_and_predict", 2), None)
    assert function.experimental_get_tracing_count() == 1

    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(
        loaded.adapt_and_predict(sx, sy, qx), expected, atol=1e-5, rtol=1e-5
    )

    # A subclassed network records no inputs: the export is told them.
    spec = None
    if not getattr(model.base_model, "inputs", None):
        spec = tf.TensorSpec((None, *qx.shape[1:]), qx.dtype)
    model.export(tmp_path / "saved", input_signature=spec)
    for old, new in zip(trained, _values(model), strict=True):
        np.testing.assert_array_equal(old, new)

    # The signature's arguments: one per input tensor, named after it.
    request = {"support_y": sy}
    for key, inputs in (("support_x", sx), ("query_x", qx)):
        if isinstance(inputs, dict):
            request.update({f"{key}_{k}": v for k, v in inputs.items()})
        else:
            request[key] = inputs
    np.savez(tmp_path / "request.npz", **request)
    result = run_without_tfmaml(
        """
        import json
        import numpy as np
        import tensorflow as tf
        request = dict(np.load("request.npz"))
        served = tf.saved_model.load("saved")
        out = served.signatures["adapt_and_predict"](
            **{k: tf.constant(v) for k, v in request.items()}
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


def test_named_inputs_that_do_not_fit_are_named():
    model = _compiled(_two_named_inputs(), False)
    rng = np.random.default_rng(0)
    support, labels = _named_inputs(rng, SUPPORT), np.arange(SUPPORT) % WAYS
    with pytest.raises(ValueError, match="must hold the same inputs"):
        model.adapt_and_predict(support, labels, {"ids": support["ids"]})
    query = {**_named_inputs(rng, 4), "extra": np.zeros((4, 6), "float32")}
    with pytest.raises(ValueError, match=r"`support_x\['extra'\]` and `query"):
        model.adapt_and_predict(support, labels, query)
    short = {**support, "ids": support["ids"][:2]}
    with pytest.raises(ValueError, match=r"support_x\['ids'\].*support size"):
        model.adapt(short, labels)


def test_every_task_loop_takes_named_inputs():
    keras.utils.set_random_seed(0)
    network = _two_named_inputs()
    x, y = _episodes(_named_inputs, np.random.default_rng(0))
    losses = {}
    for loop in ("map", "vectorized", "unrolled"):
        model = tfmaml.MAML(network, inner_lr=0.1, task_loop=loop)
        model.compile(
            "sgd",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        losses[loop] = model.test_on_batch(x, y, return_dict=True)["loss"]
    assert losses["map"] > 0
    np.testing.assert_allclose(losses["vectorized"], losses["map"], rtol=1e-5)
    np.testing.assert_allclose(losses["unrolled"], losses["map"], rtol=1e-5)
