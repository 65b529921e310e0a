"""`tfmaml.MAML`: meta-gradients, Keras conventions, errors, round trips."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmaml
from tfmaml import cancelled_biases
from tfmaml.model import Episode

TASKS, SHOTS, QUERIES = 2, 6, 5


# Helpers.


def _regression_batch(seed=0, features=2, tasks=TASKS):
    rng = np.random.default_rng(seed)
    dtype = keras.config.floatx()

    def draw(*shape):
        return rng.normal(size=shape).astype(dtype)

    x = {
        "support_x": draw(tasks, SHOTS, features),
        "support_y": draw(tasks, SHOTS, 1),
        "query_x": draw(tasks, QUERIES, features),
    }
    return x, draw(tasks, QUERIES, 1)


def _image_batch(seed=0, ways=3):
    rng = np.random.default_rng(seed)
    dtype = keras.config.floatx()
    x = {
        "support_x": rng.normal(size=(TASKS, SHOTS, 6, 6, 1)).astype(dtype),
        "support_y": rng.integers(0, ways, size=(TASKS, SHOTS)),
        "query_x": rng.normal(size=(TASKS, QUERIES, 6, 6, 1)).astype(dtype),
    }
    return x, rng.integers(0, ways, size=(TASKS, QUERIES))


def _mlp(norm=None):
    layers = [keras.Input((2,)), keras.layers.Dense(4)]
    if norm is not None:
        layers.append(norm)
    layers += [keras.layers.Activation("tanh"), keras.layers.Dense(1)]
    return keras.Sequential(layers)


def _conv_bn(ways=3):
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(2, 3, padding="same"),
            tfmaml.BatchNormalization(),
            keras.layers.Activation("tanh"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(ways),
        ]
    )


def _episode(batch):
    x, y = batch
    return Episode(
        support_x=tf.constant(x["support_x"]),
        support_y=tf.constant(x["support_y"]),
        query_x=tf.constant(x["query_x"]),
        query_y=tf.constant(y),
        sample_weight=None,
    )


def _meta_loss(model, episode, steps, first_order):
    results = model.solve_tasks(
        episode, steps=steps, first_order=first_order, training=True
    )
    return tf.reduce_mean(results.loss)


def _meta_gradient(model, episode, steps, first_order=False):
    # All trainable variables: the network's and any learned inner-loop
    # hyperparameters (learning rates, momentum).
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss = _meta_loss(model, episode, steps, first_order)
    return [g.numpy() for g in tape.gradient(loss, variables)]


def _finite_difference_gradient(model, episode, steps, epsilon=1e-6):
    return _central_differences(
        lambda: _meta_loss(model, episode, steps, False),
        model.trainable_variables,
        epsilon,
    )


def _central_differences(loss, variables, epsilon=1e-6):
    """The gradient of `loss()` with respect to `variables` by central
    differences, one coordinate at a time. `loss` is traced once and re-run
    for every perturbation (it reads the variables when it runs): the same
    maths as eager, and Conv4's 3-step check took 1.4 s instead of 72 s."""
    traced = tf.function(loss, jit_compile=False)
    gradients = []
    for variable in variables:
        original = np.array(variable.numpy())  # 0-d for scalars.
        gradient = np.zeros_like(original)
        for index in np.ndindex(original.shape):
            values = []
            for sign in (1.0, -1.0):
                perturbed = original.copy()
                perturbed[index] += sign * epsilon
                variable.assign(perturbed)
                values.append(float(traced()))
            gradient[index] = (values[0] - values[1]) / (2 * epsilon)
        variable.assign(original)
        gradients.append(gradient)
    return gradients


def _relative_error(actual, expected):
    actual = np.concatenate([a.ravel() for a in actual])
    expected = np.concatenate([e.ravel() for e in expected])
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


def _compiled(base, loss="mse", metrics=None, **kwargs):
    model = tfmaml.MAML(base, **{"inner_lr": 0.1, **kwargs})
    model.compile(keras.optimizers.SGD(0.05), loss=loss, metrics=metrics)
    return model


def _weights(model):
    return [v.numpy().copy() for v in model.base_model.variables]


def _assert_same_weights(before, model):
    for old, new in zip(before, _weights(model), strict=True):
        np.testing.assert_array_equal(old, new)


