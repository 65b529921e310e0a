"""Solving a meta-batch of tasks: the inner loop per task, then its queries.

`solve_tasks` is a free function over a meta-batch: for every task it adapts
the network's weights to the support set (`tfmaml.inner_loop`), predicts the
query set with the adapted weights and scores it. `tfmaml.MAML`'s
`train_step`, `test_step` and `predict_step`, the evaluation and the
benchmarks call it; the parts it is built from (`map_tasks`,
`differentiated_per_task`, `run_network`) serve any other model that loops
over tasks, such as the meta-RL model.

The network runs in a `keras.StatelessScope` on weight tensors, so no
variable is written while tasks are solved. Its non-trainable state (batch
norm statistics, seeds) is threaded through each task's passes in order
(support step 0, 1, ..., then the query pass) and returned per task; the
caller decides what to write back.
"""

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import keras
import tensorflow as tf

from tfmaml import divergence as divergence_checks
from tfmaml import inner_loop
from tfmaml.batches import QUERY_X
from tfmaml.batches import QUERY_Y
from tfmaml.batches import SAMPLE_WEIGHT
from tfmaml.batches import SUPPORT_X
from tfmaml.batches import SUPPORT_Y
from tfmaml.batches import Episode
from tfmaml.batches import example_spec
from tfmaml.bias_gradients import summed_bias_gradients
from tfmaml.cancelled_biases import as_constants
from tfmaml.folded_batch_norm import folding

TASK_LOOPS = ("map", "vectorized", "unrolled")

# `loss(y_true, y_pred, sample_weight)` -> one task's scalar loss.
TaskLoss = Callable[[tf.Tensor, tf.Tensor, tf.Tensor | None], tf.Tensor]


class TaskResults(NamedTuple):
    """Per-task outputs of the inner and outer loop over a meta-batch.

    Losses are `[tasks]`, predictions `[tasks, queries, ...]`; losses are
    `None` when the batch has no query labels (prediction), pre-adaptation
    fields `None` unless asked for.
    """

    loss: tf.Tensor | None
    predictions: tf.Tensor
    pre_loss: tf.Tensor | None
    pre_predictions: tf.Tensor | None
    state: list[tf.Tensor]
    fast_weights: list[tf.Tensor] | None = None
    gradients: list[tf.Tensor] | None = None
    diverged_at: tf.Tensor | None = None


class InnerProblem(NamedTuple):
    """What `solve_tasks` needs to know of a model.

    Attributes:
        network: The base network, run in a `keras.StatelessScope`.
        weights: Its trainable variables (or tensors), in order.
        optimizer: The inner update rule (`inner_loop.InnerOptimizer`).
        adapted: One flag per weight: whether the inner loop adapts it.
        loss: One task's loss, `loss(y_true, y_pred, sample_weight)`.
        task_loop: `"map"`, `"vectorized"` or `"unrolled"` (see
            `map_tasks`).
        recompute: Whether training recomputes inner steps in the
            backward pass (see `inner_loop.adaptation_trajectory`).
        trained_steps: The inner steps the model was meta-trained with
            (named in divergence errors), if known.
        initialize: Optional `initialize(weights, support_x, support_y,
            state, training) -> weights`: each task's starting weights,
            from the initial ones and its support set (Proto-MAML's head
            from the prototypes). Differentiated like the rest.
    """

    network: keras.layers.Layer
    weights: Sequence[Any]
    optimizer: inner_loop.InnerOptimizer
    adapted: Sequence[bool]
    loss: TaskLoss
    task_loop: str = "map"
    recompute: bool = False
    trained_steps: int | None = None
    initialize: Callable[..., list] | None = None


