"""Episodic evaluation: query loss (and accuracy) after k inner steps.

Reports the mean over tasks with a 95% confidence interval (1.96 standard
errors), the convention of the few-shot literature. A step count at which
some task's adaptation diverged (NaN or infinite fast weights) is reported
as such, with the first diverging step, never as a NaN mean.
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfmaml import divergence
from tfmaml.divergence import NO_DIVERGENCE
from tfmaml.model import MAML


class StepResult(NamedTuple):
    """Query metrics after `steps` inner steps, over `num_tasks` tasks.

    The accuracy fields are `None` for regression. `diverged_at` is the
    first inner step at which some task's adaptation diverged (`None` if
    none did); `diverged_tasks` how many tasks did.
    """

    steps: int
    num_tasks: int
    loss: float
    loss_ci95: float
    accuracy: float | None
    accuracy_ci95: float | None
    diverged_at: int | None = None
    diverged_tasks: int = 0


def evaluate_adaptation(
    model: MAML,
    dataset: tf.data.Dataset,
    *,
    step_counts: Sequence[int] = (0, 1, 5, 10),
    num_tasks: int | None = None,
) -> list[StepResult]:
    """Adapts to every task of `dataset` and scores its query set.

    Accuracy is reported for classification (the compiled loss is a
    cross-entropy; see `tfmaml.labels`).

    Args:
        model: A compiled `MAML` model.
        dataset: Meta-batches in the `MAML` batch layout, finite.
        step_counts: Numbers of inner steps to evaluate after. Defaults to
            `(0, 1, 5, 10)`.
        num_tasks: Use only the first `num_tasks` tasks. Defaults to all.

    Returns:
        One `StepResult` per entry of `step_counts`.

    Raises:
        ValueError: If `dataset` holds fewer than `num_tasks` tasks.
    """
    solvers = {steps: _solver(model, steps) for steps in step_counts}
    losses = {steps: [] for steps in step_counts}
    accuracies = {steps: [] for steps in step_counts}
    diverged = {steps: [] for steps in step_counts}
    seen = 0
    for x, y in dataset:
        for steps, solve in solvers.items():
            loss, accuracy, diverged_at = solve(x, y)
            losses[steps].append(loss.numpy())
            accuracies[steps].append(accuracy.numpy())
            diverged[steps].append(diverged_at.numpy())
        seen += int(tf.shape(y)[0])
        if num_tasks is not None and seen >= num_tasks:
            break
    if num_tasks is not None and seen < num_tasks:
        raise ValueError(
            f"The evaluation dataset holds {seen} tasks; `num_tasks` asks "
            f"for {num_tasks}."
        )
    classification = model.label_kind.classification
    results = []
    for steps in step_counts:
        loss = np.concatenate(losses[steps])[:num_tasks]
        accuracy = np.concatenate(accuracies[steps])[:num_tasks]
        at = np.concatenate(diverged[steps])[:num_tasks]
        at = at[at != NO_DIVERGENCE]
        results.append(
            StepResult(
                steps=steps,
                num_tasks=len(loss),
                loss=float(loss.mean()),
                loss_ci95=_ci95(loss),
                accuracy=float(accuracy.mean()) if classification else None,
                accuracy_ci95=_ci95(accuracy) if classification else None,
                diverged_at=int(at.min()) if len(at) else None,
                diverged_tasks=len(at),
            )
        )
    return results


def format_results(results: Sequence[StepResult]) -> str:
    """Renders results as a plain-text table.

    Args:
        results: `StepResult`s from `evaluate_adaptation`.
    """
    lines = ["inner steps | tasks | query loss (95% CI) | accuracy (95% CI)"]
    for r in results:
        if r.diverged_at is not None:
            lines.append(
                f"{r.steps:>11} | {r.num_tasks:>5} | diverged at step "
                f"{r.diverged_at} ({r.diverged_tasks} of {r.num_tasks} tasks)"
            )
            continue
        accuracy = (
            "-"
            if r.accuracy is None
            else f"{100 * r.accuracy:.2f}% +- {100 * r.accuracy_ci95:.2f}%"
        )
        lines.append(
            f"{r.steps:>11} | {r.num_tasks:>5} | "
            f"{r.loss:.4f} +- {r.loss_ci95:.4f} | {accuracy}"
        )
    return "\n".join(lines)


def divergence_advice(model: MAML, steps: int, diverged_at: int) -> str:
    """The divergence error's text for a table: the step, the steps the
    model was trained with, and the remedy.

    Args:
        model: The evaluated model.
        steps: The step count whose adaptation diverged.
        diverged_at: The first diverging step.
    """
    text = divergence.message(steps, model.inner_steps, model.inner_optimizer)
    return "error: " + text.replace("{}", str(diverged_at), 1).replace(
        " (task {} of the batch)", ""
    )


def _solver(model, steps):
    @tf.function(reduce_retracing=True)
    def solve(x, y):
        episode = model.episode_from_batch((x, y))
        results = model.solve_tasks(
            episode,
            steps=steps,
            first_order=True,
            training=False,
            divergence="report",
        )
        kind = model.label_kind
        if kind.classification:
            predicted = tf.argmax(results.predictions, axis=-1)
            truth = y if kind.sparse else tf.argmax(y, axis=-1)
            correct = tf.cast(
                tf.equal(predicted, tf.cast(truth, predicted.dtype)),
                tf.float32,
            )
            accuracy = tf.reduce_mean(
                correct, axis=tf.range(1, tf.rank(correct))
            )
        else:
            accuracy = tf.zeros_like(results.loss, tf.float32)
        return results.loss, accuracy, results.diverged_at

    return solve


def _ci95(values):
    if len(values) < 2:
        return float("nan")
    return float(1.96 * values.std(ddof=1) / np.sqrt(len(values)))
