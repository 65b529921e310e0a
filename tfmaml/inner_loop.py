"""The inner loop of gradient-based meta-learning: adapt weights to a task.

Everything here is a pure function of tensors: the weights to adapt come in
as a list of tensors and the adapted ("fast") weights go out as new tensors,
so no Keras variable is ever written. Differentiating the result with an
outer `tf.GradientTape` gives the second-order MAML meta-gradient; with
`first_order=True` the inner gradients are cut from the graph, which is
first-order MAML (the fast weights still depend on the initial weights
through the identity, as in Finn et al. 2017, section 5.2).

The update rule is an inner optimiser with the `init`/`update` protocol of
optax: `SGD` (the default; its learning rate may differ per step and per
weight, which covers Meta-SGD and MAML++'s learned rates) or `Momentum`.
Both are differentiable, so their hyperparameters can be meta-learned.

While the loop runs the support loss of step `k`, `current_step()` returns
`k` (at trace time): layers with per-step parameters, such as
`tfmaml.BatchNormalization(num_steps=...)` (MAML++), read it to pick theirs.
"""

import contextlib
import contextvars
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any
from typing import Protocol

import tensorflow as tf

SupportLoss = Callable[[list[tf.Tensor], tf.Tensor, tf.Tensor], tf.Tensor]
# A learning rate: one number or tensor for all, or `rate(step, index)`
# giving the rate (broadcastable to weight `index`) of inner step `step`.
Rate = float | tf.Tensor | Callable[[int, int], Any]


_STEP = contextvars.ContextVar("tfmaml_inner_step", default=None)


@contextlib.contextmanager
def step_scope(step: int) -> Iterator[None]:
    """Runs the network as it is after `step` inner steps (see
    `current_step`); `adaptation_trajectory` enters it around each support
    loss, `tfmaml.MAML` around query predictions."""
    token = _STEP.set(int(step))
    try:
        yield
    finally:
        _STEP.reset(token)


def current_step() -> int | None:
    """The inner step the network is being run at, or `None` outside any
    inner loop (the unadapted network: step 0 to per-step layers)."""
    return _STEP.get()


class InnerOptimizer(Protocol):
    """An inner-loop update rule: `new_weight = weight - update`."""

    def init(self, weights: Sequence[tf.Tensor]) -> Any:
        """Returns the optimiser state for `weights`."""

    def update(
        self, gradients: Sequence[tf.Tensor], state: Any, step: int
    ) -> tuple[list[tf.Tensor], Any]:
        """Returns the updates to subtract and the new state."""


class SGD:
    """Plain gradient descent: `update = rate(step, i) * gradient`.

    Args:
        learning_rate: A number, or `rate(step, index)`.
    """

    def __init__(self, learning_rate: Rate):
        self.learning_rate = learning_rate

    def init(self, weights):
        return ()

    def update(self, gradients, state, step):
        return [
            _rate(self.learning_rate, step, i, g.dtype) * g
            for i, g in enumerate(gradients)
        ], state


class Momentum:
    """Heavy-ball momentum: `v = momentum * v + g; update = rate * v`.

    Differentiable in `momentum` and the rate, so both can be meta-learned.

    Args:
        learning_rate: A number, or `rate(step, index)`.
        momentum: The decay of the velocity, in [0, 1).
    """

    def __init__(self, learning_rate: Rate, momentum: float | tf.Tensor):
        self.learning_rate = learning_rate
        self.momentum = momentum

    def init(self, weights):
        return [tf.zeros_like(w) for w in weights]

    def update(self, gradients, state, step):
        velocity = [
            _as_dtype(self.momentum, g.dtype) * v + g
            for v, g in zip(state, gradients, strict=True)
        ]
        updates = [
            _rate(self.learning_rate, step, i, v.dtype) * v
            for i, v in enumerate(velocity)
        ]
        return updates, velocity


