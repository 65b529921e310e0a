"""`MAML`: a Keras model that meta-trains any Keras network with `fit`.

A batch is a meta-batch of tasks (see `MAML`'s docstring for the layout).
`train_step` adapts a copy of the network's weights to every task's support
set (the inner loop, `tfmaml.inner_loop`) and differentiates the query loss of
the adapted weights with respect to the initial weights (the outer loop). The
base network's variables are only written by the optimizer: adaptation works
on tensors passed through `Layer.stateless_call`.
"""

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import keras
import tensorflow as tf

from tfmaml import batches
from tfmaml import inner_loop
from tfmaml import networks
from tfmaml import task_metrics
from tfmaml.batches import EPISODE_KEYS
from tfmaml.batches import QUERY_X
from tfmaml.batches import SUPPORT_X
from tfmaml.batches import SUPPORT_Y
from tfmaml.batches import Episode
from tfmaml.checks import check_int
from tfmaml.data.episodes import EPISODE_ROWS

TASK_LOOPS = ("map", "vectorized", "unrolled")

# Keras layers whose second derivative is wrong (they compute the variance
# with a stop-gradient through the mean; see tfmaml.networks).
_WRONG_SECOND_DERIVATIVE = (
    keras.layers.BatchNormalization,
    keras.layers.GroupNormalization,
)


__all__ = ["EPISODE_KEYS", "Episode", "MAML", "TASK_LOOPS", "TaskResults"]


class TaskResults(NamedTuple):
    """Per-task outputs of the inner and outer loop over a meta-batch.

    Losses are `[tasks]`, predictions `[tasks, queries, ...]`; losses are
    `None` when the batch has no query labels (prediction).
    """

    loss: tf.Tensor | None
    predictions: tf.Tensor
    pre_loss: tf.Tensor | None
    pre_predictions: tf.Tensor
    state: list[tf.Tensor]
    fast_weights: list[tf.Tensor] | None = None
    gradients: list[tf.Tensor] | None = None
    step_statistics: list[tf.Tensor] | None = None