# Meta-gradients.

NETWORKS = {
    "mlp": lambda: (_mlp(), "mse", _regression_batch),
    "mlp_batchnorm": lambda: (
        _mlp(tfmaml.BatchNormalization()),
        "mse",
        _regression_batch,
    ),
    "mlp_layernorm": lambda: (
        _mlp(keras.layers.LayerNormalization()),
        "mse",
        _regression_batch,
    ),
    "conv_batchnorm": lambda: (
        _conv_bn(),
        keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, dtype="float64"
        ),
        _image_batch,
    ),
}


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_second_order_meta_gradient_matches_finite_differences(
    float64, network, steps
):
    base, loss, make_batch = NETWORKS[network]()
    model = _compiled(base, loss=loss, inner_lr=0.3)
    episode = _episode(make_batch())
    analytic = _meta_gradient(model, episode, steps)
    numeric = _finite_difference_gradient(model, episode, steps)
    assert _relative_error(analytic, numeric) < 1e-6


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_second_order_terms_are_not_negligible(float64, network):
    # Guards the test above: were the second-order terms dropped, the
    # meta-gradient would move by far more than its tolerance.
    base, loss, make_batch = NETWORKS[network]()
    model = _compiled(base, loss=loss, inner_lr=0.3)
    episode = _episode(make_batch())
    second = _meta_gradient(model, episode, steps=1)
    first = _meta_gradient(model, episode, steps=1, first_order=True)
    assert _relative_error(first, second) > 1e-3


def test_first_order_is_the_query_gradient_at_the_adapted_weights(float64):
    base, loss, make_batch = NETWORKS["mlp_batchnorm"]()
    model = _compiled(base, loss=loss, inner_lr=0.3, first_order=True)
    x, y = make_batch()
    episode = _episode((x, y))
    actual = _meta_gradient(model, episode, steps=2, first_order=True)
    # Reference: adapt each task without any outer tape, then differentiate
    # its query loss with respect to the adapted weights themselves.
    expected = [np.zeros_like(g) for g in actual]
    for task in range(TASKS):
        adapted = model.adapt(x["support_x"][task], x["support_y"][task], 2)
        with tf.GradientTape() as tape:
            prediction = adapted(x["query_x"][task], training=True)
            task_loss = tf.reduce_mean(tf.square(prediction - y[task]))
        grads = tape.gradient(task_loss, adapted.trainable_variables)
        for total, g in zip(expected, grads, strict=True):
            total += g.numpy() / TASKS
    assert _relative_error(actual, expected) < 1e-10


def test_keras_batch_normalization_is_refused_for_second_order():
    base = _mlp(keras.layers.BatchNormalization(name="keras_bn"))
    with pytest.raises(ValueError, match="keras_bn.*first_order=True"):
        tfmaml.MAML(base)
    tfmaml.MAML(base, first_order=True)  # First order is exact.


def test_batch_normalization_matches_keras_forward_in_training_mode():
    x = np.random.default_rng(0).normal(size=(7, 4, 4, 3)).astype("float32")
    ours = tfmaml.BatchNormalization(epsilon=1e-3)
    theirs = keras.layers.BatchNormalization(epsilon=1e-3)
    np.testing.assert_allclose(
        ours(x), theirs(x, training=True), rtol=1e-4, atol=1e-5
    )
    # Batch statistics at inference too, unlike Keras' moving statistics.
    np.testing.assert_allclose(ours(x, training=False), ours(x), atol=0)


@pytest.mark.parametrize("shift", [0.0, 5.0])
def test_fused_batch_normalization_has_the_exact_second_derivative(shift):
    # Float32 runs TensorFlow's fused kernels and differentiates their
    # backward pass in closed form (tfmaml.batch_norm.fused_batch_norm);
    # float64 the composed ops, whose meta-gradient the finite-difference
    # tests check. A shifted input checks that nothing cancels.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5, 5, 3)) + shift
    upstream = rng.normal(size=(6, 5, 5, 3))

    def second_derivatives(dtype):
        layer = tfmaml.BatchNormalization(dtype=dtype)
        layer.build(x.shape)
        layer.gamma.assign(rng.normal(size=3) + 1.0)
        layer.beta.assign(rng.normal(size=3))
        inputs = tf.constant(x, dtype)
        variables = [layer.gamma.value, layer.beta.value]
        with tf.GradientTape() as outer:
            outer.watch(inputs)
            with tf.GradientTape() as inner:
                inner.watch(inputs)
                loss = tf.reduce_sum(
                    tf.sin(layer(inputs)) * tf.constant(upstream, dtype)
                )
            grads = inner.gradient(loss, [inputs, *variables])
            second = sum(tf.reduce_sum(tf.square(g)) for g in grads)
        return [g.numpy() for g in outer.gradient(second, [inputs, *variables])]

    seed = rng.bit_generator.state
    fused = second_derivatives("float32")
    rng.bit_generator.state = seed
    composed = second_derivatives("float64")
    assert _relative_error(fused, composed) < 1e-5


