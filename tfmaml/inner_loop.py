"""The inner loop of gradient-based meta-learning: adapt weights to a task.

Everything here is a pure function of tensors: the weights to adapt come in
as a list of tensors and the adapted ("fast") weights go out as new tensors,
so no Keras variable is ever written. Differentiating the result with an
outer `tf.GradientTape` gives the second-order MAML meta-gradient; with
`first_order=True` the inner gradients are cut from the graph, which is
first-order MAML (the fast weights still depend on the initial weights
through the identity, as in Finn et al. 2017, section 5.2).
"""

from collections.abc import Callable
from collections.abc import Sequence

import tensorflow as tf

SupportLoss = Callable[[list[tf.Tensor], tf.Tensor, tf.Tensor], tf.Tensor]


def adaptation_trajectory(
    loss_fn: SupportLoss,
    weights: Sequence[tf.Tensor],
    support_x: tf.Tensor,
    support_y: tf.Tensor,
    *,
    steps: int,
    learning_rate: float | tf.Tensor,
    first_order: bool = False,
) -> list[list[tf.Tensor]]:
    """Runs `steps` SGD steps on one task and returns every iterate.

    The loop is unrolled in Python: `steps` is a small static number and an
    unrolled loop is both the fastest form in graph mode and the only one a
    nested tape differentiates without `tf.while_loop` gradient overhead.

    Args:
        loss_fn: `loss_fn(weights, x, y)` returns the scalar support loss of
            the network run on `weights`.
        weights: The initial weights, one tensor per trainable variable.
        support_x: The task's support inputs.
        support_y: The task's support labels.
        steps: How many inner steps to take; 0 returns the initial weights.
        learning_rate: The inner SGD step size.
        first_order: If `True`, inner gradients are treated as constants
            by any enclosing tape. Defaults to `False`.

    Returns:
        A list of `steps + 1` weight lists: the initial weights, then the
        weights after each step.
    """
    current = list(weights)
    trajectory = [current]
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(current)
            loss = loss_fn(current, support_x, support_y)
        gradients = tape.gradient(
            loss, current, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        if first_order:
            gradients = [tf.stop_gradient(g) for g in gradients]
        current = [
            w - _as_dtype(learning_rate, w.dtype) * g
            for w, g in zip(current, gradients, strict=True)
        ]
        trajectory.append(current)
    return trajectory


def adapt(
    loss_fn: SupportLoss,
    weights: Sequence[tf.Tensor],
    support_x: tf.Tensor,
    support_y: tf.Tensor,
    *,
    steps: int,
    learning_rate: float | tf.Tensor,
    first_order: bool = False,
) -> list[tf.Tensor]:
    """Returns the weights after `steps` inner SGD steps on one task.

    The same as the last entry of `adaptation_trajectory`; see there for
    the arguments.
    """
    return adaptation_trajectory(
        loss_fn,
        weights,
        support_x,
        support_y,
        steps=steps,
        learning_rate=learning_rate,
        first_order=first_order,
    )[-1]


def _as_dtype(value, dtype):
    """A Python number becomes a constant of `dtype` directly: `tf.cast` of
    a Python float would round it to float32 first."""
    if isinstance(value, (int, float)):
        return tf.constant(value, dtype)
    return tf.cast(value, dtype)
