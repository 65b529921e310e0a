"""Adapting a meta-learned model to one task, outside training.

The inner loop of `tfmaml.tasks` on one task's support set, first order
(no second-order graph is kept) and in inference mode: the fast weights
(`adapted_weights`, what the export runs in its graph), predictions with
them (`predict_with_weights`), a Keras copy of the network that holds
them (`adapted_copy`, behind `MAML.adapt`), and query predictions without
a copy (`adapted_predictions`, behind `MAML.adapt_and_predict`).
"""

from typing import Any

import keras
import tensorflow as tf

from tfmaml import batches
from tfmaml import divergence
from tfmaml import inner_loop
from tfmaml import networks
from tfmaml import tasks
from tfmaml.batches import QUERY_X
from tfmaml.batches import SUPPORT_X
from tfmaml.batches import SUPPORT_Y


def adapted_weights(
    model: Any, support_x: tf.Tensor, support_y: tf.Tensor, steps: int
) -> list[tf.Tensor]:
    """The fast weights after `steps` inner steps on one task.

    Args:
        model: A compiled `tfmaml.MAML` (its `inner_problem()`).
        support_x: The task's support inputs, `[S, ...]`.
        support_y: Their labels.
        steps: Inner steps.

    Returns:
        One tensor per trainable variable of the base network.

    Raises:
        tf.errors.InvalidArgumentError: If the fast weights become NaN or
            infinite (`tfmaml.divergence` names the step), also in the
            exported graph.
    """
    problem = model.inner_problem()
    state = tasks.network_state(problem.network)
    weights = tasks.initial_weights(problem, support_x, support_y, state, False)

    def support_loss(weights, x, y):
        predictions, _, penalty = tasks.run_network(
            problem.network, weights, state, x, False
        )
        return penalty + problem.loss(y, predictions, None)

    trajectory = inner_loop.adaptation_trajectory(
        support_loss,
        weights,
        support_x,
        support_y,
        steps=steps,
        optimizer=problem.optimizer,
        first_order=True,
        adapted=problem.adapted,
    )
    return divergence.checked_last_weights(
        trajectory,
        trained_steps=problem.trained_steps,
        optimizer=problem.optimizer,
    )


def predict_with_weights(
    network: keras.layers.Layer, weights: list, x: Any, steps: int = 0
) -> tf.Tensor:
    """Runs `network` in inference mode on other weights, as it is after
    `steps` inner steps (per-step layers pick their row), leaving its
    variables untouched.

    Args:
        network: The base network.
        weights: One tensor per trainable variable.
        x: Inputs `[N, ...]`.
        steps: The inner step whose per-step parameters to use. Defaults to
            `0`.
    """
    state = tasks.network_state(network)
    with inner_loop.step_scope(steps):
        predictions, _, _ = tasks.run_network(network, weights, state, x, False)
    return predictions


def adapted_copy(
    model: Any,
    support_x: Any,
    support_y: Any,
    steps: int,
    *,
    functions: Any,
) -> keras.Model:
    """A copy of `model.base_model` with the weights adapted to one task.

    Args:
        model: A compiled `tfmaml.MAML`.
        support_x: One task's support inputs, `[S, ...]`.
        support_y: Their labels.
        steps: Inner steps.
        functions: `cached_function(key, make)` keeping the traced
            `tf.function` per step count between calls (the model's).

    Returns:
        A built Keras model.

    Raises:
        ValueError: If the support set's shapes do not fit the network.
    """
    support_x, support_y, _ = _checked_task(
        model, support_x, support_y, None, functions
    )
    adapt = functions(
        ("adapt", steps),
        lambda: tf.function(
            lambda x, y: adapted_weights(model, x, y, steps),
            reduce_retracing=True,
            jit_compile=False,  # The divergence message is a string op.
        ),
    )
    fast = adapt(support_x, support_y)
    return networks.clone_with_weights(
        model.base_model, fast, support_x, step=steps
    )


def adapted_predictions(
    model: Any,
    support_x: Any,
    support_y: Any,
    query_x: Any,
    steps: int,
    *,
    functions: Any,
) -> tf.Tensor:
    """Predictions for one task's queries after `steps` inner steps on its
    support set: the inner loop and the query pass in one `tf.function`,
    kept per step count and traced once per input signature, with no copy
    of the network (what `MAML.adapt_and_predict` runs: adapting to one
    user after another then costs the inner loop, not a model rebuild).

    Args:
        model: A compiled `tfmaml.MAML`.
        support_x: One task's support inputs, `[S, ...]`.
        support_y: Their labels.
        query_x: Its queries, `[Q, ...]`.
        steps: Inner steps.
        functions: `cached_function(key, make)` (the model's).

    Raises:
        ValueError: If the shapes do not fit the network.
        tf.errors.InvalidArgumentError: If adaptation diverges.
    """
    support_x, support_y, query_x = _checked_task(
        model, support_x, support_y, query_x, functions
    )

    def run(x, y, queries):
        # The model's methods: a ProtoNet's "weights" are its prototypes.
        fast = model.adapted_weights(x, y, steps)
        return model.predict_with_weights(fast, queries, steps)

    function = functions(
        ("adapt_and_predict", steps),
        lambda: tf.function(run, reduce_retracing=True, jit_compile=False),
    )
    return function(support_x, support_y, query_x)


def _checked_task(model, support_x, support_y, query_x, functions):
    """One task's inputs as tensors (nested as the network's inputs), refused
    with a `ValueError` naming the input whose shape does not fit `model`'s
    network. The checks (a symbolic pass of the network) run once per input
    signature: kept in `functions` like the traces, so a repeated call
    costs no Python pass."""

    def tensors(inputs):
        return keras.tree.map_structure(tf.convert_to_tensor, inputs)

    support_x, support_y = tensors(support_x), tf.convert_to_tensor(support_y)
    query_x = support_x if query_x is None else tensors(query_x)

    def check():
        # Reuse the meta-batch checks on a batch of one task.
        def one_task(inputs):
            return keras.tree.map_structure(lambda t: t[None], inputs)

        episode = batches.check_episode(
            {
                SUPPORT_X: one_task(support_x),
                SUPPORT_Y: support_y[None],
                QUERY_X: one_task(query_x),
            },
            None,
            None,
            require_labels=False,
        )
        batches.check_label_rank(model.base_model, episode, model.label_kind)
        return True

    signature = tuple(
        (tuple(t.shape), t.dtype.name)
        for t in keras.tree.flatten((support_x, support_y, query_x))
    )
    functions(("checked task", signature), check)
    return support_x, support_y, query_x
