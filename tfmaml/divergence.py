"""Divergence of the inner loop is an error, never a quiet NaN.

A model meta-trained with few inner steps may diverge when adapted with
more (a learned rate that suits step 1 can overshoot at step 5): the fast
weights become NaN or infinite and so does every prediction. The paths
that adapt outside training (`MAML.adapt`, `predict` and `evaluate` on
episodes, the exported signatures, the meta-RL model's `adapted_weights`)
find the first inner step whose fast weights are not finite and fail with
a message that names it, the step count the model was trained with, and
the remedy; evaluation tables report it instead of a NaN. Training steps
are not checked here (they have their own non-finite stop), so the check
costs training nothing.
"""

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

NO_DIVERGENCE = -1


def first_non_finite_step(
    trajectory: Sequence[Sequence[tf.Tensor]],
    predictions: tf.Tensor | None = None,
) -> tf.Tensor:
    """The first inner step after which the fast weights are not all
    finite (an int32 scalar in `1..steps`), or `NO_DIVERGENCE`.

    Args:
        trajectory: The weights before and after each step
            (`inner_loop.adaptation_trajectory`).
        predictions: The predictions of the last weights: if they are not
            finite while the weights are, the last step is reported.
    """
    steps = len(trajectory) - 1
    finite = [_all_finite(weights) for weights in trajectory[1:]]
    if predictions is not None:
        finite.append(_all_finite([predictions]))
    if not finite:
        return tf.constant(NO_DIVERGENCE, tf.int32)
    bad = tf.logical_not(tf.stack(finite))
    first = tf.minimum(
        tf.cast(tf.argmax(tf.cast(bad, tf.int32)), tf.int32) + 1, steps
    )
    return tf.where(tf.reduce_any(bad), first, NO_DIVERGENCE)


def assert_no_divergence(
    diverged_at: tf.Tensor,
    *,
    steps: int,
    trained_steps: int | None,
    optimizer: Any = None,
) -> tf.Operation:
    """An op that fails, naming the first diverging task and inner step,
    if any entry of `diverged_at` (`[tasks]` or a scalar, from
    `first_non_finite_step`) is set.

    Args:
        diverged_at: Per task, the first non-finite step.
        steps: The inner steps taken.
        trained_steps: The inner steps the model was meta-trained with.
        optimizer: The inner optimiser (its learned per-step rates are
            explained in the message).
    """
    diverged_at = tf.reshape(diverged_at, [-1])
    failed = diverged_at > NO_DIVERGENCE
    task = tf.cast(tf.argmax(tf.cast(failed, tf.int32)), tf.int32)
    text = tf.strings.format(
        message(steps, trained_steps, optimizer),
        (diverged_at[task], task),
    )
    return tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(failed)), [text], summarize=1
    )


def checked_last_weights(
    trajectory: Sequence[Sequence[tf.Tensor]],
    *,
    trained_steps: int | None,
    optimizer: Any = None,
) -> list[tf.Tensor]:
    """The last weights of a one-task `trajectory`, which fail (naming the
    step) if any step's weights are not finite.

    Args:
        trajectory: The weights before and after each inner step.
        trained_steps: The inner steps the model was meta-trained with.
        optimizer: The inner optimiser.
    """
    check = assert_no_divergence(
        first_non_finite_step(trajectory),
        steps=len(trajectory) - 1,
        trained_steps=trained_steps,
        optimizer=optimizer,
    )
    with tf.control_dependencies([check]):
        return [tf.identity(w) for w in trajectory[-1]]


def message(
    steps: int, trained_steps: int | None, optimizer: Any = None
) -> str:
    """The error's text, with `{}` for the step and the task index."""
    text = (
        f"Adaptation diverged at inner step {{}} of {steps} (task {{}} of "
        "the batch): the fast weights or predictions became NaN or "
        "infinite."
    )
    if trained_steps is not None:
        text += (
            f" The model was meta-trained with {trained_steps} inner "
            f"step(s): adapt with fewer steps (at most {trained_steps} is "
            "safest), or meta-train with more."
        )
    rates = getattr(optimizer, "rates", None)
    if rates == "per_layer_per_step":
        text += (
            " Its learned per-step rates cover the trained steps; later "
            "steps reuse the last trained step's rates."
        )
    elif rates == "per_parameter":
        text += " Its learned per-parameter rates are the same at each step."
    return text


def check_finite_input(name: str, tensor: tf.Tensor) -> tf.Tensor:
    """`tensor`, failing in the graph if a float input holds NaN or inf
    (what an exported signature does with a request)."""
    if not tensor.dtype.is_floating:
        return tensor
    return tf.debugging.assert_all_finite(
        tensor, f"{name} holds a NaN or infinite value"
    )


def _all_finite(tensors):
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])
