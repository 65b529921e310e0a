"""The inner loop against closed forms on linear least squares."""

import numpy as np
import tensorflow as tf

from tfmaml import inner_loop


def _least_squares(weights, x, y):
    (w,) = weights
    return tf.reduce_mean(tf.square(x @ w - y))


def _problem(seed):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(8, 3)))
    y = tf.constant(rng.normal(size=(8, 1)))
    w = tf.constant(rng.normal(size=(3, 1)))
    return x, y, w


def test_one_step_is_the_sgd_update():
    x, y, w = _problem(0)
    (adapted,) = inner_loop.adapt(
        _least_squares, [w], x, y, steps=1, learning_rate=0.1
    )
    gradient = 2.0 / 8 * tf.transpose(x) @ (x @ w - y)
    np.testing.assert_allclose(adapted, w - 0.1 * gradient, rtol=1e-11)


def test_trajectory_holds_every_iterate_and_zero_steps_is_identity():
    x, y, w = _problem(1)
    trajectory = inner_loop.adaptation_trajectory(
        _least_squares, [w], x, y, steps=3, learning_rate=0.05
    )
    assert len(trajectory) == 4
    np.testing.assert_array_equal(trajectory[0][0], w)
    current = w
    for step in range(1, 4):
        current = current - 0.05 * 2.0 / 8 * tf.transpose(x) @ (x @ current - y)
        np.testing.assert_allclose(trajectory[step][0], current, rtol=1e-11)
    (unchanged,) = inner_loop.adapt(
        _least_squares, [w], x, y, steps=0, learning_rate=0.05
    )
    np.testing.assert_array_equal(unchanged, w)


def test_meta_gradient_matches_the_analytic_second_order_form():
    # For L_q(w - a grad L_s(w)), the gradient is (I - a H_s) grad L_q(w'),
    # where H_s = 2/n X_s^T X_s is the support loss's Hessian.
    xs, ys, w = _problem(2)
    xq, yq, _ = _problem(3)
    rate = 0.1
    for first_order in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(w)
            (adapted,) = inner_loop.adapt(
                _least_squares,
                [w],
                xs,
                ys,
                steps=1,
                learning_rate=rate,
                first_order=first_order,
            )
            query_loss = _least_squares([adapted], xq, yq)
        meta_gradient = tape.gradient(query_loss, w)
        query_gradient = 2.0 / 8 * tf.transpose(xq) @ (xq @ adapted - yq)
        hessian = 2.0 / 8 * tf.transpose(xs) @ xs
        jacobian = np.eye(3) - (0.0 if first_order else rate) * hessian
        np.testing.assert_allclose(
            meta_gradient, jacobian @ query_gradient, rtol=1e-11
        )


def test_momentum_matches_the_heavy_ball_recursion():
    x, y, w = _problem(4)
    optimizer = inner_loop.Momentum(0.05, 0.9)
    trajectory = inner_loop.adaptation_trajectory(
        _least_squares, [w], x, y, steps=3, optimizer=optimizer
    )
    current, velocity = w, tf.zeros_like(w)
    for step in range(1, 4):
        gradient = 2.0 / 8 * tf.transpose(x) @ (x @ current - y)
        velocity = 0.9 * velocity + gradient
        current = current - 0.05 * velocity
        np.testing.assert_allclose(trajectory[step][0], current, rtol=1e-11)


def test_unadapted_weights_stay_and_rates_may_vary_per_step():
    x, y, w = _problem(5)
    bias = tf.constant([[0.5]], tf.float64)

    def loss(weights, x, y):
        return tf.reduce_mean(tf.square(x @ weights[0] + weights[1] - y))

    trajectory = inner_loop.adaptation_trajectory(
        loss,
        [w, bias],
        x,
        y,
        steps=2,
        learning_rate=lambda step, index: [0.1, 0.01][step],
        adapted=[True, False],
    )
    np.testing.assert_array_equal(trajectory[2][1], bias)
    first = w - 0.1 * 2.0 / 8 * tf.transpose(x) @ (x @ w + bias - y)
    second = first - 0.01 * 2.0 / 8 * tf.transpose(x) @ (x @ first + bias - y)
    np.testing.assert_allclose(trajectory[2][0], second, rtol=1e-11)


def test_a_sequence_of_rates_sets_each_step_and_the_last_repeats():
    x, y, w = _problem(4)
    rates = (0.1, 0.05)
    trajectory = inner_loop.adaptation_trajectory(
        _least_squares, [w], x, y, steps=3, optimizer=inner_loop.SGD(rates)
    )
    current = w
    for step, rate in enumerate((0.1, 0.05, 0.05), start=1):
        current = current - rate * 2.0 / 8 * tf.transpose(x) @ (x @ current - y)
        np.testing.assert_allclose(trajectory[step][0], current, rtol=1e-11)
    config = inner_loop.SGD(rates).get_config()
    assert config == {"learning_rate": [0.1, 0.05]}
