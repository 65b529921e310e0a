"""A new inner optimiser and a new algorithm, each written outside tfmaml
in one class, train and are exact (the README's "Extending tfmaml")."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_test import _central_differences

import tfmaml
from tfmaml import experiment
from tfmaml.configs import sinusoid


class ClippedSGD:
    """SGD whose step per variable is at most `max_norm` long."""

    def __init__(self, learning_rate, max_norm):
        self.learning_rate = learning_rate
        self.max_norm = max_norm

    def init(self, weights):
        return ()

    def update(self, gradients, state, step):
        return [
            tf.clip_by_norm(self.learning_rate * g, self.max_norm)
            for g in gradients
        ], state


class SignMAML(tfmaml.MAML):
    """Sign-MAML (Fan et al. 2021): the outer step follows the sign of the
    first-order meta-gradient."""

    def __init__(self, base_model, **kwargs):
        kwargs["first_order"] = True
        super().__init__(base_model, **kwargs)

    def compute_meta_gradients(self, episode):
        gradients, results = super().compute_meta_gradients(episode)
        return [tf.sign(g) for g in gradients], results


def _net():
    return keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(4, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )


def _episode(seed=0, tasks=3):
    rng = np.random.default_rng(seed)
    x = {
        "support_x": rng.normal(size=(tasks, 5, 2)),
        "support_y": rng.normal(size=(tasks, 5, 1)),
        "query_x": rng.normal(size=(tasks, 6, 2)),
    }
    y = rng.normal(size=(tasks, 6, 1))
    return tfmaml.batches.check_episode(x, y, None)


def _meta_loss(model, episode, steps):
    results = model.solve_tasks(
        episode, steps=steps, first_order=False, training=True
    )
    return tf.reduce_mean(results.loss)


def test_a_user_inner_optimizer_gives_the_finite_difference_meta_gradient(
    float64,
):
    keras.utils.set_random_seed(1)
    # A small max_norm makes the clip active on some variables.
    model = tfmaml.MAML(
        _net(), inner_steps=2, inner_optimizer=ClippedSGD(0.5, 0.05)
    )
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    episode = _episode()
    with tf.GradientTape() as tape:
        loss = _meta_loss(model, episode, 2)
    analytic = tape.gradient(loss, model.trainable_variables)
    # The clip is active: some first inner steps are longer than 0.05.
    x, y = episode.support_x[0], episode.support_y[0]
    with tf.GradientTape() as tape:
        support_loss = model.compute_loss(y=y, y_pred=model(x))
    first = tape.gradient(support_loss, model.trainable_variables)
    assert any(float(tf.norm(0.5 * g)) > 0.05 for g in first)
    numeric = _central_differences(
        lambda: _meta_loss(model, episode, 2), model.trainable_variables
    )
    for gradient, expected in zip(analytic, numeric, strict=True):
        np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-8)


def test_a_user_inner_optimizer_takes_the_steps_it_defines(float64):
    model = tfmaml.MAML(
        _net(), inner_steps=1, inner_optimizer=ClippedSGD(0.5, 0.05)
    )
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    episode = _episode()
    x, y = episode.support_x[0], episode.support_y[0]
    fast = model.adapted_weights(x, y, 1)
    with tf.GradientTape() as tape:
        loss = model.compute_loss(y=y, y_pred=model(x))
    gradients = tape.gradient(loss, model.base_model.trainable_variables)
    for weight, g, new in zip(
        model.base_model.trainable_variables, gradients, fast, strict=True
    ):
        step = 0.5 * g.numpy()
        norm = np.linalg.norm(step)
        expected = weight.numpy() - step * min(1.0, 0.05 / norm)
        np.testing.assert_allclose(new, expected, rtol=1e-12)


def test_a_user_algorithm_overrides_only_the_outer_update():
    keras.utils.set_random_seed(2)
    model = SignMAML(_net(), inner_lr=0.1)
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    episode = _episode(tasks=4)
    reference = tfmaml.MAML(model.base_model, inner_lr=0.1, first_order=True)
    reference.compile(keras.optimizers.SGD(0.01), loss="mse")
    expected, _ = reference.compute_meta_gradients(episode)
    before = [v.numpy().copy() for v in model.trainable_variables]
    x = {
        "support_x": episode.support_x,
        "support_y": episode.support_y,
        "query_x": episode.query_x,
    }
    history = model.fit(
        x, episode.query_y, batch_size=4, epochs=1, verbose=0, shuffle=False
    )
    assert np.isfinite(history.history["loss"][0])
    for old, variable, g in zip(
        before, model.trainable_variables, expected, strict=True
    ):
        moved = old - variable.numpy()
        np.testing.assert_allclose(moved, 0.01 * np.sign(g), atol=1e-7)


def test_a_registered_algorithm_is_a_config_field():
    tfmaml.register_algorithm("sign_maml_test", SignMAML)
    config = sinusoid.get_config("smoke")
    config.unlock()
    config.algorithm = "sign_maml_test"
    model = experiment.build_model(config)
    assert type(model) is SignMAML and model.first_order
    with pytest.raises(ValueError, match="registered already"):
        tfmaml.register_algorithm("sign_maml_test", SignMAML)
    config.algorithm = "no_such_algorithm"
    with pytest.raises(ValueError, match="known algorithms: .*sign_maml"):
        experiment.build_model(config)


def test_a_user_inner_optimizer_and_shorthand_options_are_exclusive():
    with pytest.raises(ValueError, match="not both.*inner_lr=0.1"):
        tfmaml.MAML(_net(), 0.1, inner_optimizer=ClippedSGD(0.5, 0.05))
    with pytest.raises(TypeError, match=r"lacks \['init'\]"):
        tfmaml.MAML(_net(), inner_optimizer=type("Bad", (), {"update": 1})())


def test_a_model_with_a_shipped_inner_optimizer_saves_and_loads(tmp_path):
    model = tfmaml.MAML(
        _net(),
        inner_steps=2,
        inner_optimizer=tfmaml.inner_loop.Momentum((0.1, 0.05), 0.5),
    )
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.inner_optimizer.get_config() == {
        "learning_rate": [0.1, 0.05],
        "momentum": 0.5,
    }
    episode = _episode()
    x, y = episode.support_x[0], episode.support_y[0]
    for a, b in zip(
        model.adapted_weights(x, y, 2),
        loaded.adapted_weights(x, y, 2),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6)
