"""The inner loop of gradient-based meta-learning: adapt weights to a task.

Everything here is a pure function of tensors: the weights to adapt come in
as a list of tensors and the adapted ("fast") weights go out as new tensors,
so no Keras variable is ever written. Differentiating the result with an
outer `tf.GradientTape` gives the second-order MAML meta-gradient; with
`first_order=True` the inner gradients are cut from the graph, which is
first-order MAML (the fast weights still depend on the initial weights
through the identity, as in Finn et al. 2017, section 5.2).

The update rule is an inner optimiser: any object with optax's `init`/
`update` protocol (`InnerOptimizer`; `update` also gets the step index).
tfmaml's rules live here: `SGD` (rates per step and per weight),
`Momentum`, and `LearnedSGD`, whose rates and momentum the outer loop
meta-learns (Meta-SGD, MAML++'s per-layer per-step rates). Every rule is
differentiable, so the meta-gradient reaches whatever its updates depend on.

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

import keras
import tensorflow as tf

from tfmaml.bias_gradients import summed_bias_gradients
from tfmaml.checks import check_int
from tfmaml.checks import check_momentum
from tfmaml.checks import check_rate

SupportLoss = Callable[[list[tf.Tensor], tf.Tensor, tf.Tensor], tf.Tensor]
# A learning rate: one number or tensor for all, a sequence of numbers (the
# rate of each inner step, the last one for later steps), or `rate(step,
# index)`, the rate of inner step `step` (broadcastable to weight `index`).
Rate = float | tf.Tensor | Sequence[float] | Callable[[int, int], Any]

_STEP = contextvars.ContextVar("tfmaml_inner_step", default=None)


@contextlib.contextmanager
def step_scope(step: int) -> Iterator[None]:
    """Runs the network as it is after `step` inner steps (see
    `current_step`); `adaptation_trajectory` enters it around each support
    loss, `tfmaml.MAML` around query predictions.

    Args:
        step: The inner step.
    """
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
    """The protocol of an inner-loop update rule (optax's, with the step).

    The inner loop calls `state = init(adapted_weights)` once per task,
    then at each step `updates, state = update(gradients, state, step)` and
    sets `weight = weight - update`. `gradients`, `updates` and the weights
    are lists of tensors in the same order; `step` is the Python index of
    the inner step (0, 1, ...), so rules may differ per step. Everything is
    traced into the meta-gradient's graph: write `update` with TensorFlow
    ops (or `keras.ops`) and it is differentiated like the network.

    A rule with meta-learned hyperparameters is a `keras.layers.Layer` whose
    `build(shapes)` creates them as weights from the adapted weights'
    shapes: `tfmaml.MAML(..., inner_optimizer=rule)` builds it, tracks it
    (so `fit` meta-learns its weights and `save` keeps them) and reads them
    inside the outer tape. To save a model whose rule is your own class,
    register it with `keras.saving.register_keras_serializable` and give
    it a `get_config`.
    """

    def init(self, weights: Sequence[tf.Tensor]) -> Any:
        """Returns the optimiser state for `weights` (e.g. `()`)."""

    def update(
        self, gradients: Sequence[tf.Tensor], state: Any, step: int
    ) -> tuple[list[tf.Tensor], Any]:
        """Returns the updates to subtract and the new state."""


@keras.saving.register_keras_serializable(package="tfmaml")
class SGD:
    """Plain gradient descent: `update = rate(step, i) * gradient`.

    Args:
        learning_rate: A number; a sequence of numbers, one per inner step
            (the last for later steps: e.g. `(0.5, 0.25)`, the MAML RL
            test-time schedule); or `rate(step, index)` (not saved with a
            model).
    """

    def __init__(self, learning_rate: Rate):
        self.learning_rate = learning_rate

    def init(self, weights: Sequence[tf.Tensor]) -> tuple:
        """No state."""
        return ()

    def update(
        self, gradients: Sequence[tf.Tensor], state: Any, step: int
    ) -> tuple[list[tf.Tensor], Any]:
        """Scales each gradient by its rate."""
        return [
            _rate(self.learning_rate, step, i, g.dtype) * g
            for i, g in enumerate(gradients)
        ], state

    def get_config(self) -> dict:
        """The constructor arguments (numbers only)."""
        return {"learning_rate": _number("learning_rate", self.learning_rate)}

    @classmethod
    def from_config(cls, config: dict) -> "SGD":
        """Rebuilds the rule from `get_config`."""
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfmaml")
class Momentum:
    """Heavy-ball momentum: `v = momentum * v + g; update = rate * v`.

    Differentiable in `momentum` and the rate, so both can be meta-learned
    (see `LearnedSGD`).

    Args:
        learning_rate: A number, or `rate(step, index)`.
        momentum: The decay of the velocity, in [0, 1).
    """

    def __init__(self, learning_rate: Rate, momentum: float | tf.Tensor):
        self.learning_rate = learning_rate
        self.momentum = momentum

    def init(self, weights: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """A zero velocity per weight."""
        return [tf.zeros_like(w) for w in weights]

    def update(
        self, gradients: Sequence[tf.Tensor], state: Any, step: int
    ) -> tuple[list[tf.Tensor], Any]:
        """Accumulates the velocity and scales it by the rate."""
        velocity = [
            _as_dtype(self.momentum, g.dtype) * v + g
            for v, g in zip(state, gradients, strict=True)
        ]
        updates = [
            _rate(self.learning_rate, step, i, v.dtype) * v
            for i, v in enumerate(velocity)
        ]
        return updates, velocity

    def get_config(self) -> dict:
        """The constructor arguments (numbers only)."""
        return {
            "learning_rate": _number("learning_rate", self.learning_rate),
            "momentum": _number("momentum", self.momentum),
        }

    @classmethod
    def from_config(cls, config: dict) -> "Momentum":
        """Rebuilds the rule from `get_config`."""
        return cls(**config)


LEARNED_RATES = ("per_parameter", "per_layer_per_step")


@keras.saving.register_keras_serializable(package="tfmaml")
class LearnedSGD(keras.layers.Layer):
    """SGD, or momentum, whose rates (and momentum) are meta-learned.

    The rates start at `learning_rate`: one per weight element
    (`rates="per_parameter"`, Meta-SGD) or one per adapted variable and
    inner step (`rates="per_layer_per_step"`, MAML++'s LSLR; steps past
    `steps` use the last step's rates), or a fixed `learning_rate`
    (`rates=None`, with a learned momentum). With `momentum`, the rule is
    `Momentum`'s; `learn_momentum=True` meta-learns it too.

    Args:
        learning_rate: The initial (or fixed) rate, > 0.
        rates: `None`, `"per_parameter"` or `"per_layer_per_step"`.
            Defaults to `"per_parameter"`.
        steps: Inner steps with their own rates; needed by
            `"per_layer_per_step"`. Defaults to `None`.
        momentum: The initial momentum in [0, 1), or `None` for SGD.
            Defaults to `None`.
        learn_momentum: Whether the momentum is meta-learned. Defaults to
            `False`.
        **kwargs: Base layer arguments (`name`, ...).

    Raises:
        ValueError: Naming the argument that is out of range.

    References:
        Li, Zhou, Chen and Li. Meta-SGD: Learning to Learn Quickly for
        Few-Shot Learning. 2017. Antoniou, Edwards and Storkey. How to
        train your MAML. ICLR 2019.
    """

    def __init__(
        self,
        learning_rate: float,
        *,
        rates: str | None = "per_parameter",
        steps: int | None = None,
        momentum: float | None = None,
        learn_momentum: bool = False,
        **kwargs,
    ):
        kwargs.setdefault("name", "inner_optimizer")
        super().__init__(**kwargs)
        self.learning_rate = check_rate("inner_lr", learning_rate)
        if rates is not None and rates not in LEARNED_RATES:
            raise ValueError(
                "`learn_inner_lr` must be None, 'per_parameter' (Meta-SGD) "
                "or 'per_layer_per_step' (MAML++). Received: "
                f"learn_inner_lr={rates!r}"
            )
        if rates == "per_layer_per_step":
            if steps is None or check_int("inner_steps", steps, minimum=0) < 1:
                raise ValueError(
                    "`learn_inner_lr='per_layer_per_step'` learns a rate per "
                    "inner step and needs `inner_steps` >= 1. Received: "
                    f"inner_steps={steps}"
                )
        if momentum is None and learn_momentum:
            raise ValueError(
                "`learn_inner_momentum=True` needs an initial "
                "`inner_momentum`. Received: inner_momentum=None"
            )
        if momentum is not None:
            check_momentum(momentum)
        if rates is None and not learn_momentum:
            raise ValueError(
                "`LearnedSGD` needs something to learn: `rates` or "
                "`learn_momentum=True`. Received: rates=None, "
                "learn_momentum=False"
            )
        self.rates = rates
        self.steps = steps
        self.momentum = momentum
        self.learn_momentum = bool(learn_momentum)

    def build(self, input_shape: Sequence[Sequence[int]]) -> None:
        """Creates the rates for adapted weights of shapes `input_shape`."""
        shapes = [tuple(shape) for shape in input_shape]
        initial = keras.initializers.Constant(self.learning_rate)
        self._element_rates = None
        self._step_rates = None
        self._momentum = None
        if self.rates == "per_parameter":
            self._element_rates = [
                self.add_weight(
                    shape=shape, initializer=initial, name=f"inner_lr_{i}"
                )
                for i, shape in enumerate(shapes)
            ]
        elif self.rates == "per_layer_per_step":
            self._step_rates = self.add_weight(
                shape=(self.steps, len(shapes)),
                initializer=initial,
                name="inner_lr_per_step",
            )
        if self.learn_momentum:
            self._momentum = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(self.momentum),
                name="inner_momentum",
            )

    def _rule(self) -> InnerOptimizer:
        """The rule on the current values of the learned variables (read
        where it is called: inside the outer tape)."""
        if self._element_rates is not None:
            rates = [tf.convert_to_tensor(r) for r in self._element_rates]

            def rate(step, index):
                return rates[index]

        elif self._step_rates is not None:
            table = tf.convert_to_tensor(self._step_rates)
            last = self.steps - 1

            def rate(step, index):
                return table[min(step, last), index]

        else:
            rate = self.learning_rate
        if self.momentum is None:
            return SGD(rate)
        momentum = (
            self.momentum
            if self._momentum is None
            else tf.convert_to_tensor(self._momentum)
        )
        return Momentum(rate, momentum)

    def init(self, weights: Sequence[tf.Tensor]) -> Any:
        """The state of the underlying SGD or momentum rule."""
        return self._rule().init(weights)

    def update(
        self, gradients: Sequence[tf.Tensor], state: Any, step: int
    ) -> tuple[list[tf.Tensor], Any]:
        """The underlying rule's update, with the learned values."""
        return self._rule().update(gradients, state, step)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "learning_rate": self.learning_rate,
            "rates": self.rates,
            "steps": self.steps,
            "momentum": self.momentum,
            "learn_momentum": self.learn_momentum,
        }


def check_recomputable(optimizer: InnerOptimizer) -> None:
    """Recomputed inner steps pass gradients to the weights and the
    optimiser state only, so an optimiser with learned weights is refused.

    Args:
        optimizer: The inner optimiser.

    Raises:
        ValueError: Naming the learned weights.
    """
    learned = getattr(optimizer, "trainable_weights", None)
    if learned:
        raise ValueError(
            "`recompute_inner_steps=True` cannot be combined with learned "
            "inner-loop hyperparameters (the recomputed steps would drop "
            f"their gradients). Received: learn_inner_lr={optimizer.rates!r}"
            if isinstance(optimizer, LearnedSGD)
            else "`recompute_inner_steps=True` cannot be combined with an "
            "inner optimiser with learned weights "
            f"{[w.path for w in learned]}."
        )


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
        return inner_step(
            loss_fn,
            current,
            state,
            support_x,
            support_y,
            step=step,
            optimizer=optimizer,
            first_order=first_order,
            adapted=adapted,
        )

    for step in range(steps):
        if recompute:
            current, state = _recomputed(take_step, step, current, state)
        else:
            current, state = take_step(step, current, state)
        trajectory.append(current)
    return trajectory


def inner_step(
    loss_fn: SupportLoss,
    weights: Sequence[tf.Tensor],
    state: Any,
    support_x: Any,
    support_y: Any,
    *,
    step: int,
    optimizer: InnerOptimizer,
    first_order: bool | tf.Tensor = False,
    adapted: Sequence[bool],
) -> tuple[list[tf.Tensor], Any]:
    """One inner step: the update of `optimizer` on `loss_fn`'s gradient.

    `adaptation_trajectory` chains these on one support set; a caller whose
    support data changes between steps (meta-RL samples new trajectories
    with the adapted policy before each step) chains them itself, threading
    `state` (from `optimizer.init` of the adapted weights).

    Args:
        loss_fn: `loss_fn(weights, x, y)`, the scalar support loss.
        weights: The current weights, one tensor per variable.
        state: The optimiser state for the adapted weights.
        support_x: The support inputs given to `loss_fn`.
        support_y: The support labels given to `loss_fn`.
        step: The index of this step (`current_step()` during `loss_fn`).
        optimizer: The update rule.
        first_order: Whether the gradient is a constant for outer tapes.
        adapted: Which weights move.

    Returns:
        The new weights and the new optimiser state.
    """
    index = [i for i, a in enumerate(adapted) if a]
    moving = [weights[i] for i in index]
    with tf.GradientTape() as tape:
        tape.watch(moving)
        with step_scope(step):
            loss = loss_fn(weights, support_x, support_y)
    with summed_bias_gradients():
        gradients = tape.gradient(
            loss, moving, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
    gradients = [_maybe_stop(g, first_order) for g in gradients]
    updates, state = optimizer.update(gradients, state, step)
    current = list(weights)
    for i, update in zip(index, updates, strict=True):
        current[i] = current[i] - update
    return current, state


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
            with summed_bias_gradients():
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

    Args:
        loss_fn: As for `adaptation_trajectory`.
        weights: The initial weights.
        support_x: The task's support inputs.
        support_y: The task's support labels.
        **kwargs: `adaptation_trajectory`'s keyword arguments.
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


def _number(name, value):
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) for v in value
    ):
        return list(value)
    if not isinstance(value, (int, float)):
        raise ValueError(
            f"Only numbers are saved as an inner optimiser's `{name}`; a "
            "function or tensor cannot be. Received: "
            f"{name}={value!r}"
        )
    return value


def _rate(rate, step, index, dtype):
    if callable(rate):
        rate = rate(step, index)
    elif isinstance(rate, (list, tuple)):
        rate = rate[min(step, len(rate) - 1)]
    return _as_dtype(rate, dtype)


def _as_dtype(value, dtype):
    """A Python number becomes a constant of `dtype` directly: `tf.cast` of
    a Python float would round it to float32 first."""
    if isinstance(value, (int, float)):
        return tf.constant(value, dtype)
    return tf.cast(value, dtype)