def task_elements(episode: Episode) -> dict:
    """The meta-batch as the dict `map_tasks` slices into tasks (query
    labels and sample weights only when the batch has them)."""
    elems = {
        SUPPORT_X: episode.support_x,
        SUPPORT_Y: episode.support_y,
        QUERY_X: episode.query_x,
    }
    if episode.query_y is not None:
        elems[QUERY_Y] = episode.query_y
    if episode.sample_weight is not None:
        elems[SAMPLE_WEIGHT] = episode.sample_weight
    return elems


def initial_weights(
    problem: InnerProblem, support_x: Any, support_y: Any, state, training
) -> list[tf.Tensor]:
    """A task's starting weights: `problem.weights` as tensors, through
    `problem.initialize` if it has one."""
    weights = [tf.convert_to_tensor(w) for w in problem.weights]
    if problem.initialize is None:
        return weights
    return problem.initialize(weights, support_x, support_y, state, training)


def solve_tasks(
    problem: InnerProblem,
    episode: Episode,
    *,
    steps: int,
    first_order: bool | tf.Tensor,
    training: bool,
    step_weights: tf.Tensor | None = None,
    gradients_of: Sequence[keras.Variable] | None = None,
    loss_scale: Callable[[tf.Tensor], tf.Tensor] | None = None,
    with_fast_weights: bool = False,
    with_pre_predictions: bool = True,
    divergence: str | None = "raise",
) -> TaskResults:
    """Adapts to every task of a meta-batch and predicts its queries.

    Differentiable with respect to `problem.weights` (and anything the
    inner optimiser reads), which are read here: call it inside the outer
    tape, or, faster, give `gradients_of` to differentiate each task inside
    the task loop.

    Args:
        problem: The network, weights, inner optimiser and loss.
        episode: The meta-batch, from `tfmaml.batches.check_episode`.
        steps: Inner steps per task.
        first_order: Whether inner gradients are constants (a boolean
            tensor switches in the graph).
        training: The `training` flag passed to the network.
        step_weights: `[steps]` weights of the query losses after each
            inner step (MAML++'s multi-step loss); `None` scores the last
            step only. Defaults to `None`.
        gradients_of: Variables to differentiate each task's query loss
            with respect to, inside the loop over tasks; the results'
            `gradients` are their sums over tasks. Each task's backward pass
            then runs next to its forward pass: no activations of the whole
            meta-batch are kept, and TensorFlow's oneDNN kernels serve the
            backward pass (in the gradient of a whole `tf.map_fn` they do
            not). Needs query labels. Defaults to `None`.
        loss_scale: Applied to each task's loss before it is differentiated
            with `gradients_of` (the optimizer's `scale_loss`). Defaults to
            none.
        with_fast_weights: Whether to return every task's adapted weights.
            Defaults to `False`.
        with_pre_predictions: Whether to predict the queries with the
            unadapted network too. Defaults to `True`.
        divergence: Outside training (`training=False`), what to do if a
            task's fast weights or predictions become NaN or infinite:
            `"raise"` (the default; `tfmaml.divergence` names the first
            such step), `"report"` (the results' `diverged_at`, per task)
            or `None` (nothing). Training is never checked here.

    Returns:
        A `TaskResults`.

    Raises:
        ValueError: If `gradients_of` is given without query labels, or
            `divergence` is unknown.
    """
    if divergence not in ("raise", "report", None):
        raise ValueError(
            "`divergence` must be 'raise', 'report' or None. Received: "
            f"divergence={divergence!r}"
        )
    divergence = None if training else divergence
    has_labels = episode.query_y is not None
    if gradients_of is not None and not has_labels:
        raise ValueError(
            "`gradients_of` needs query labels (`query_y`) to "
            "differentiate the query loss."
        )
    network = problem.network
    state = network_state(network)
    elems = task_elements(episode)

    def solve_task(task):
        weights = initial_weights(
            problem, task[SUPPORT_X], task[SUPPORT_Y], state, training
        )
        # The state each pass starts from, by inner step: support step k
        # runs on `states[k]` and leaves `states[k + 1]`.
        states = {0: state}

        def support_loss(fast, x, y):
            step = inner_loop.current_step()
            predictions, new_state, penalty = run_network(
                network, fast, states[step], x, training
            )
            # A recomputed step (gradient checkpointing) runs again in the
            # backward pass; the first run's state stands.
            states.setdefault(step + 1, new_state)
            return penalty + problem.loss(y, predictions, None)

        trajectory = inner_loop.adaptation_trajectory(
            support_loss,
            weights,
            task[SUPPORT_X],
            task[SUPPORT_Y],
            steps=steps,
            optimizer=problem.optimizer,
            first_order=first_order,
            adapted=problem.adapted,
            recompute=training and problem.recompute,
        )

        def query_pass(step, fast):
            with inner_loop.step_scope(step):
                return run_network(
                    network, fast, states[step], task[QUERY_X], training
                )

        predictions, new_state, penalty = query_pass(steps, trajectory[-1])
        outputs = {"predictions": predictions, "state": new_state}
        weight = task.get(SAMPLE_WEIGHT)
        if with_pre_predictions:
            pre_predictions, _, pre_penalty = query_pass(0, weights)
            outputs["pre_predictions"] = tf.stop_gradient(pre_predictions)
        if with_fast_weights:
            outputs["fast_weights"] = trajectory[-1]
        if divergence:
            outputs["diverged_at"] = divergence_checks.first_non_finite_step(
                trajectory, predictions
            )
        if has_labels:
            loss = penalty + problem.loss(task[QUERY_Y], predictions, weight)
            if step_weights is not None:
                losses = []
                for step in range(1, steps):
                    step_predictions, _, step_penalty = query_pass(
                        step, trajectory[step]
                    )
                    losses.append(
                        step_penalty
                        + problem.loss(task[QUERY_Y], step_predictions, weight)
                    )
                losses.append(loss)
                loss = tf.reduce_sum(
                    tf.cast(step_weights, loss.dtype) * tf.stack(losses)
                )
            outputs["loss"] = loss
            if with_pre_predictions:
                outputs["pre_loss"] = tf.stop_gradient(
                    pre_penalty
                    + problem.loss(task[QUERY_Y], pre_predictions, weight)
                )
        return outputs

    spec = output_signature(
        network, episode.query_x, has_labels, with_pre_predictions
    )
    if with_fast_weights:
        spec["fast_weights"] = _specs(problem.weights)
    if divergence:
        spec["diverged_at"] = tf.TensorSpec([], tf.int32)
    if gradients_of is not None:
        solve_task = differentiated_per_task(
            solve_task, gradients_of, loss_scale=loss_scale
        )
        spec["gradients"] = _specs(gradients_of)
    outputs = map_tasks(solve_task, elems, spec, task_loop=problem.task_loop)
    gradients = outputs.get("gradients")
    if gradients is not None:
        gradients = [tf.reduce_sum(g, axis=0) for g in gradients]
    if divergence == "raise":
        check = divergence_checks.assert_no_divergence(
            outputs["diverged_at"],
            steps=steps,
            trained_steps=problem.trained_steps,
            optimizer=problem.optimizer,
        )
        with tf.control_dependencies([check]):
            outputs = tf.nest.map_structure(tf.identity, outputs)
    return TaskResults(
        loss=outputs.get("loss"),
        predictions=outputs["predictions"],
        pre_loss=outputs.get("pre_loss"),
        pre_predictions=outputs.get("pre_predictions"),
        state=outputs["state"],
        fast_weights=outputs.get("fast_weights"),
        gradients=gradients,
        diverged_at=outputs.get("diverged_at"),
    )