def adaptation_trajectory(
    loss_fn: SupportLoss,
    weights: Sequence[tf.Tensor],
    support_x: tf.Tensor,
    support_y: tf.Tensor,
    *,
    steps: int,
    learning_rate: Rate | None = None,
    optimizer: InnerOptimizer | None = None,
    first_order: bool | tf.Tensor = False,
    adapted: Sequence[bool] | None = None,
    recompute: bool = False,
) -> list[list[tf.Tensor]]:
    """Runs `steps` inner steps on one task and returns every iterate.

    The loop is unrolled in Python: `steps` is a small static number, and
    an unrolled loop is the fastest form in graph mode.

    Args:
        loss_fn: `loss_fn(weights, x, y)` returns the scalar support loss of
            the network run on `weights`.
        weights: The initial weights, one tensor per trainable variable.
        support_x: The task's support inputs.
        support_y: The task's support labels.
        steps: How many inner steps to take; 0 returns the initial weights.
        learning_rate: Shorthand for `optimizer=SGD(learning_rate)`.
        optimizer: The update rule. Give it or `learning_rate`.
        first_order: If `True`, inner gradients are constants for any
            enclosing tape. A boolean scalar tensor switches in the graph
            (derivative-order annealing). Defaults to `False`.
        adapted: Which weights the loop adapts; the others stay equal to
            their initial values (ANIL adapts only the head). Defaults to
            all.
        recompute: Whether an enclosing tape keeps only each step's
            weights and recomputes the step's activations when it
            differentiates (gradient checkpointing): memory for many steps
            at the cost of one more forward pass per step. Gradients reach
            only the weights and the optimiser state, not tensors the
            optimiser or `loss_fn` capture (such as learned rates).
            Defaults to `False`.

    Returns:
        A list of `steps + 1` weight lists: the initial weights, then the
        weights after each step.

    Raises:
        ValueError: If neither or both of `learning_rate` and `optimizer`
            are given, or `adapted` has the wrong length.
    """
    if (learning_rate is None) == (optimizer is None):
        raise ValueError(
            "Give exactly one of `learning_rate` and `optimizer`. Received: "
            f"learning_rate={learning_rate!r}, optimizer={optimizer!r}"
        )
    optimizer = optimizer or SGD(learning_rate)
    current = list(weights)
    if adapted is None:
        adapted = [True] * len(current)
    if len(adapted) != len(current):
        raise ValueError(
            f"`adapted` needs one flag per weight ({len(current)}). "
            f"Received {len(adapted)} flags"
        )
    index = [i for i, a in enumerate(adapted) if a]
    state = optimizer.init([current[i] for i in index])
    trajectory = [current]

    def take_step(step, current, state):
        moving = [current[i] for i in index]
        with tf.GradientTape() as tape:
            tape.watch(moving)
            with step_scope(step):
                loss = loss_fn(current, support_x, support_y)
        gradients = tape.gradient(
            loss, moving, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        gradients = [_maybe_stop(g, first_order) for g in gradients]
        updates, state = optimizer.update(gradients, state, step)
        current = list(current)
        for i, update in zip(index, updates, strict=True):
            current[i] = current[i] - update
        return current, state

    for step in range(steps):
        if recompute:
            current, state = _recomputed(take_step, step, current, state)
        else:
            current, state = take_step(step, current, state)
        trajectory.append(current)
    return trajectory


def _recomputed(take_step, step, weights, state):
    """`take_step`, whose gradient recomputes it from its inputs, so that
    an enclosing tape keeps none of its activations (in a `tf.function`).

    Not `tf.recompute_grad`: it runs the step with every tape stopped,
    the step's own inner tape included, so the step would not adapt.
    """
    flat_state = tf.nest.flatten(state)
    count = len(weights)

    def flat_step(tensors):
        new_weights, new_state = take_step(
            step,
            list(tensors[:count]),
            tf.nest.pack_sequence_as(state, list(tensors[count:])),
        )
        return [*new_weights, *tf.nest.flatten(new_state)]

    @tf.custom_gradient
    def checkpointed(*tensors):
        def gradient(*upstream, variables=None):
            with tf.GradientTape() as tape:
                tape.watch(tensors)
                again = flat_step(tensors)
            grads = tape.gradient(
                again,
                list(tensors),
                output_gradients=list(upstream),
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
            # Variables read inside (none in tfmaml's use) get no gradient.
            return grads, [None] * len(variables or ())

        return flat_step(tensors), gradient

    outputs = checkpointed(*weights, *flat_state)
    new_state = tf.nest.pack_sequence_as(state, list(outputs[count:]))
    return list(outputs[:count]), new_state


def adapt(
    loss_fn: SupportLoss,
    weights: Sequence[tf.Tensor],
    support_x: tf.Tensor,
    support_y: tf.Tensor,
    **kwargs,
) -> list[tf.Tensor]:
    """Returns the weights after the inner steps on one task.

    The last entry of `adaptation_trajectory`; see there for the arguments.
    """
    return adaptation_trajectory(
        loss_fn, weights, support_x, support_y, **kwargs
    )[-1]


def _maybe_stop(gradient, first_order):
    if isinstance(first_order, bool):
        return tf.stop_gradient(gradient) if first_order else gradient
    # In the graph: the value is the gradient either way; its own gradient
    # is cut when `first_order` is true.
    constant = tf.stop_gradient(gradient)
    keep = 1.0 - tf.cast(first_order, gradient.dtype)
    return constant + keep * (gradient - constant)


def _rate(rate, step, index, dtype):
    if callable(rate):
        rate = rate(step, index)
    return _as_dtype(rate, dtype)


def _as_dtype(value, dtype):
    """A Python number becomes a constant of `dtype` directly: `tf.cast` of
    a Python float would round it to float32 first."""
    if isinstance(value, (int, float)):
        return tf.constant(value, dtype)
    return tf.cast(value, dtype)
