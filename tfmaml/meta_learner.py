"""`MetaLearner`: the Keras integration every tfmaml model shares.

A meta-learner wraps a built base network whose weights an inner loop
adapts to each task, with an inner optimiser (`tfmaml.inner_loop`), and
trains it with `fit` through the compiled Keras optimizer. What the
supervised `tfmaml.MAML` and the meta-RL `tfmaml.rl.MetaRL` have in common
lives here: the inner-loop options and their checks, the first-order
switch (with MAML++'s derivative-order annealing), the mean over tasks and
replicas, writing back the network's state, and the config round trip.
"""

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tfmaml import inner_loop
from tfmaml import networks
from tfmaml.adapted_variables import adapted_mask
from tfmaml.checks import check_bool
from tfmaml.checks import check_int
from tfmaml.checks import check_momentum
from tfmaml.checks import check_rate


class MetaLearner(keras.Model):
    """Base class of tfmaml's models; see `tfmaml.MAML` for the arguments.

    Subclasses implement `train_step` (typically: `compute_meta_gradients`,
    `optimizer.apply_gradients`, `write_back_state`, metrics).
    """

    def __init__(
        self,
        base_model: keras.layers.Layer,
        inner_lr: float | None = None,
        inner_steps: int = 1,
        *,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        inner_variables: Sequence[str] | None = None,
        inner_optimizer: inner_loop.InnerOptimizer | None = None,
        learn_inner_lr: str | None = None,
        inner_momentum: float | None = None,
        learn_inner_momentum: bool = False,
        first_order_steps: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.first_order = check_bool("first_order", first_order)
        networks.check_base_network(base_model, first_order=first_order)
        self.base_model = base_model
        self.inner_steps = check_int("inner_steps", inner_steps, minimum=0)
        self.eval_inner_steps = (
            self.inner_steps
            if eval_inner_steps is None
            else check_int("eval_inner_steps", eval_inner_steps, minimum=0)
        )
        self.inner_variables = (
            None if inner_variables is None else list(inner_variables)
        )
        self._adapted = adapted_mask(base_model, self.inner_variables)
        self.inner_lr = inner_lr
        self.learn_inner_lr = learn_inner_lr
        self.inner_momentum = inner_momentum
        self.learn_inner_momentum = learn_inner_momentum
        self._explicit_inner_optimizer = inner_optimizer is not None
        self.inner_optimizer = _resolve_inner_optimizer(
            inner_optimizer,
            inner_lr=inner_lr,
            learn_inner_lr=learn_inner_lr,
            inner_momentum=inner_momentum,
            learn_inner_momentum=learn_inner_momentum,
            inner_steps=self.inner_steps,
            adapted_shapes=[
                v.shape
                for v, a in zip(
                    base_model.trainable_variables, self._adapted, strict=True
                )
                if a
            ],
        )
        self.first_order_steps = check_int(
            "first_order_steps", first_order_steps, minimum=0
        )
        self._untracked = _Untracked()
        # train_step never calls self(...), so Keras would never mark the
        # wrapper built; the base network is built, so the wrapper is too.
        self.built = True

    @property
    def adapted(self) -> list[bool]:
        """One flag per trainable variable of the base network: whether the
        inner loop adapts it."""
        return list(self._adapted)

    def call(self, inputs, training=None):
        """Runs the meta-learned (unadapted) base network."""
        return self.base_model(inputs, training=training)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds the model symbolically from a first batch here,
        # reducing it across workers, which fails for a dict under
        # MultiWorkerMirroredStrategy. A meta-learner is built at
        # construction: only the optimizer is left to build.
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def make_test_function(self, force=False):
        return self._without_xla(super().make_test_function, force)

    def make_predict_function(self, force=False):
        return self._without_xla(super().make_predict_function, force)

    def _without_xla(self, make, force):
        # Evaluation and prediction adapt outside training, where
        # divergence raises an error whose message a string op formats
        # (`tfmaml.divergence`), which XLA cannot compile; their inner loop
        # is first order and gains little from XLA. Training keeps it.
        jit_compile = self._jit_compile
        self._jit_compile = False
        try:
            return make(force)
        finally:
            self._jit_compile = jit_compile

    def cached_function(self, key: Any, make: Any) -> Any:
        """`make()` (e.g. a `tf.function`) built once per `key` and kept out
        of Keras' and SavedModel's tracking, so repeated calls reuse its
        traces."""
        if key not in self._untracked:
            self._untracked[key] = make()
        return self._untracked[key]

    def first_order_now(self) -> bool | tf.Tensor:
        """`first_order`, or, with derivative-order annealing, a tensor that
        is true for the first `first_order_steps` meta-steps."""
        if self.first_order or not self.first_order_steps:
            return self.first_order
        return self.optimizer.iterations < self.first_order_steps

    def mean_over_tasks(
        self, sums: Sequence[tf.Tensor], tasks: tf.Tensor
    ) -> list[tf.Tensor]:
        """Turns gradients summed over this replica's `tasks` into the
        meta-batch mean: under `tf.distribute` the optimizer sums the
        replicas' gradients, so each divides by the whole task count."""
        return self.divide_among_replicas(sums, tasks)

    def divide_among_replicas(
        self, values: Sequence[tf.Tensor], count: tf.Tensor | int = 1
    ) -> list[tf.Tensor]:
        """`values / (count * replicas)`: what each replica gives the
        compiled optimizer, which sums the replicas' gradients under
        `tf.distribute`, so that the update is the one of `values / count`
        on one device."""
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        count = tf.cast(count, tf.int32) * replicas
        return [g / tf.cast(count, g.dtype) for g in values]

    def write_back_state(self, states: Sequence[tf.Tensor]) -> None:
        """Keeps the base network's non-trainable state (batch norm
        statistics, seeds) up to date, as `fit` would: floats take the mean
        of the tasks' final states `[tasks, ...]`, other state the first
        task's."""
        for variable, values in zip(
            self.base_model.non_trainable_variables, states, strict=True
        ):
            if variable.dtype.startswith("float"):
                variable.assign(tf.reduce_mean(values, axis=0))
            else:
                variable.assign(values[0])

    def get_config(self) -> dict[str, Any]:
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "base_model": keras.saving.serialize_keras_object(self.base_model),
            "inner_lr": self.inner_lr,
            "inner_steps": self.inner_steps,
            "eval_inner_steps": self.eval_inner_steps,
            "first_order": self.first_order,
            "inner_variables": self.inner_variables,
            "learn_inner_lr": self.learn_inner_lr,
            "inner_momentum": self.inner_momentum,
            "learn_inner_momentum": self.learn_inner_momentum,
            "first_order_steps": self.first_order_steps,
        }
        if self._explicit_inner_optimizer:
            config["inner_optimizer"] = keras.saving.serialize_keras_object(
                self.inner_optimizer
            )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("base_model", "inner_optimizer"):
            if key in config:
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects
                )
        return cls(**config)