@pytest.mark.parametrize("network", ["mlp_batchnorm", "conv_batchnorm"])
def test_train_step_applies_the_meta_gradient(network):
    # train_step differentiates each task inside the task loop; the result
    # must be the meta-gradient of the outer tape (checked against finite
    # differences above), here through SGD: w <- w - 0.05 * gradient.
    base, loss, make_batch = NETWORKS[network]()
    if network == "conv_batchnorm":
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = _compiled(base, loss=loss, inner_lr=0.3, inner_steps=2)
    x, y = make_batch()
    expected = _meta_gradient(model, _episode((x, y)), steps=2)
    before = [v.numpy() for v in model.trainable_variables]
    model.train_on_batch(x, y)
    actual = [
        (old - v.numpy()) / 0.05
        for old, v in zip(before, model.trainable_variables, strict=True)
    ]
    assert _relative_error(actual, expected) < 1e-4


@pytest.mark.parametrize("momentum", [None, 0.5])
def test_recomputed_inner_steps_give_the_same_meta_gradient(float64, momentum):
    base, loss, make_batch = NETWORKS["conv_batchnorm"]()
    episode = _episode(make_batch())
    options = dict(loss=loss, inner_lr=0.3, inner_momentum=momentum)
    reference = _meta_gradient(_compiled(base, **options), episode, 3)
    model = _compiled(base, recompute_inner_steps=True, **options)
    assert _relative_error(_meta_gradient(model, episode, 3), reference) < 1e-10
    with pytest.raises(ValueError, match="learn_inner_lr='per_parameter'"):
        tfmaml.MAML(
            base, recompute_inner_steps=True, learn_inner_lr="per_parameter"
        )