@keras.saving.register_keras_serializable(package="tfmaml")
class MAML(keras.Model):
    """Model-Agnostic Meta-Learning (MAML) around any built Keras network.

    `fit` meta-trains the base network so that `inner_steps` SGD steps on a
    new task's support set give low loss on its query set. Each batch is a
    meta-batch of `B` tasks:

    - `x = {"support_x": [B, S, ...], "support_y": [B, S, ...],
      "query_x": [B, Q, ...]}` and `y = query_y` of shape `[B, Q, ...]`;
    - labels have the rank of the network's output (regression, one-hot)
      or one less (class indices for a sparse loss);
    - an optional `sample_weight` of shape `[B, Q]` weighs query examples.

    The loss and metrics given to `compile` are applied per task: the
    loss's per-example values are averaged over each task's examples (the
    loss object's own `reduction` is not used), then over tasks. Logs
    report the query loss and metrics after adaptation (`loss`,
    `accuracy`, ...) and, in `evaluate` and validation, of the unadapted
    network (`pre_loss`, `pre_accuracy`, ...; in training too with
    `pre_metrics_in_training=True`). `evaluate` and validation adapt with
    `eval_inner_steps`. Regularisation losses of the base network are added
    to both the support and the query loss, evaluated on the weights in use.

    `model(x)` runs the meta-learned base network; `predict` on episode
    batches returns adapted query predictions; `adapt` returns a network
    adapted to one task.

    Args:
        base_model: A built Keras model (Sequential, Functional or
            subclassed) or layer. Its trainable variables are meta-learned.
        inner_lr: The inner-loop SGD learning rate. Defaults to `0.01`.
        inner_steps: Inner SGD steps during meta-training. Defaults to `1`.
        eval_inner_steps: Inner steps in `evaluate`, validation, `predict`
            and `adapt`. Defaults to `inner_steps`.
        first_order: If `True`, the meta-gradient ignores the second
            derivatives of the inner loop (first-order MAML). Defaults to
            `False`.
        task_loop: How the tasks of a meta-batch are computed: `"map"`
            (`tf.map_fn`, one task after another in one graph; works for
            any network), `"vectorized"` (`tf.vectorized_map`, all tasks
            at once; fastest for dense networks) or `"unrolled"` (a Python
            loop in the graph; needs a static meta-batch size and traces
            slowly for deep networks). All give the same result. Defaults
            to `"map"`.
        pre_metrics_in_training: Whether training logs also report the
            unadapted network's query loss and metrics (`pre_loss`, ...).
            It costs one more forward pass over every query set (about
            15% of a Conv4 meta-step). Defaults to `False`; `evaluate`
            and validation always report them.
        recompute_inner_steps: Whether meta-training keeps only each inner
            step's weights and recomputes its activations in the backward
            pass (gradient checkpointing): memory for many inner steps, for
            one more support forward pass per step. Not with learned
            inner-loop hyperparameters. Defaults to `False`.
        **kwargs: Base `keras.Model` arguments such as `name`.

    Raises:
        TypeError: If `base_model` is not a Keras layer or model.
        ValueError: If `base_model` is not built or has no trainable
            variables, if it contains a normalisation layer with a wrong
            second derivative while `first_order=False`, or if a
            hyperparameter is out of range.

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
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        *,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        task_loop: str = "map",
        inner_variables: Sequence[str] | None = None,
        learn_inner_lr: str | None = None,
        inner_momentum: float | None = None,
        learn_inner_momentum: bool = False,
        multi_step_loss_steps: int = 0,
        first_order_steps: int = 0,
        pre_metrics_in_training: bool = False,
        recompute_inner_steps: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_base_model(base_model, first_order=first_order)
        self.base_model = base_model
        self.inner_lr = _check_learning_rate("inner_lr", inner_lr)
        self.inner_steps = _check_steps("inner_steps", inner_steps)
        self.eval_inner_steps = (
            self.inner_steps
            if eval_inner_steps is None
            else _check_steps("eval_inner_steps", eval_inner_steps)
        )
        if not isinstance(first_order, bool):
            raise TypeError(
                f"`first_order` must be a bool. "
                f"Received: first_order={first_order!r}"
            )
        self.first_order = first_order
        if task_loop not in TASK_LOOPS:
            raise ValueError(
                f"`task_loop` must be one of {list(TASK_LOOPS)}. "
                f"Received: task_loop={task_loop!r}"
            )
        self.task_loop = task_loop
        self.inner_variables = (
            None if inner_variables is None else list(inner_variables)
        )
        self._adapted = _adapted_mask(base_model, self.inner_variables)
        self.learn_inner_lr = learn_inner_lr
        self.inner_momentum = inner_momentum
        self.learn_inner_momentum = learn_inner_momentum
        self.multi_step_loss_steps = _check_steps(
            "multi_step_loss_steps", multi_step_loss_steps
        )
        self.first_order_steps = _check_steps(
            "first_order_steps", first_order_steps
        )
        if not isinstance(pre_metrics_in_training, bool):
            raise TypeError(
                "`pre_metrics_in_training` must be a bool. Received: "
                f"pre_metrics_in_training={pre_metrics_in_training!r}"
            )
        self.pre_metrics_in_training = pre_metrics_in_training
        if recompute_inner_steps and (learn_inner_lr or learn_inner_momentum):
            raise ValueError(
                "`recompute_inner_steps=True` cannot be combined with learned "
                "inner-loop hyperparameters (`tf.recompute_grad` would drop "
                "their gradients). Received: learn_inner_lr="
                f"{learn_inner_lr!r}, learn_inner_momentum="
                f"{learn_inner_momentum!r}"
            )
        self.recompute_inner_steps = bool(recompute_inner_steps)
        self._create_inner_variables()
        self._pre_loss_tracker = keras.metrics.Mean(name="pre_loss")
        self._task_metrics = task_metrics.TaskMetrics((), ())
        self._adapt_functions = _Untracked()
        self._device_episodes = _Untracked()
        # train_step never calls self(...), so Keras would never mark the
        # wrapper built; the base network is built, so the wrapper is too.
        self.built = True

    def call(self, inputs, training=None):
        """Runs the meta-learned (unadapted) base network."""
        return self.base_model(inputs, training=training)

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
        has one output); and `jit_compile` defaults to `False` instead of
        `"auto"`, because XLA's second derivative through max-pooling is
        wrong and XLA is slower for these networks on CPU. Pass
        `jit_compile=True` to opt in.

        Raises:
            ValueError: If `loss` is missing or `loss_weights` is given.
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
        super().compile(
            optimizer=optimizer,
            loss=loss,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            auto_scale_loss=auto_scale_loss,
        )
        self._example_loss = task_metrics.per_example_loss(loss)
        self._task_metrics = task_metrics.TaskMetrics(
            post=task_metrics.build_metrics(
                metrics, weighted_metrics, prefix=""
            ),
            pre=task_metrics.build_metrics(
                metrics, weighted_metrics, prefix="pre_"
            ),
        )
        # Keras' compiled loss and metrics would see the whole meta-batch as
        # one batch; tfmaml applies the loss and metrics per task itself.
        # The compile config above still records them for saving.
        self._compile_loss = None
        self._compile_metrics = None

    def compile_from_config(self, config):
        """Compiles a loaded model with its saved `compile` arguments.

        Keras skips models that override `compile`; this one's `compile`
        takes exactly the arguments Keras saves.
        """
        self.compile(**keras.saving.deserialize_keras_object(config))
        # Optimizer variables must exist before `load_model` restores them.
        self.optimizer.build(self.trainable_variables)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds the model, compiled loss and metrics symbolically from
        # a first batch here, reducing that batch across workers, which
        # fails for a dict under MultiWorkerMirroredStrategy. A MAML model is
        # built at construction and builds its metrics in `compile`: only
        # the optimizer is left to build, under the model's strategy.
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        if not self.compiled:
            return []
        post = [m for m, _ in self._task_metrics.post]
        pre = [m for m, _ in self._task_metrics.pre]
        return [self._loss_tracker, *post, self._pre_loss_tracker, *pre]

    def train_step(self, data):
        episode = self.episode_from_batch(data)
        weights = self.trainable_variables
        results = self.solve_tasks(
            episode,
            steps=self.inner_steps,
            first_order=self._first_order_now(),
            training=True,
            gradients_of=weights,
            with_pre_predictions=self.pre_metrics_in_training,
        )
        # The optimizer sums the replicas' gradients under tf.distribute;
        # dividing by their count too makes the update the meta-batch mean.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        tasks = tf.shape(results.loss)[0] * replicas
        gradients = [g / tf.cast(tasks, g.dtype) for g in results.gradients]
        self.optimizer.apply_gradients(zip(gradients, weights, strict=True))
        self._write_back_state(results)
        return self._update_metrics(episode, results)

    def test_step(self, data):
        episode = self.episode_from_batch(data)
        results = self.solve_tasks(
            episode,
            steps=self.eval_inner_steps,
            first_order=True,
            training=False,
        )
        return self._update_metrics(episode, results)

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
        ).predictions

    def solve_tasks(
        self,
        episode: Episode,
        *,
        steps: int,
        first_order: bool,
        training: bool,
        with_fast_weights: bool = False,
        gradients_of: Sequence[keras.Variable] | None = None,
        with_pre_predictions: bool = True,
    ) -> TaskResults:
        """Adapts to every task of a meta-batch and predicts its queries.

        Differentiable with respect to the base network's variables, which
        are read here (so call it inside the outer tape), or, faster, give
        `gradients_of` to have each task differentiated inside the task
        loop, as `train_step` does.

        Args:
            episode: The meta-batch, from `Episode`.
            steps: Inner SGD steps per task.
            first_order: Whether inner gradients are constants.
            training: The `training` flag passed to the base network.
            with_fast_weights: Whether to return every task's adapted
                weights (`[tasks, ...]` each). Defaults to `False`.
            gradients_of: Variables to differentiate each task's query loss
                (scaled by the optimizer's `scale_loss`) with respect to,
                inside the loop over tasks. The results' `gradients` are
                the sums over tasks. Each task's backward pass then runs
                next to its forward pass: no activations of the whole
                meta-batch are kept, and the gradient of the task loop is
                never built (TensorFlow's oneDNN kernels do not reach into
                it: 2x2 max-pooling's gradient there is 4x slower).
                Needs query labels. Defaults to `None`.
            with_pre_predictions: Whether to predict the queries with the
                unadapted network too (`pre_loss`, `pre_predictions`;
                otherwise `None`). Defaults to `True`.

        Returns:
            A `TaskResults` with per-task losses and predictions.
        """
        batches.check_label_rank(self.base_model, episode)
        has_labels = episode.query_y is not None
        if gradients_of is not None and not has_labels:
            raise ValueError(
                "`gradients_of` needs query labels (`query_y`) to "
                "differentiate the query loss."
            )
        state = self._state()
        step_weights = (
            self.multi_step_loss_weights(steps)
            if training and self.multi_step_loss_steps and steps > 1
            else None
        )
        elems = {
            "support_x": episode.support_x,
            "support_y": episode.support_y,
            "query_x": episode.query_x,
        }
        if has_labels:
            elems["query_y"] = episode.query_y
        if episode.sample_weight is not None:
            elems["sample_weight"] = episode.sample_weight

        def read_parameters():
            weights = [tf.convert_to_tensor(v) for v in self._weights()]
            return weights, self._inner_optimizer()

        def task_outputs(task, weights, optimizer):
            trajectory = inner_loop.adaptation_trajectory(
                lambda w, x, y: self._support_loss(w, state, x, y, training),
                weights,
                task["support_x"],
                task["support_y"],
                steps=steps,
                optimizer=optimizer,
                first_order=first_order,
                adapted=self._adapted,
                recompute=training and self.recompute_inner_steps,
            )
            with inner_loop.step_scope(steps):
                predictions, new_state, penalty = self._forward(
                    trajectory[-1], state, task["query_x"], training
                )
            outputs = {"predictions": predictions, "state": new_state}
            if with_pre_predictions:
                with inner_loop.step_scope(0):
                    pre_predictions, _, pre_penalty = self._forward(
                        weights, state, task["query_x"], training
                    )
                pre_predictions = tf.stop_gradient(pre_predictions)
                outputs["pre_predictions"] = pre_predictions
            if with_fast_weights:
                outputs["fast_weights"] = trajectory[-1]
            if has_labels:
                weight = task.get("sample_weight")
                outputs["loss"] = penalty + self.task_loss(
                    task["query_y"], predictions, weight
                )
                if step_weights is not None:
                    outputs["loss"] = self._multi_step_loss(
                        trajectory, step_weights, outputs["loss"], task, state
                    )
                if with_pre_predictions:
                    outputs["pre_loss"] = tf.stop_gradient(
                        pre_penalty
                        + self.task_loss(
                            task["query_y"], pre_predictions, weight
                        )
                    )
            return outputs

        if gradients_of is None:
            parameters = read_parameters()

            def solve_task(task):
                return task_outputs(task, *parameters)

        else:
            gradients_of = list(gradients_of)

            def solve_task(task):
                # The parameters are read inside the tape, in the loop body,
                # so that the tape sees the variables themselves.
                with tf.GradientTape() as tape:
                    outputs = task_outputs(task, *read_parameters())
                    loss = outputs["loss"]
                    if self.optimizer is not None:
                        loss = self.optimizer.scale_loss(loss)
                gradients = tape.gradient(loss, gradients_of)
                # Frozen paths and unused variables get zeros. (The tape's
                # own `UnconnectedGradients.ZERO` fails on Keras variables
                # inside the loop body: their dtype is a string.)
                outputs["gradients"] = [
                    tf.zeros(v.shape, tf.as_dtype(v.dtype)) if g is None else g
                    for v, g in zip(gradients_of, gradients, strict=True)
                ]
                outputs["predictions"] = tf.stop_gradient(
                    outputs["predictions"]
                )
                return outputs

        spec = self._output_signature(
            episode.query_x, has_labels, with_pre_predictions
        )
        step_norms = self._step_norms if training else []
        if step_norms:
            solve_task = self._recording_step_statistics(solve_task)
            spec["step_statistics"] = [
                tf.TensorSpec(v.shape, tf.as_dtype(v.dtype))
                for layer in step_norms
                for v in (layer.moving_mean, layer.moving_variance)
            ]
        if with_fast_weights:
            spec["fast_weights"] = [
                tf.TensorSpec(v.shape, tf.as_dtype(v.dtype))
                for v in self._weights()
            ]
        if gradients_of is not None:
            spec["gradients"] = [
                tf.TensorSpec(v.shape, tf.as_dtype(v.dtype))
                for v in gradients_of
            ]
        outputs = _map_tasks(self.task_loop, solve_task, elems, spec)
        gradients = outputs.get("gradients")
        if gradients is not None:
            gradients = [tf.reduce_sum(g, axis=0) for g in gradients]
        return TaskResults(
            loss=outputs.get("loss"),
            predictions=outputs["predictions"],
            pre_loss=outputs.get("pre_loss"),
            pre_predictions=outputs.get("pre_predictions"),
            state=outputs["state"],
            fast_weights=outputs.get("fast_weights"),
            gradients=gradients,
            step_statistics=outputs.get("step_statistics"),
        )

    def episode_from_batch(self, data) -> Episode:
        """Validates a batch `(x, y[, sample_weight])` as a meta-batch.

        Raises:
            ValueError: Naming the key or argument whose structure or shape
                does not fit the batch layout of the class docstring.
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, Mapping) and EPISODE_ROWS in x:
            if "source" not in self._device_episodes:
                raise ValueError(
                    f"The batch holds sampled indices ({sorted(x)}) from "
                    "`tfmaml.data.DeviceEpisodes.indices()`: call "
                    "`model.gather_episodes_from(device_episodes)` first, "
                    "so that the model can gather the episodes."
                )
            x, y = self._device_episodes["source"].gather(x)
        return batches.check_episode(x, y, sample_weight)

    def gather_episodes_from(self, device_episodes) -> "MAML":
        """Lets `fit`, `evaluate` and `predict` take the index batches of a
        `tfmaml.data.DeviceEpisodes`: each step gathers its episodes from
        the images kept on the device. Other batches work as before (e.g.
        validation on `tfmaml.data.episodes`). Returns the model."""
        self._device_episodes["source"] = device_episodes
        return self

    def task_loss(self, y_true, y_pred, sample_weight=None) -> tf.Tensor:
        """The compiled loss of one task: the mean of per-example values.

        Args:
            y_true: One task's labels, `[examples, ...]`.
            y_pred: The network's predictions for them.
            sample_weight: Optional `[examples]` weights; the result is
                `sum(weight * loss) / examples`, as Keras reduces.

        Returns:
            A scalar tensor.
        """
        if not self.compiled:
            raise ValueError(
                "You must call `compile()` with a `loss` before the MAML "
                "model can compute task losses."
            )
        values = tf.convert_to_tensor(self._example_loss(y_true, y_pred))
        values = tf.cast(values, y_pred.dtype)
        if sample_weight is not None:
            weight = tf.cast(sample_weight, values.dtype)
            weight = tf.reshape(weight, [-1] + [1] * (values.shape.rank - 1))
            values = values * weight
        return tf.reduce_mean(values)

    def adapt(
        self,
        support_x,
        support_y,
        steps: int | None = None,
    ) -> keras.Model:
        """Returns a copy of the base network adapted to one task.

        The copy has the base network's architecture and the fast weights
        after `steps` inner SGD steps on `(support_x, support_y)`; this
        model's variables are left unchanged.

        Args:
            support_x: One task's support inputs, `[S, ...]`.
            support_y: Their labels, `[S, ...]`.
            steps: Inner steps. Defaults to `eval_inner_steps`.

        Returns:
            A built Keras model.

        Raises:
            ValueError: If `steps` is negative or the support set's shapes
                do not fit the network.
        """
        steps = (
            self.eval_inner_steps
            if steps is None
            else _check_steps("steps", steps)
        )
        support_x = tf.convert_to_tensor(support_x)
        support_y = tf.convert_to_tensor(support_y)
        # Reuse the meta-batch checks on a batch of one task.
        episode = batches.check_episode(
            {
                SUPPORT_X: support_x[None],
                SUPPORT_Y: support_y[None],
                QUERY_X: support_x[None],
            },
            support_y[None],
            None,
        )
        batches.check_label_rank(self.base_model, episode)
        if steps not in self._adapt_functions:
            self._adapt_functions[steps] = tf.function(
                lambda x, y: self.adapted_weights(x, y, steps),
                reduce_retracing=True,
            )
        fast = self._adapt_functions[steps](support_x, support_y)
        adapted = self._clone_with_weights(fast, support_x)
        for layer in _step_norms(adapted):
            layer.default_step = steps  # Outside any inner loop.
        return adapted

    def adapted_weights(self, support_x, support_y, steps: int) -> list:
        """The fast weights after `steps` inner steps on one task's support
        set, as tensors (first order: no second-order graph is kept).

        The graph-level form of `adapt`, used by the exported
        `adapt_and_predict` signature.
        """
        weights = [tf.convert_to_tensor(v) for v in self._weights()]
        state = self._state()
        return inner_loop.adapt(
            lambda w, x, y: self._support_loss(w, state, x, y, False),
            weights,
            support_x,
            support_y,
            steps=steps,
            optimizer=self._inner_optimizer(),
            first_order=True,
            adapted=self._adapted,
        )

    def predict_with_weights(self, weights, x, steps: int = 0) -> tf.Tensor:
        """Runs the base network in inference mode on other weights (for
        example `adapted_weights` after `steps` inner steps, which selects
        per-step layers' parameters), leaving its variables untouched."""
        with inner_loop.step_scope(steps):
            predictions, _, _ = self._forward(weights, self._state(), x, False)
        return predictions

    def export(
        self,
        filepath,
        format="tf_saved_model",
        verbose=None,
        input_signature=None,
        preprocessing=None,
        **kwargs,
    ):
        """Exports a SavedModel that adapts itself at serving time.

        Signatures: `serving_default` (the meta-learned network) and
        `adapt_and_predict` (the inner loop in the graph, then query
        predictions); see `tfmaml.export`.

        Args:
            filepath: The SavedModel directory.
            format: Only `"tf_saved_model"`.
            verbose: Whether to print the signatures.
            input_signature: Optional `tf.TensorSpec` of a batch of served
                inputs, `[None, ...]`; needed for subclassed base networks
                and with `preprocessing`.
            preprocessing: Optional Keras model applied to served inputs
                before the network (e.g. `tfmaml.data.preprocessing`).
            **kwargs: Not supported; named in the error.

        Raises:
            ValueError: For another `format` or unknown arguments.
        """
        if format != "tf_saved_model":
            raise ValueError(
                "`MAML.export` writes TensorFlow SavedModels only. "
                f"Received: format={format!r}"
            )
        if kwargs:
            raise ValueError(
                f"Unknown arguments to `MAML.export`: {sorted(kwargs)}"
            )
        from tfmaml import export  # The exporter builds on this module.

        export.export_saved_model(
            self,
            filepath,
            example_shape=(
                None
                if input_signature is None
                else tuple(input_signature.shape[1:])
            ),
            dtype=(
                "float32"
                if input_signature is None
                else tf.as_dtype(input_signature.dtype).name
            ),
            preprocessing=preprocessing,
            verbose=bool(verbose),
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "base_model": keras.saving.serialize_keras_object(self.base_model),
            "inner_lr": self.inner_lr,
            "inner_steps": self.inner_steps,
            "eval_inner_steps": self.eval_inner_steps,
            "first_order": self.first_order,
            "task_loop": self.task_loop,
            "inner_variables": self.inner_variables,
            "learn_inner_lr": self.learn_inner_lr,
            "inner_momentum": self.inner_momentum,
            "learn_inner_momentum": self.learn_inner_momentum,
            "multi_step_loss_steps": self.multi_step_loss_steps,
            "first_order_steps": self.first_order_steps,
            "pre_metrics_in_training": self.pre_metrics_in_training,
            "recompute_inner_steps": self.recompute_inner_steps,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        base_model = keras.saving.deserialize_keras_object(
            config.pop("base_model"), custom_objects=custom_objects
        )
        return cls(base_model, **config)

    def multi_step_loss_weights(self, steps: int) -> tf.Tensor:
        """MAML++'s annealed weights of the query losses after each step.

        They start uniform (`1/steps` each) and move linearly, over
        `multi_step_loss_steps` meta-steps, to all weight on the last step;
        the other steps keep a floor of `0.03/steps`, as in Antoniou et al.
        (2019). Read at the optimizer's current iteration.

        Returns:
            A `[steps]` tensor that sums to 1.
        """
        progress = tf.minimum(
            tf.cast(self.optimizer.iterations, tf.float32)
            / float(max(self.multi_step_loss_steps, 1)),
            1.0,
        )
        early = tf.maximum((1.0 - progress) / steps, 0.03 / steps)
        early = tf.fill([steps - 1], early)
        return tf.concat([early, [1.0 - tf.reduce_sum(early)]], axis=0)

    # Internals.

    def _create_inner_variables(self):
        """Creates the meta-learned inner-loop hyperparameters."""
        adapted = [
            v for v, a in zip(self._weights(), self._adapted, strict=True) if a
        ]
        self._element_rates = None
        self._step_rates = None
        self._momentum = None
        if self.learn_inner_lr == "per_parameter":
            self._element_rates = [
                self.add_weight(
                    shape=v.shape,
                    initializer=keras.initializers.Constant(self.inner_lr),
                    name=f"inner_lr_{i}",
                )
                for i, v in enumerate(adapted)
            ]
        elif self.learn_inner_lr == "per_layer_per_step":
            if self.inner_steps == 0:
                raise ValueError(
                    "`learn_inner_lr='per_layer_per_step'` learns a rate per "
                    "inner step and needs `inner_steps` >= 1. Received: "
                    "inner_steps=0"
                )
            self._step_rates = self.add_weight(
                shape=(self.inner_steps, len(adapted)),
                initializer=keras.initializers.Constant(self.inner_lr),
                name="inner_lr_per_step",
            )
        elif self.learn_inner_lr is not None:
            raise ValueError(
                "`learn_inner_lr` must be None, 'per_parameter' (Meta-SGD) "
                "or 'per_layer_per_step' (MAML++). Received: "
                f"learn_inner_lr={self.learn_inner_lr!r}"
            )
        if self.inner_momentum is None:
            if self.learn_inner_momentum:
                raise ValueError(
                    "`learn_inner_momentum=True` needs an initial "
                    "`inner_momentum`. Received: inner_momentum=None"
                )
            return
        if not 0.0 <= self.inner_momentum < 1.0:
            raise ValueError(
                "`inner_momentum` must be in [0, 1). Received: "
                f"inner_momentum={self.inner_momentum!r}"
            )
        if self.learn_inner_momentum:
            self._momentum = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(self.inner_momentum),
                name="inner_momentum",
            )

    def _inner_optimizer(self) -> inner_loop.InnerOptimizer:
        """The inner update rule, reading learned hyperparameters (call it
        inside the outer tape)."""
        if self._element_rates is not None:
            rates = [tf.convert_to_tensor(r) for r in self._element_rates]

            def rate(step, index):
                return rates[index]

        elif self._step_rates is not None:
            table = tf.convert_to_tensor(self._step_rates)
            last = self.inner_steps - 1

            def rate(step, index):
                return table[min(step, last), index]

        else:
            rate = self.inner_lr
        if self.inner_momentum is None:
            return inner_loop.SGD(rate)
        momentum = (
            self.inner_momentum
            if self._momentum is None
            else tf.convert_to_tensor(self._momentum)
        )
        return inner_loop.Momentum(rate, momentum)

    def _first_order_now(self):
        """`first_order`, or, with derivative-order annealing, a tensor that
        is true for the first `first_order_steps` meta-steps."""
        if self.first_order or not self.first_order_steps:
            return self.first_order
        return self.optimizer.iterations < self.first_order_steps

    def _multi_step_loss(
        self, trajectory, step_weights, last_loss, task, state
    ):
        """The weighted sum of the query losses after every inner step."""
        losses = []
        for step, fast in enumerate(trajectory[1:-1], start=1):
            with inner_loop.step_scope(step):
                predictions, _, penalty = self._forward(
                    fast, state, task["query_x"], True
                )
            losses.append(
                penalty
                + self.task_loss(
                    task["query_y"], predictions, task.get("sample_weight")
                )
            )
        losses.append(last_loss)
        return tf.reduce_sum(
            tf.cast(step_weights, last_loss.dtype) * tf.stack(losses)
        )

    def _weights(self) -> list:
        """The variables the inner loop adapts and the outer loop learns."""
        return self.base_model.trainable_variables

    def _forward(self, weights, state, x, training):
        """Runs the base network on `weights`; returns outputs, state, and
        the sum of its regularisation losses on those weights."""
        outputs, new_state, losses = self.base_model.stateless_call(
            weights, state, x, training=training, return_losses=True
        )
        if outputs.dtype in (tf.float16, tf.bfloat16):
            # Mixed precision: losses and their gradients in float32.
            outputs = tf.cast(outputs, tf.float32)
        penalty = tf.add_n(losses) if losses else 0.0
        return outputs, new_state, tf.cast(penalty, outputs.dtype)

    def _state(self):
        return [
            tf.convert_to_tensor(v)
            for v in self.base_model.non_trainable_variables
        ]

    def _support_loss(self, weights, state, x, y, training):
        predictions, _, penalty = self._forward(weights, state, x, training)
        return penalty + self.task_loss(y, predictions)

    def _clone_with_weights(self, fast, example_x):
        clone = keras.models.clone_model(self.base_model)
        if not clone.built:
            clone(example_x)
        targets = clone.trainable_variables
        if [v.shape for v in targets] != [w.shape for w in fast]:
            raise ValueError(
                "`keras.models.clone_model` gave a copy of the base network "
                f"whose trainable variables {[v.path for v in targets]} do "
                "not match the original's; give the base network a "
                "`get_config` that rebuilds it exactly."
            )
        for variable, value in zip(targets, fast, strict=True):
            variable.assign(value)
        for variable, source in zip(
            clone.non_trainable_variables,
            self.base_model.non_trainable_variables,
            strict=True,
        ):
            variable.assign(source)
        return clone

    def _output_signature(self, query_x, has_labels, with_pre_predictions):
        """The `fn_output_signature` of one task for `tf.map_fn`."""
        spec = self.base_model.compute_output_spec(
            keras.KerasTensor(query_x.shape[1:], dtype=query_x.dtype.name)
        )
        dtype = tf.as_dtype(spec.dtype)
        if dtype in (tf.float16, tf.bfloat16):
            dtype = tf.float32  # As `_forward` casts them.
        prediction = tf.TensorSpec(None, dtype)
        signature = {
            "predictions": prediction,
            "state": [
                tf.TensorSpec(None, tf.as_dtype(v.dtype))
                for v in self.base_model.non_trainable_variables
            ],
        }
        if has_labels:
            signature["loss"] = tf.TensorSpec([], prediction.dtype)
        if with_pre_predictions:
            signature["pre_predictions"] = prediction
            if has_labels:
                signature["pre_loss"] = tf.TensorSpec([], prediction.dtype)
        return signature

    def _write_back_state(self, results):
        """Keeps the base network's non-trainable state (e.g. Keras
        BatchNorm moving statistics) up to date, as `fit` would: floats
        take the mean over tasks, other state (seeds) the first task's.
        Then moves per-step batch norm statistics towards the meta-batch's.
        """
        for variable, values in zip(
            self.base_model.non_trainable_variables, results.state, strict=True
        ):
            if variable.dtype.startswith("float"):
                variable.assign(tf.reduce_mean(values, axis=0))
            else:
                variable.assign(values[0])
        if results.step_statistics is None:
            return
        statistics = iter(results.step_statistics)
        for layer in self._step_norms:
            for variable in (layer.moving_mean, layer.moving_variance):
                batch = tf.reduce_mean(next(statistics), axis=0)
                variable.assign(
                    layer.momentum * variable + (1.0 - layer.momentum) * batch
                )

    @property
    def _step_norms(self) -> list:
        """The base network's per-step batch norm layers (MAML++)."""
        return _step_norms(self.base_model)

    def _recording_step_statistics(self, solve_task):
        """Wraps `solve_task` to also return, per per-step batch norm
        layer, the batch mean and variance each row saw (the first time;
        rows no pass used keep their moving statistics)."""

        def solve_and_record(task):
            with networks.recording_batch_statistics() as records:
                outputs = solve_task(task)
            statistics = []
            for layer in self._step_norms:
                moving = (
                    tf.convert_to_tensor(layer.moving_mean),
                    tf.convert_to_tensor(layer.moving_variance),
                )
                for which in range(2):
                    rows = [
                        records[(id(layer), row)][which]
                        if (id(layer), row) in records
                        else moving[which][row]
                        for row in range(layer.num_steps + 1)
                    ]
                    statistics.append(tf.stack(rows))
            outputs["step_statistics"] = statistics
            return outputs

        return solve_and_record

    def _update_metrics(self, episode, results):
        tasks = tf.shape(results.loss)[0]
        self._loss_tracker.update_state(
            tf.reduce_mean(results.loss), sample_weight=tasks
        )
        with_pre = results.pre_predictions is not None
        if with_pre:
            self._pre_loss_tracker.update_state(
                tf.reduce_mean(results.pre_loss), sample_weight=tasks
            )
        y_true = batches.merge_task_axis(episode.query_y)
        weight = (
            None
            if episode.sample_weight is None
            else batches.merge_task_axis(episode.sample_weight)
        )
        for metrics, predictions in (
            (self._task_metrics.post, results.predictions),
            (self._task_metrics.pre, results.pre_predictions),
        ):
            if predictions is None:
                continue
            y_pred = batches.merge_task_axis(predictions)
            for metric, weighted in metrics:
                metric.update_state(
                    y_true, y_pred, sample_weight=weight if weighted else None
                )
        logs = self.get_metrics_result()
        if not with_pre:
            # Keras then reports these logs rather than every metric's.
            pre = {self._pre_loss_tracker.name}
            pre.update(m.name for m, _ in self._task_metrics.pre)
            logs = {k: v for k, v in logs.items() if k not in pre}
        if isinstance(
            tf.distribute.get_strategy(),
            tf.distribute.MultiWorkerMirroredStrategy,
        ):
            # Keras reduces step logs across workers with
            # `strategy.reduce("MEAN", log, axis=0)`, which fails for scalars
            # (tensorflow#72388); as 1-vectors they reduce to the mean.
            logs = {
                name: tf.reshape(value, [1]) for name, value in logs.items()
            }
        return logs


class _Untracked:
    """A dict out of sight of Keras and SavedModel tracking, for objects the
    model uses but must not save: `tf.function`s by key (a dict attribute
    would be tracked, and its int keys refused on export), the
    `DeviceEpisodes` it gathers from (its images are no weights)."""

    def __init__(self):
        self._items = {}

    def __contains__(self, key):
        return key in self._items

    def __getitem__(self, key):
        return self._items[key]

    def __setitem__(self, key, value):
        self._items[key] = value


def _step_norms(network) -> list:
    return [
        layer
        for layer in network._flatten_layers(include_self=True)
        if isinstance(layer, networks.BatchNormalization)
        and layer.num_steps is not None
    ]


def _map_tasks(task_loop, fn, elems, signature):
    """Applies `fn` to every task (slice along axis 0) of `elems`."""
    if task_loop == "map":
        return tf.map_fn(fn, elems, fn_output_signature=signature)
    if task_loop == "vectorized":
        return tf.vectorized_map(fn, elems)
    tasks = elems["support_x"].shape[0]
    if tasks is None:
        raise ValueError(
            "`task_loop='unrolled'` needs a static number of tasks per "
            "meta-batch (batch with `drop_remainder=True`). Received: "
            f"support_x.shape={elems['support_x'].shape}"
        )
    outputs = [
        fn({key: value[i] for key, value in elems.items()})
        for i in range(tasks)
    ]
    return tf.nest.map_structure(lambda *t: tf.stack(t), *outputs)


def _adapted_mask(base_model, layer_names):
    """One flag per trainable variable of `base_model`: whether the inner
    loop adapts it (all, or those of the layers named)."""
    variables = base_model.trainable_variables
    if layer_names is None:
        return [True] * len(variables)
    layers = {
        layer.name: layer
        for layer in base_model._flatten_layers(include_self=False)
    }
    unknown = [n for n in layer_names if n not in layers]
    if unknown:
        raise ValueError(
            f"`inner_variables` names layers {unknown} that are not in "
            f"`base_model`; its layers are {sorted(layers)}."
        )
    chosen = {id(v) for n in layer_names for v in layers[n].trainable_variables}
    if not chosen:
        raise ValueError(
            f"The layers {list(layer_names)} named by `inner_variables` have "
            "no trainable variables for the inner loop to adapt."
        )
    return [id(v) in chosen for v in variables]


def _check_base_model(base_model, *, first_order):
    if not isinstance(base_model, keras.layers.Layer):
        raise TypeError(
            "`base_model` must be a Keras model or layer. Received: "
            f"base_model={base_model!r} of type {type(base_model).__name__}"
        )
    if not base_model.built:
        raise ValueError(
            "`base_model` must be built, so that its variables exist. Give "
            "it a `keras.Input`, or call `base_model.build(input_shape)` or "
            f"`base_model(x)` first. Received: base_model={base_model.name} "
            "(not built)"
        )
    if not base_model.trainable_variables:
        raise ValueError(
            "`base_model` has no trainable variables to meta-learn. "
            f"Received: base_model={base_model.name}"
        )
    if first_order:
        return
    for layer in base_model._flatten_layers(include_self=True):
        if isinstance(layer, _WRONG_SECOND_DERIVATIVE):
            raise ValueError(
                f"`base_model` contains `{type(layer).__name__}` layer "
                f"'{layer.name}', whose second derivative Keras computes "
                "wrongly (the variance stops the gradient through the mean)"
                ", which would make the second-order meta-gradient wrong. "
                "Use `tfmaml.networks.BatchNormalization` (or "
                "`keras.layers.LayerNormalization`), or pass "
                "`first_order=True`."
            )


def _check_learning_rate(name, value):
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be a number. Received: {name}={value!r}"
        ) from None
    if not rate > 0 or rate == float("inf"):
        raise ValueError(
            f"`{name}` must be a finite number > 0. Received: {name}={value!r}"
        )
    return rate


def _check_steps(name, value):
    return check_int(name, value, minimum=0)