def optimizer_from_options(
    inner_lr: float,
    *,
    learn_inner_lr: str | None = None,
    inner_momentum: float | None = None,
    learn_inner_momentum: bool = False,
    inner_steps: int | None = None,
) -> inner_loop.InnerOptimizer:
    """The inner optimiser that `MAML`'s shorthand options describe.

    Args:
        inner_lr: The (initial) inner learning rate, > 0.
        learn_inner_lr: `None`, `"per_parameter"` or
            `"per_layer_per_step"` (see `LearnedSGD`).
        inner_momentum: `None` for SGD, else the (initial) momentum.
        learn_inner_momentum: Whether the momentum is meta-learned.
        inner_steps: The training step count (per-step rates need it).

    Returns:
        `SGD`, `Momentum` or, when anything is learned, `LearnedSGD`.

    Raises:
        ValueError: Naming the option that is out of range.
    """
    check_rate("inner_lr", inner_lr)
    if learn_inner_lr or learn_inner_momentum:
        return inner_loop.LearnedSGD(
            inner_lr,
            rates=learn_inner_lr or None,
            steps=inner_steps,
            momentum=inner_momentum,
            learn_momentum=learn_inner_momentum,
        )
    if inner_momentum is None:
        return inner_loop.SGD(float(inner_lr))
    return inner_loop.Momentum(float(inner_lr), check_momentum(inner_momentum))


def _resolve_inner_optimizer(
    optimizer: inner_loop.InnerOptimizer | None,
    *,
    inner_lr: float | None,
    learn_inner_lr: str | None,
    inner_momentum: float | None,
    learn_inner_momentum: bool,
    inner_steps: int,
    adapted_shapes: Sequence[Sequence[int]],
) -> inner_loop.InnerOptimizer:
    """The inner optimiser of a model: the one given, or the one the
    shorthand options describe (`inner_lr` defaults to 0.01); built for the
    adapted weights' shapes if it is a Keras layer with weights to create.

    Raises:
        ValueError: If both an optimiser and shorthand options are given,
            or an option is out of range.
        TypeError: If `optimizer` lacks `init` or `update`.
    """
    shorthand = (
        inner_lr is not None
        or learn_inner_lr
        or inner_momentum is not None
        or learn_inner_momentum
    )
    if optimizer is not None and shorthand:
        raise ValueError(
            "Give `inner_optimizer` or the shorthand options (`inner_lr`, "
            "`learn_inner_lr`, `inner_momentum`, `learn_inner_momentum`), "
            f"not both. Received: inner_optimizer={optimizer!r}, inner_lr="
            f"{inner_lr!r}, learn_inner_lr={learn_inner_lr!r}, "
            f"inner_momentum={inner_momentum!r}"
        )
    if optimizer is None:
        optimizer = optimizer_from_options(
            0.01 if inner_lr is None else inner_lr,
            learn_inner_lr=learn_inner_lr,
            inner_momentum=inner_momentum,
            learn_inner_momentum=learn_inner_momentum,
            inner_steps=inner_steps,
        )
    missing = [m for m in ("init", "update") if not hasattr(optimizer, m)]
    if missing:
        raise TypeError(
            "`inner_optimizer` must have the `init` and `update` methods of "
            f"`tfmaml.inner_loop.InnerOptimizer`; it lacks {missing}. "
            f"Received: {type(optimizer).__name__}"
        )
    if isinstance(optimizer, keras.layers.Layer) and not optimizer.built:
        optimizer.build([tuple(shape) for shape in adapted_shapes])
    return optimizer


class _Untracked:
    """A dict out of sight of Keras and SavedModel tracking, for objects a
    model uses but must not save: `tf.function`s by key (a dict attribute
    would be tracked, and its tuple keys refused on export), the
    `DeviceEpisodes` it gathers from (its images are no weights)."""

    def __init__(self):
        self._items = {}

    def __contains__(self, key):
        return key in self._items

    def __getitem__(self, key):
        return self._items[key]

    def __setitem__(self, key, value):
        self._items[key] = value