def test_steps_per_execution_gives_the_weights_of_single_steps():
    x, y = _regression_batch(tasks=4 * TASKS)
    weights = []
    for steps in (1, 4):
        keras.utils.set_random_seed(0)
        model = tfmaml.MAML(_mlp(), 0.1, 2)
        model.compile(
            keras.optimizers.Adam(1e-2),
            loss="mse",
            steps_per_execution=steps,
        )
        model.fit(x, y, batch_size=TASKS, epochs=2, shuffle=False, verbose=0)
        weights.append([v.numpy() for v in model.trainable_variables])
    assert model.optimizer.iterations.numpy() == 8
    for single, grouped in zip(*weights, strict=True):
        np.testing.assert_allclose(grouped, single, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_bfloat16_mixed_precision_learns_like_float32():
    def train(policy):
        keras.utils.set_random_seed(0)
        keras.config.set_dtype_policy(policy)
        try:
            model = _compiled(
                _conv_bn(),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
                inner_lr=0.3,
            )
            x, y = _image_batch()
            logs = [
                model.train_on_batch(x, y, return_dict=True)["loss"]
                for _ in range(60)
            ]
        finally:
            keras.config.set_dtype_policy("float32")
        return logs, model

    full, _ = train("float32")
    mixed, model = train("mixed_bfloat16")
    assert model.base_model.layers[0].compute_dtype == "bfloat16"
    assert all(np.isfinite(mixed))
    assert mixed[-1] < 0.5 * mixed[0]
    np.testing.assert_allclose(mixed[0], full[0], rtol=2e-2)
    np.testing.assert_allclose(mixed[-1], full[-1], rtol=0.2, atol=0.02)


# Learning and side effects.


@pytest.mark.parametrize("task_loop", tfmaml.model.TASK_LOOPS)
def test_task_loops_give_the_same_meta_gradient(task_loop, float64):
    base, loss, make_batch = NETWORKS["conv_batchnorm"]()
    episode = _episode(make_batch())
    reference = _meta_gradient(_compiled(base, loss=loss), episode, 2)
    model = _compiled(base, loss=loss, task_loop=task_loop)
    assert _relative_error(_meta_gradient(model, episode, 2), reference) < 1e-10


def test_fit_moves_the_weights_and_inference_leaves_no_trace():
    base = _conv_bn()
    model = _compiled(
        base,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        inner_steps=2,
    )
    x, y = _image_batch()
    before = _weights(model)
    model.fit(x, y, batch_size=TASKS, epochs=2, verbose=0)
    moved = [
        not np.array_equal(old, new)
        for old, new in zip(before, _weights(model), strict=True)
    ]
    # All but the convolution's bias, which batch norm cancels: its
    # gradient is exactly zero (tfmaml.cancelled_biases).
    cancelled = cancelled_biases.cancelled_biases(base, training=True)
    assert [v.path for v in cancelled] == [base.layers[0].bias.path]
    assert moved == [all(v is not c for c in cancelled) for v in base.variables]

    after_fit = _weights(model)
    model.adapt(x["support_x"][0], x["support_y"][0], steps=3)
    model.test_on_batch(x, y)
    model.evaluate(x, y, batch_size=TASKS, verbose=0)
    predictions = model.predict(x, batch_size=TASKS, verbose=0)
    assert predictions.shape == (TASKS, QUERIES, 3)
    _assert_same_weights(after_fit, model)


def test_predict_on_episodes_equals_adapting_each_task():
    model = _compiled(_mlp(tfmaml.BatchNormalization()), eval_inner_steps=3)
    x, y = _regression_batch()
    predictions = model.predict(x, batch_size=TASKS, verbose=0)
    for task in range(TASKS):
        adapted = model.adapt(x["support_x"][task], x["support_y"][task])
        np.testing.assert_allclose(
            predictions[task], adapted(x["query_x"][task]), rtol=1e-5
        )
    # Plain inputs run the meta-learned network, unadapted.
    np.testing.assert_allclose(
        model.predict(x["query_x"][0], verbose=0),
        model.base_model(x["query_x"][0]),
        rtol=1e-6,
    )


@pytest.mark.slow
def test_meta_training_on_sinusoid_makes_adaptation_pay():
    model = tfmaml.MAML(
        tfmaml.networks.mlp((1,), 1),
        inner_lr=0.01,
        inner_steps=1,
        eval_inner_steps=10,
        task_loop="vectorized",
    )
    model.compile(
        keras.optimizers.Adam(1e-3), loss="mse", steps_per_execution=50
    )
    train = tfmaml.data.sinusoid(num_shots=10, meta_batch_size=25, seed=0)
    test = tfmaml.data.sinusoid(
        num_shots=10, meta_batch_size=100, seed=1, num_batches=2
    )
    untrained = model.evaluate(test, verbose=0, return_dict=True)
    model.fit(train, steps_per_epoch=3000, verbose=0)
    trained = model.evaluate(test, verbose=0, return_dict=True)
    assert trained["loss"] < 0.3 * trained["pre_loss"]
    assert trained["loss"] < 0.5 * untrained["loss"]


# Keras conventions.


def test_logs_report_loss_and_metrics_before_and_after_adaptation():
    model = _compiled(
        _conv_bn(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x, y = _image_batch()
    logs = model.evaluate(x, y, batch_size=TASKS, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy", "pre_loss", "pre_accuracy"}
    # The adapted loss is the mean of per-task losses of adapted networks.
    expected = np.mean(
        [
            keras.losses.sparse_categorical_crossentropy(
                y[t],
                model.adapt(x["support_x"][t], x["support_y"][t])(
                    x["query_x"][t]
                ),
                from_logits=True,
            )
            .numpy()
            .mean()
            for t in range(TASKS)
        ]
    )
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)


def test_fit_with_validation_data_and_validation_freq():
    model = _compiled(_mlp())
    x, y = _regression_batch()
    history = model.fit(
        x,
        y,
        batch_size=TASKS,
        epochs=4,
        validation_data=_regression_batch(seed=1),
        validation_freq=2,
        verbose=0,
    )
    assert len(history.history["loss"]) == 4
    assert len(history.history["val_loss"]) == 2
    assert len(history.history["val_pre_loss"]) == 2


def test_train_on_batch_and_test_on_batch_return_named_logs():
    model = _compiled(_mlp())
    x, y = _regression_batch()
    logs = model.train_on_batch(x, y, return_dict=True)
    assert set(logs) == {"loss"}
    assert np.isfinite(logs["loss"])
    assert set(model.test_on_batch(x, y, return_dict=True)) == {
        "loss",
        "pre_loss",
    }


def test_pre_metrics_in_training_logs_the_unadapted_network():
    base = _mlp()
    model = _compiled(base, pre_metrics_in_training=True, metrics=["mae"])
    x, y = _regression_batch()
    before = base(x["query_x"].reshape(-1, x["query_x"].shape[-1]))
    logs = model.train_on_batch(x, y, return_dict=True)
    assert set(logs) == {
        "loss",
        "mean_absolute_error",
        "pre_loss",
        "pre_mean_absolute_error",
    }
    expected = np.mean(np.abs(before.numpy().ravel() - y.ravel()))
    np.testing.assert_allclose(
        logs["pre_mean_absolute_error"], expected, rtol=1e-5
    )


def test_sample_weights_scale_each_query_loss():
    model = _compiled(_mlp())
    x, y = _regression_batch()
    plain = model.test_on_batch(x, y, return_dict=True)
    weight = np.zeros((TASKS, QUERIES), "float32")
    weight[:, :2] = 2.0
    weighted = model.test_on_batch(x, y, sample_weight=weight, return_dict=True)
    # Expected: sum(w * loss) / queries per task, as Keras reduces.
    adapted_errors = np.stack(
        [
            np.square(
                model.adapt(x["support_x"][t], x["support_y"][t])(
                    x["query_x"][t]
                ).numpy()
                - y[t]
            )[:, 0]
            for t in range(TASKS)
        ]
    )
    np.testing.assert_allclose(
        weighted["loss"], np.mean(weight * adapted_errors), rtol=1e-5
    )
    np.testing.assert_allclose(
        plain["loss"], np.mean(adapted_errors), rtol=1e-5
    )


def test_steps_per_execution_gives_the_same_weights():
    data = tfmaml.data.sinusoid(num_shots=5, meta_batch_size=4, num_batches=8)
    results = []
    for steps_per_execution in (1, 4):
        keras.utils.set_random_seed(0)
        model = tfmaml.MAML(tfmaml.networks.mlp((1,), 1))
        model.compile(
            keras.optimizers.Adam(1e-2),
            loss="mse",
            steps_per_execution=steps_per_execution,
        )
        model.fit(data, epochs=1, verbose=0)
        results.append(_weights(model))
    for one, four in zip(*results, strict=True):
        np.testing.assert_allclose(one, four, rtol=1e-5, atol=1e-6)


def test_summary_lists_the_base_network(capsys):
    model = tfmaml.MAML(tfmaml.networks.mlp((1,), 1, hidden_units=(7,)))
    model.summary()
    out = capsys.readouterr().out
    assert "mlp (Sequential)" in out
    assert "Total params: 22" in out  # (1*7 + 7) + (7*1 + 1)


# Bad input.


def _fit_batch(model, x, y):
    model.fit(x, y, batch_size=TASKS, epochs=1, verbose=0)


def test_a_missing_key_is_named():
    model = _compiled(_mlp())
    x, y = _regression_batch()
    del x["query_x"]
    with pytest.raises(ValueError, match=r"missing: \['query_x'\]"):
        model.train_on_batch(x, y)


def test_an_unknown_key_is_named():
    model = _compiled(_mlp())
    x, y = _regression_batch()
    x["queries"] = x["query_x"]
    with pytest.raises(ValueError, match=r"unknown: \['queries'\]"):
        model.train_on_batch(x, y)


def test_missing_query_labels_are_refused():
    model = _compiled(_mlp())
    x, _ = _regression_batch()
    with pytest.raises(ValueError, match="query labels.*y=None"):
        model.train_on_batch(x)


def test_support_and_query_task_counts_must_agree():
    model = _compiled(_mlp())
    x, y = _regression_batch()
    x["query_x"] = x["query_x"][:1]
    with pytest.raises(ValueError, match="same task count.*query_x.shape"):
        model.train_on_batch(x, y[:1])


def test_labels_of_the_wrong_rank_are_named():
    model = _compiled(_mlp())
    x, y = _regression_batch()
    x["support_y"] = x["support_y"][..., None]
    with pytest.raises(ValueError, match="same rank.*support_y.shape"):
        model.train_on_batch(x, y)
    with pytest.raises(ValueError, match="wrong rank.*support_y.shape"):
        model.train_on_batch(x, y[..., None])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"inner_steps": -1}, "inner_steps.*>= 0.*inner_steps=-1"),
        ({"eval_inner_steps": -2}, "eval_inner_steps=-2"),
        ({"inner_lr": 0.0}, "inner_lr.*> 0.*inner_lr=0.0"),
        ({"inner_lr": -0.5}, "inner_lr=-0.5"),
        ({"inner_lr": float("nan")}, "inner_lr=nan"),
        ({"task_loop": "pfor"}, "task_loop.*'pfor'"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tfmaml.MAML(_mlp(), **kwargs)


def test_adapt_refuses_negative_steps():
    model = _compiled(_mlp())
    x, _ = _regression_batch()
    with pytest.raises(ValueError, match="steps=-1"):
        model.adapt(x["support_x"][0], x["support_y"][0], steps=-1)


def test_an_unbuilt_base_model_is_refused():
    base = keras.Sequential([keras.layers.Dense(1)], name="unbuilt")
    with pytest.raises(ValueError, match="must be built.*unbuilt"):
        tfmaml.MAML(base)
    with pytest.raises(TypeError, match="base_model=.*str"):
        tfmaml.MAML("mlp")


def test_fit_before_compile_is_refused():
    model = tfmaml.MAML(_mlp())
    x, y = _regression_batch()
    with pytest.raises(ValueError, match="compile"):
        _fit_batch(model, x, y)


def test_compile_without_a_loss_is_refused():
    with pytest.raises(ValueError, match="loss=None"):
        tfmaml.MAML(_mlp()).compile("adam")


# Round trips.


def _round_trip_model():
    model = tfmaml.MAML(
        _conv_bn(),
        inner_lr=0.2,
        inner_steps=2,
        eval_inner_steps=4,
        task_loop="unrolled",
    )
    model.compile(
        keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x, y = _image_batch()
    model.fit(x, y, batch_size=TASKS, epochs=2, verbose=0)
    return model, x, y


def test_get_config_round_trip():
    model, _, _ = _round_trip_model()
    clone = tfmaml.MAML.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert (clone.inner_lr, clone.inner_steps, clone.eval_inner_steps) == (
        0.2,
        2,
        4,
    )


def test_keras_file_round_trip_in_a_fresh_process(tmp_path):
    model, x, y = _round_trip_model()
    path = str(tmp_path / "maml.keras")
    model.save(path)
    np.savez(tmp_path / "batch.npz", y=y, **x)
    expected_logs = model.evaluate(
        x, y, batch_size=TASKS, verbose=0, return_dict=True
    )
    expected = np.stack(
        [
            model.adapt(x["support_x"][t], x["support_y"][t])(x["query_x"][t])
            for t in range(TASKS)
        ]
    )
    script = textwrap.dedent(
        f"""
        import keras, numpy as np, tfmaml
        model = keras.models.load_model({path!r})
        batch = dict(np.load({str(tmp_path / "batch.npz")!r}))
        y = batch.pop("y")
        out = np.stack([
            model.adapt(batch["support_x"][t], batch["support_y"][t])(
                batch["query_x"][t])
            for t in range(len(y))
        ])
        np.save({str(tmp_path / "out.npy")!r}, out)
        logs = model.evaluate(batch, y, batch_size=len(y), verbose=0,
                              return_dict=True)
        np.save({str(tmp_path / "logs.npy")!r},
                [logs["loss"], logs["accuracy"]])
        assert type(model) is tfmaml.MAML and model.eval_inner_steps == 4
        """
    )
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "out.npy"), expected, rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "logs.npy"),
        [expected_logs["loss"], expected_logs["accuracy"]],
        rtol=1e-6,
    )
