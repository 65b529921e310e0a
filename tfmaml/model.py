"""`MAML`: a Keras model that meta-trains any Keras network with `fit`.

A batch is a meta-batch of tasks (see `MAML`'s docstring for the layout).
`train_step` asks `compute_meta_gradients` for the outer update: it adapts
a copy of the network's weights to every task's support set
(`tfmaml.tasks.solve_tasks` over `tfmaml.inner_loop`) and differentiates the
query loss of the adapted weights with respect to the initial weights. The
base network's variables are only written by the optimizer: adaptation
works on tensors in a `keras.StatelessScope` (`tasks.run_network`).
"""

import os
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tfmaml import adaptation
from tfmaml import batches
from tfmaml import export
from tfmaml import inner_loop
from tfmaml import labels
from tfmaml import task_metrics
from tfmaml import tasks
from tfmaml.batches import EPISODE_ROWS
from tfmaml.batches import Episode
from tfmaml.checks import check_bool
from tfmaml.checks import check_int
from tfmaml.meta_learner import MetaLearner
from tfmaml.tasks import TASK_LOOPS
from tfmaml.tasks import TaskResults


@keras.saving.register_keras_serializable(package="tfmaml")
class MAML(MetaLearner):
    """Model-Agnostic Meta-Learning (MAML) around any built Keras network.

    `fit` meta-trains the base network so that `inner_steps` inner steps on
    a new task's support set give low loss on its query set. Each batch is
    a meta-batch of `B` tasks:

    - `x = {"support_x": [B, S, ...], "support_y": [B, S, ...],
      "query_x": [B, Q, ...]}` and `y = query_y` of shape `[B, Q, ...]`;
    - labels are what the compiled loss takes (`tfmaml.labels`): class
      indices for a sparse cross-entropy, else the output's shape;
    - an optional `sample_weight` of shape `[B, Q]` weighs query examples.

    The loss and metrics given to `compile` are applied per task
    (`compute_loss`, `compute_metrics`): the loss's per-example values are
    averaged over each task's examples, then over tasks. Logs report the
    query loss and metrics after adaptation (`loss`, `accuracy`, ...) and,
    in `evaluate` and validation, of the unadapted network (`pre_loss`,
    ...; in training too with `pre_metrics_in_training=True`).
    Regularisation losses of the base network are added to both the
    support and the query loss, evaluated on the weights in use.

    `model(x)` runs the meta-learned base network; `predict` on episode
    batches returns adapted query predictions; `adapt` returns a network
    adapted to one task. Subclasses change the outer update by overriding
    `compute_meta_gradients` (see `tfmaml.Reptile`).

    Args:
        base_model: A built Keras model (Sequential, Functional or
            subclassed) or layer. Its trainable variables are meta-learned.
        inner_lr: The inner-loop SGD learning rate (the initial one when
            learned), shorthand for `inner_optimizer=SGD(inner_lr)`.
            Defaults to `0.01`; not with `inner_optimizer`.
        inner_steps: Inner steps during meta-training. Defaults to `1`.
        eval_inner_steps: Inner steps in `evaluate`, validation, `predict`,
            `adapt` and the export. Defaults to `inner_steps`.
        first_order: If `True`, the meta-gradient ignores the second
            derivatives of the inner loop (first-order MAML). Defaults to
            `False`.
        task_loop: How the tasks of a meta-batch are computed: `"map"`,
            `"vectorized"` or `"unrolled"` (see `tfmaml.tasks.map_tasks`).
            All give the same result. Defaults to `"map"`.
        inner_variables: Names of the layers whose variables the inner loop
            adapts (the others are meta-learned by the outer loop only).
            Defaults to all.
        inner_optimizer: The inner update rule: any object with the
            `tfmaml.inner_loop.InnerOptimizer` protocol (`init`/`update`),
            e.g. `inner_loop.Momentum(0.1, 0.9)` or your own. Defaults to
            the one the shorthand options describe.
        learn_inner_lr: Shorthand for meta-learned rates: `None`,
            `"per_parameter"` (Meta-SGD) or `"per_layer_per_step"`
            (MAML++). Defaults to `None`.
        inner_momentum: Shorthand for a heavy-ball inner optimiser with
            this momentum. Defaults to `None` (SGD).
        learn_inner_momentum: Whether that momentum is meta-learned.
            Defaults to `False`.
        multi_step_loss_steps: MAML++'s multi-step loss: the query loss is
            a weighted sum over the inner steps, annealed to the last step
            over this many meta-steps (0: off). Defaults to `0`.
        first_order_steps: MAML++'s derivative-order annealing: first order
            for this many meta-steps, then second order. Defaults to `0`.
        pre_metrics_in_training: Whether training logs also report the
            unadapted network's query loss and metrics (one more forward
            pass over every query set). Defaults to `False`.
        recompute_inner_steps: Whether meta-training recomputes each inner
            step's activations in the backward pass (gradient
            checkpointing): memory for many inner steps, for one more
            support forward pass per step. Not with an inner optimiser that
            has learned weights. Defaults to `False`.
        **kwargs: Base `keras.Model` arguments such as `name`.

    Raises:
        TypeError: If `base_model` is not a Keras layer or model.
        ValueError: If `base_model` is not built or has no trainable
            variables, if it contains a normalisation layer with a wrong
            second derivative while `first_order=False`, or if an option
            is out of range (the option is named).

    Example:

    >>> import keras, tfmaml
    >>> net = tfmaml.networks.mlp((1,), 1)
    >>> model = tfmaml.MAML(net, inner_lr=0.01, inner_steps=1)
    >>> model.compile(keras.optimizers.Adam(1e-3), loss="mse")
    >>> data = tfmaml.data.sinusoid(num_shots=10, meta_batch_size=4)
    >>> history = model.fit(data, steps_per_epoch=2, verbose=0)
    >>> sorted(history.history)
    ['loss']

    References:
        Finn, Abbeel and Levine. Model-Agnostic Meta-Learning for Fast
        Adaptation of Deep Networks. ICML 2017.
    """

    def __init__(
        self,
        base_model: keras.layers.Layer,
        inner_lr: float | None = None,
        inner_steps: int = 1,
        *,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        task_loop: str = "map",
        inner_variables: Sequence[str] | None = None,
        inner_optimizer: inner_loop.InnerOptimizer | None = None,
        learn_inner_lr: str | None = None,
        inner_momentum: float | None = None,
        learn_inner_momentum: bool = False,
        multi_step_loss_steps: int = 0,
        first_order_steps: int = 0,
        pre_metrics_in_training: bool = False,
        recompute_inner_steps: bool = False,
        **kwargs,
    ):
        super().__init__(
            base_model,
            inner_lr,
            inner_steps,
            eval_inner_steps=eval_inner_steps,
            first_order=first_order,
            inner_variables=inner_variables,
            inner_optimizer=inner_optimizer,
            learn_inner_lr=learn_inner_lr,
            inner_momentum=inner_momentum,
            learn_inner_momentum=learn_inner_momentum,
            first_order_steps=first_order_steps,
            **kwargs,
        )
        if task_loop not in TASK_LOOPS:
            raise ValueError(
                f"`task_loop` must be one of {list(TASK_LOOPS)}. "
                f"Received: task_loop={task_loop!r}"
            )
        self.task_loop = task_loop
        self.multi_step_loss_steps = check_int(
            "multi_step_loss_steps", multi_step_loss_steps, minimum=0
        )
        self.pre_metrics_in_training = check_bool(
            "pre_metrics_in_training", pre_metrics_in_training
        )
        if recompute_inner_steps:
            inner_loop.check_recomputable(self.inner_optimizer)
        self.recompute_inner_steps = bool(recompute_inner_steps)
        self._pre_loss_tracker = keras.metrics.Mean(name="pre_loss")
        self.task_metrics = task_metrics.UNCOMPILED

    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        loss_weights=None,
        metrics=None,
        weighted_metrics=None,
        run_eagerly=False,
        steps_per_execution=1,
        jit_compile=False,
        auto_scale_loss=True,
    ):
        """Configures meta-training; the arguments are `keras.Model`'s.

        Differences from `keras.Model.compile`: `loss` is required and
        applied per task; `loss_weights` is not supported (the base network
        has one output; `ValueError` names both); and `jit_compile` defaults
        to `False` instead of `"auto"`, because XLA's second derivative
        through max-pooling is wrong and XLA is slower for these networks
        on CPU.
        """
        if loss is None:
            raise ValueError(
                "`MAML.compile` needs a `loss`, applied to every task's "
                "support and query sets. Received: loss=None"
            )
        if loss_weights is not None:
            raise ValueError(
                "`loss_weights` is not supported by `MAML`: the base "
                f"network has one output. Received: loss_weights="
                f"{loss_weights!r}"
            )
        # Keras' compiled loss and metrics would see the whole meta-batch as
        # one batch: the per-task hooks below apply them instead.
        super().compile(
            optimizer=optimizer,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            auto_scale_loss=auto_scale_loss,
        )
        self.loss = loss
        self._task_compile_args = {
            "loss": loss,
            "metrics": metrics,
            "weighted_metrics": weighted_metrics,
        }
        self.task_metrics = task_metrics.compile_task_metrics(
            loss, metrics, weighted_metrics
        )

    def get_compile_config(self) -> dict:
        """Keras' compile config, with the per-task loss and metrics."""
        config = super().get_compile_config()
        task_args = keras.saving.serialize_keras_object(self._task_compile_args)
        return {**config, **task_args} if config else config

    def compile_from_config(self, config):
        """Compiles a loaded model with its saved `compile` arguments.

        Keras skips models that override `compile`; this one's `compile`
        takes exactly the arguments Keras saves.
        """
        self.compile(**keras.saving.deserialize_keras_object(config))
        # Optimizer variables must exist before `load_model` restores them.
        self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        if not self.compiled:
            return []
        post = [m for m, _ in self.task_metrics.post]
        pre = [m for m, _ in self.task_metrics.pre]
        return [self._loss_tracker, *post, self._pre_loss_tracker, *pre]

    def train_step(self, data):
        episode = self.episode_from_batch(data)
        gradients, results = self.compute_meta_gradients(episode)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        self.write_back_state(results.state)
        return self.compute_metrics(episode, episode.query_y, results)

    def compute_meta_gradients(
        self, episode: Episode
    ) -> tuple[list[tf.Tensor], TaskResults]:
        """The outer update for one meta-batch: the hook algorithms override.

        MAML's is the gradient of the mean query loss after adaptation with
        respect to `trainable_variables` (through the inner loop, or not
        with `first_order`), each task differentiated inside the task loop.

        Returns:
            The gradients, one per `trainable_variables` entry, and the
            `TaskResults` the metrics are computed from.
        """
        steps = self.inner_steps
        results = self.solve_tasks(
            episode,
            steps=steps,
            first_order=self.first_order_now(),
            training=True,
            gradients_of=self.trainable_variables,
            with_pre_predictions=self.pre_metrics_in_training,
        )
        count = tf.shape(results.loss)[0]
        return self.mean_over_tasks(results.gradients, count), results

    def test_step(self, data):
        episode = self.episode_from_batch(data)
        steps = self.eval_inner_steps
        results = self.solve_tasks(
            episode, steps=steps, first_order=True, training=False
        )
        return self.compute_metrics(episode, episode.query_y, results)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        if not isinstance(x, Mapping):
            return self.base_model(x, training=False)
        if EPISODE_ROWS in x:
            episode = self.episode_from_batch(data)
        else:
            episode = batches.check_episode(x, None, None, require_labels=False)
        return self.solve_tasks(
            episode,
            steps=self.eval_inner_steps,
            first_order=True,
            training=False,
            with_pre_predictions=False,
        ).predictions

    def solve_tasks(
        self,
        episode: Episode,
        *,
        steps: int,
        first_order: bool | tf.Tensor,
        training: bool,
        with_fast_weights: bool = False,
        gradients_of: Sequence[keras.Variable] | None = None,
        with_pre_predictions: bool = True,
        divergence: str | None = "raise",
    ) -> TaskResults:
        """`tfmaml.tasks.solve_tasks` with this model's network, inner
        optimiser and loss (see there for the arguments); in training with
        `multi_step_loss_steps`, the multi-step loss."""
        self._check_compiled()
        batches.check_label_rank(self.base_model, episode, self.label_kind)
        step_weights = (
            self.multi_step_loss_weights(steps)
            if training and self.multi_step_loss_steps and steps > 1
            else None
        )
        return tasks.solve_tasks(
            self.inner_problem(),
            episode,
            steps=steps,
            first_order=first_order,
            training=training,
            step_weights=step_weights,
            gradients_of=gradients_of,
            loss_scale=getattr(self.optimizer, "scale_loss", None),
            with_fast_weights=with_fast_weights,
            with_pre_predictions=with_pre_predictions,
            divergence=divergence,
        )

    def inner_problem(self) -> tasks.InnerProblem:
        """What the inner loop adapts, with which rule and loss."""
        return tasks.InnerProblem(
            network=self.base_model,
            weights=self.base_model.trainable_variables,
            optimizer=self.inner_optimizer,
            adapted=self._adapted,
            loss=lambda y, y_pred, weight: self.compute_loss(
                y=y, y_pred=y_pred, sample_weight=weight
            ),
            task_loop=self.task_loop,
            recompute=self.recompute_inner_steps,
            trained_steps=self.inner_steps,
        )

    def episode_from_batch(self, data) -> Episode:
        """Validates a batch `(x, y[, sample_weight])` as a meta-batch
        (gathering device episodes first, see `gather_episodes_from`);
        raises `ValueError` naming the key whose structure or shape is
        wrong."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, Mapping) and EPISODE_ROWS in x:
            if "source" not in self._untracked:
                raise ValueError(
                    f"The batch holds sampled indices ({sorted(x)}) from "
                    "`tfmaml.data.DeviceEpisodes.indices()`: call "
                    "`model.gather_episodes_from(device_episodes)` first, "
                    "so that the model can gather the episodes."
                )
            x, y = self._untracked["source"].gather(x)
        return batches.check_episode(x, y, sample_weight)

    def gather_episodes_from(self, device_episodes: Any) -> "MAML":
        """Lets `fit`, `evaluate` and `predict` take the index batches of a
        `tfmaml.data.DeviceEpisodes`: each step gathers its episodes from
        the images kept on the device (other batches work as before).
        Returns the model."""
        self._untracked["source"] = device_episodes
        return self

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ) -> tf.Tensor:
        """Keras' loss hook, per task: the mean of the compiled loss's
        per-example values on one task's labels `y` and predictions
        `y_pred` (`[examples, ...]`), weighted by `sample_weight` as Keras
        reduces; applied to each support set in the inner loop and each
        query set in the outer loop. `x` and `training` are unused."""
        self._check_compiled()
        return task_metrics.task_loss(
            self.task_metrics.example_loss, y, y_pred, sample_weight
        )

    def compute_metrics(
        self, x: Episode, y, y_pred: TaskResults, sample_weight=None
    ) -> dict:
        """Keras' metrics hook, per task: updates the loss trackers and
        compiled metrics from the meta-batch `x`'s `TaskResults` `y_pred`
        (`y` and `sample_weight` are `x`'s) and returns the logs."""
        return task_metrics.update_task_metrics(self, x, y_pred)

    def adapt(
        self, support_x, support_y, steps: int | None = None
    ) -> keras.Model:
        """A copy of the base network with the fast weights after `steps`
        (default `eval_inner_steps`) inner steps on one task's support set
        `(support_x [S, ...], support_y [S, ...])`; this model's variables
        are left unchanged. Each call builds a new copy: to adapt to many
        tasks in turn, `adapt_and_predict` costs only the inner loop.
        Raises `ValueError` if `steps` is negative or the shapes do not
        fit the network."""
        steps = self._steps(steps)
        return adaptation.adapted_copy(
            self, support_x, support_y, steps, functions=self.cached_function
        )

    def adapt_and_predict(
        self, support_x, support_y, query_x, steps: int | None = None
    ) -> tf.Tensor:
        """Predictions for `query_x [Q, ...]` after `steps` inner steps on
        `(support_x, support_y)`, as `adapt(...)(query_x)` and the exported
        signature of the same name, without a copy of the network: one
        `tf.function` per step count (`tfmaml.adaptation`)."""
        steps = self._steps(steps)
        return adaptation.adapted_predictions(
            self,
            support_x,
            support_y,
            query_x,
            steps,
            functions=self.cached_function,
        )

    def adapted_weights(self, support_x, support_y, steps: int) -> list:
        """`tfmaml.adaptation.adapted_weights` of this model."""
        return adaptation.adapted_weights(self, support_x, support_y, steps)

    def predict_with_weights(self, weights, x, steps: int = 0) -> tf.Tensor:
        """`tfmaml.adaptation.predict_with_weights` on the base network."""
        return adaptation.predict_with_weights(
            self.base_model, weights, x, steps
        )

    def export(self, filepath: str | os.PathLike, **kwargs) -> None:
        """Exports a SavedModel that adapts itself at serving time, with
        signatures `serving_default` (the meta-learned network) and
        `adapt_and_predict` (the inner loop in the graph, then the query
        predictions). Takes `keras.Model.export`'s `format`, `verbose` and
        `input_signature`, and `preprocessing`: see
        `tfmaml.export.export_model`, which names what it refuses."""
        export.export_model(self, filepath, **kwargs)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "task_loop": self.task_loop,
            "multi_step_loss_steps": self.multi_step_loss_steps,
            "pre_metrics_in_training": self.pre_metrics_in_training,
            "recompute_inner_steps": self.recompute_inner_steps,
        }

    @property
    def label_kind(self) -> labels.LabelKind | None:
        """What the labels are, read off the loss (`None` uncompiled)."""
        return self.task_metrics.label_kind

    def multi_step_loss_weights(self, steps: int) -> tf.Tensor:
        """`tasks.multi_step_loss_weights` at the current meta-step."""
        return tasks.multi_step_loss_weights(
            steps, self.optimizer.iterations, self.multi_step_loss_steps
        )

    def _steps(self, steps):
        self._check_compiled()
        if steps is None:
            return self.eval_inner_steps
        return check_int("steps", steps, minimum=0)

    def _check_compiled(self):
        if not self.compiled:
            raise ValueError(
                "You must call `compile()` with a `loss` before the MAML "
                "model can compute task losses."
            )
