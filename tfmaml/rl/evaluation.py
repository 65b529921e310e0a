"""Meta-RL evaluation: average return after 0, 1, 2, ... inner steps.

For each test task, `num_trajectories` episodes are sampled with the
policy as it is after `k` inner steps (each step adapting on the previous
step's episodes, as at meta-test time), and their mean return is the
task's return after `k` steps. Results are the mean over tasks with a 95%
confidence interval (1.96 standard errors). For a family that records
`success` (Meta-World), the success rate too: the fraction of episodes in
which the success flag was set at some step (Meta-World's definition).
"""

import contextlib
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfmaml.rl.rollouts import success_rates


class StepReturn(NamedTuple):
    """The mean return after `steps` inner steps over `num_tasks` tasks,
    and the success rate (`None` for a family without success flags)."""

    steps: int
    num_tasks: int
    mean: float
    ci95: float
    success: float | None = None
    success_ci95: float | None = None


class Rollouts(NamedTuple):
    """Per-task returns `[tasks, steps + 1]`, the episodes of every step
    (observations `[steps + 1, tasks, K, T, obs]`) and per-task success
    rates `[tasks, steps + 1]` (`None` without success flags), for tables
    and plots."""

    returns: np.ndarray
    observations: np.ndarray
    successes: np.ndarray | None = None


def sample_adaptation(
    model: Any,
    task_batch: tf.Tensor,
    *,
    steps: int,
    num_trajectories: int = 40,
    seed: int = 0,
    inner_optimizer: Any = None,
) -> Rollouts:
    """Samples every task's episodes before and after each inner step.

    Args:
        model: A `tfmaml.rl.MetaRL`.
        task_batch: `[tasks, task_size]`.
        steps: The most inner steps to take.
        num_trajectories: Episodes per task and step. Defaults to `40`.
        seed: Seeds the noise. Defaults to `0`.
        inner_optimizer: The rule that adapts at test time, e.g.
            `inner_loop.SGD((0.5, 0.1))` (smaller later steps, as the
            original's evaluation); defaults to the model's.

    Returns:
        `Rollouts`.
    """

    def run(task_batch, seed):
        collected = model.collect(
            model._weights(),
            task_batch,
            seed,
            steps=steps,
            num_trajectories=num_trajectories,
        )
        every = [s.trajectories for s in collected.support]
        every.append(collected.query.trajectories)
        returns = tf.stack([tf.reduce_mean(t.returns(), 1) for t in every], 1)
        observations = tf.stack([t.observations for t in every])
        successes = tf.stack([success_rates(model.family, t) for t in every], 1)
        return returns, observations, successes

    rule = model.inner_optimizer if inner_optimizer is None else inner_optimizer
    function = model.cached_function(
        ("sample_adaptation", steps, num_trajectories, id(rule)),
        lambda: tf.function(run, reduce_retracing=True),
    )
    task_batch = tf.convert_to_tensor(task_batch)
    seeds = tf.random.experimental.stateless_split(
        tf.constant([seed, 0], tf.int64), tf.shape(task_batch)[0]
    )
    with _adapting_with(model, rule):
        returns, observations, successes = function(task_batch, seeds)
    has_success = "success" in getattr(model.family, "info_keys", ())
    return Rollouts(
        returns.numpy(),
        observations.numpy(),
        successes.numpy() if has_success else None,
    )


@contextlib.contextmanager
def _adapting_with(model, rule):
    """Lets `model` adapt with `rule` inside the block (its own is put
    back after)."""
    own = model.inner_optimizer
    if rule is own:
        yield
        return
    model.inner_optimizer = rule
    try:
        yield
    finally:
        model.inner_optimizer = own


def evaluate_returns(
    model: Any,
    task_batch: tf.Tensor,
    *,
    step_counts: Sequence[int] = (0, 1, 2, 3),
    num_trajectories: int = 40,
    seed: int = 0,
    inner_optimizer: Any = None,
) -> list[StepReturn]:
    """The mean return (95% CI over tasks) after each of `step_counts`.

    Args:
        model: A `tfmaml.rl.MetaRL`.
        task_batch: `[tasks, task_size]` test tasks.
        step_counts: Inner step counts. Defaults to `(0, 1, 2, 3)`.
        num_trajectories: Episodes per task and step. Defaults to `40`.
        seed: Seeds the noise. Defaults to `0`.
        inner_optimizer: The rule that adapts at test time; defaults to
            the model's (see `sample_adaptation`).

    Returns:
        One `StepReturn` per entry of `step_counts`.
    """
    rollouts = sample_adaptation(
        model,
        task_batch,
        steps=max(step_counts),
        num_trajectories=num_trajectories,
        seed=seed,
        inner_optimizer=inner_optimizer,
    )
    results = []
    for steps in step_counts:
        mean, ci = _mean_and_ci(rollouts.returns[:, steps])
        success = success_ci = None
        if rollouts.successes is not None:
            success, success_ci = _mean_and_ci(rollouts.successes[:, steps])
        results.append(
            StepReturn(
                steps,
                len(rollouts.returns),
                mean,
                ci,
                success,
                success_ci,
            )
        )
    return results


def _mean_and_ci(values):
    ci = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(ci)


def format_returns(results: Sequence[StepReturn], title: str = "") -> str:
    """Renders results as a plain-text table.

    Args:
        results: `StepReturn`s from `evaluate_returns`.
        title: A line above the table. Defaults to none.
    """
    lines = [title] if title else []
    successes = results and results[0].success is not None
    header = "inner steps | tasks | average return (95% CI)"
    lines.append(header + (" | success rate (95% CI)" if successes else ""))
    for r in results:
        line = (
            f"{r.steps:>11} | {r.num_tasks:>5} | {r.mean:.2f} +- {r.ci95:.2f}"
        )
        if successes:
            line += f" | {100 * r.success:.1f}% +- {100 * r.success_ci95:.1f}%"
        lines.append(line)
    return "\n".join(lines)