def multi_step_loss_weights(
    steps: int, iteration: tf.Tensor, anneal_steps: int
) -> tf.Tensor:
    """MAML++'s annealed weights of the query losses after each step.

    They start uniform (`1/steps` each) and move linearly, over
    `anneal_steps` meta-steps, to all weight on the last step; the other
    steps keep a floor of `0.03/steps`, as in Antoniou et al. (2019).

    Args:
        steps: Inner steps.
        iteration: The current meta-step.
        anneal_steps: Meta-steps to anneal over.

    Returns:
        A `[steps]` tensor that sums to 1.
    """
    progress = tf.minimum(
        tf.cast(iteration, tf.float32) / float(max(anneal_steps, 1)), 1.0
    )
    early = tf.maximum((1.0 - progress) / steps, 0.03 / steps)
    early = tf.fill([steps - 1], early)
    return tf.concat([early, [1.0 - tf.reduce_sum(early)]], axis=0)


def differentiated_per_task(
    solve_task: Callable[[dict], dict],
    variables: Sequence[keras.Variable],
    *,
    loss_scale: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> Callable[[dict], dict]:
    """Wraps `solve_task(task) -> outputs` (with a scalar `outputs["loss"]`)
    so that it also returns `outputs["gradients"]`, the loss's gradient with
    respect to `variables`, taken inside the task loop.

    `solve_task` must read the variables itself (inside the tape this opens
    in the loop body). Variables the loss does not reach get zeros; outputs
    other than the loss and gradients are cut from the graph.

    Args:
        solve_task: One task's computation.
        variables: What to differentiate with respect to.
        loss_scale: Applied to the loss before differentiating (the
            optimizer's `scale_loss`). Defaults to none.

    Returns:
        The wrapped function.
    """
    variables = list(variables)

    def solve_and_differentiate(task):
        with tf.GradientTape() as tape:
            outputs = solve_task(task)
            loss = outputs["loss"]
            if loss_scale is not None:
                loss = loss_scale(loss)
        with summed_bias_gradients():
            gradients = tape.gradient(loss, variables)
        # (The tape's own `UnconnectedGradients.ZERO` fails on Keras
        # variables inside the loop body: their dtype is a string.)
        outputs = {
            key: value
            if key == "loss"
            else tf.nest.map_structure(tf.stop_gradient, value)
            for key, value in outputs.items()
        }
        outputs["gradients"] = [
            tf.zeros(v.shape, tf.as_dtype(v.dtype)) if g is None else g
            for v, g in zip(variables, gradients, strict=True)
        ]
        return outputs

    return solve_and_differentiate


def map_tasks(
    fn: Callable[[dict], Any],
    elems: dict,
    signature: Any,
    *,
    task_loop: str = "map",
) -> Any:
    """Applies `fn` to every task (slice along axis 0) of `elems`.

    Args:
        fn: One task's computation, on a dict of slices of `elems`.
        elems: Tensors with a leading task axis.
        signature: The structure of `fn`'s output as `tf.TensorSpec`s
            (`tf.map_fn`'s `fn_output_signature`).
        task_loop: `"map"` (`tf.map_fn`: one task after another in one
            graph; works for any network), `"vectorized"`
            (`tf.vectorized_map`: all tasks at once; fastest for dense
            networks) or `"unrolled"` (a Python loop in the graph; needs a
            static task count). All give the same results. Defaults to
            `"map"`.

    Returns:
        `fn`'s outputs stacked along a new leading task axis.

    Raises:
        ValueError: For an unknown `task_loop`, or `"unrolled"` without a
            static task count.
    """
    if task_loop == "map":
        return tf.map_fn(fn, elems, fn_output_signature=signature)
    if task_loop == "vectorized":
        return tf.vectorized_map(fn, elems)
    if task_loop != "unrolled":
        raise ValueError(
            f"`task_loop` must be one of {list(TASK_LOOPS)}. "
            f"Received: task_loop={task_loop!r}"
        )
    first = keras.tree.flatten(elems)[0]
    tasks = first.shape[0]
    if tasks is None:
        raise ValueError(
            "`task_loop='unrolled'` needs a static number of tasks per "
            "meta-batch (batch with `drop_remainder=True`). Received: "
            f"a task axis of shape {first.shape}"
        )
    outputs = [
        fn(keras.tree.map_structure(lambda t, i=i: t[i], elems))
        for i in range(tasks)
    ]
    return tf.nest.map_structure(lambda *t: tf.stack(t), *outputs)


def run_network(
    network: keras.layers.Layer,
    weights: Sequence[tf.Tensor],
    state: Sequence[tf.Tensor],
    x: Any,
    training: bool,
    call: Callable[..., Any] | None = None,
) -> tuple[tf.Tensor, list[tf.Tensor], tf.Tensor]:
    """Runs `network` on `weights` and `state` without touching its
    variables.

    The network is called as Keras calls it in `fit` (`network(x,
    training=...)` inside a `keras.StatelessScope` that maps its variables
    to the tensors given), not through `Layer.stateless_call`, which calls
    `call` directly: that would pass `training` to a `call` without the
    argument and leave nested layers (`Dropout`, masks) without Keras'
    call context.

    Args:
        network: The network.
        weights: One tensor per trainable variable.
        state: One tensor per non-trainable variable.
        x: The inputs.
        training: The `training` flag.
        call: What to call instead of `network`: a part of it sharing its
            variables (Proto-MAML's body up to the head). Defaults to
            `network`.

    Returns:
        The outputs (cast to float32 from a mixed-precision float16 or
        bfloat16, so that losses and their gradients are float32), the new
        non-trainable state, and the sum of the network's regularisation
        losses on those weights (0 without any).
    """
    # Biases that batch norm cancels enter as constants: same values, no
    # gradient work (`tfmaml.cancelled_biases`).
    weights = as_constants(network, weights, training, part=call)
    mapping = [
        *zip(network.trainable_variables, weights, strict=True),
        *zip(network.non_trainable_variables, state, strict=True),
    ]
    with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as (
        scope
    ):
        # A convolution with few patch entries gets its batch norm folded
        # in (`tfmaml.folded_batch_norm`): same function, less traffic.
        with folding(network, training, part=call):
            outputs = (network if call is None else call)(x, training=training)
        losses = network.losses
    new_state = [
        scope.get_current_value(v) for v in network.non_trainable_variables
    ]
    if outputs.dtype in (tf.float16, tf.bfloat16):
        outputs = tf.cast(outputs, tf.float32)
    penalty = tf.add_n(losses) if losses else 0.0
    return outputs, new_state, tf.cast(penalty, outputs.dtype)


def network_state(network: keras.layers.Layer) -> list[tf.Tensor]:
    """The current values of `network`'s non-trainable variables.

    Args:
        network: The network.
    """
    return [tf.convert_to_tensor(v) for v in network.non_trainable_variables]


def output_signature(network, query_x, has_labels, with_pre_predictions):
    """The `fn_output_signature` of one task for `tf.map_fn`: predictions and
    losses in the dtype of `network`'s outputs (float32 for float16 or
    bfloat16 ones, as `run_network` casts them; float64 in float64)."""
    spec = network.compute_output_spec(example_spec(query_x))
    dtype = tf.as_dtype(spec.dtype)
    if dtype in (tf.float16, tf.bfloat16):
        dtype = tf.float32  # As `run_network` casts them.
    prediction = tf.TensorSpec(None, dtype)
    signature = {
        "predictions": prediction,
        "state": _specs(network.non_trainable_variables, shaped=False),
    }
    if has_labels:
        signature["loss"] = tf.TensorSpec([], prediction.dtype)
    if with_pre_predictions:
        signature["pre_predictions"] = prediction
        if has_labels:
            signature["pre_loss"] = tf.TensorSpec([], prediction.dtype)
    return signature


def _specs(variables, shaped=True):
    return [
        tf.TensorSpec(v.shape if shaped else None, tf.as_dtype(v.dtype))
        for v in variables
    ]
