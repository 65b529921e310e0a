"""Figures. Needs matplotlib (`pip install "tfmaml[plot]"`)."""

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfmaml.data import sample_sinusoid_tasks  # noqa: E402
from tfmaml.model import MAML  # noqa: E402


def plot_sinusoid_adaptation(
    model: MAML,
    path: str,
    *,
    num_shots: int = 10,
    seed: int = 0,
    step_counts: tuple[int, ...] = (0, 1, 10),
) -> None:
    """Draws one test sinusoid, its support points, and the network's fit
    before and after adaptation, as Figure 2 of the MAML paper.

    Args:
        model: A trained `MAML` regression model on 1-D inputs.
        path: Where to write the PNG.
        num_shots: Support points (K). Defaults to `10`.
        seed: Picks the task. Defaults to `0`.
        step_counts: Inner steps to draw. Defaults to `(0, 1, 10)`.
    """
    task = sample_sinusoid_tasks(
        tf.constant([seed, 7919], tf.int64),
        num_shots=num_shots,
        num_queries=1,
        meta_batch_size=1,
    )
    grid = np.linspace(-5, 5, 200, dtype="float32")[:, None]
    amplitude, phase = float(task.amplitude[0]), float(task.phase[0])
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(grid, amplitude * np.sin(grid - phase), "r", label="ground truth")
    styles = ("g:", "g--", "g-", "b-", "b--")
    for steps, style in zip(step_counts, styles, strict=False):
        adapted = model.adapt(task.support_x[0], task.support_y[0], steps)
        label = "pre-update" if steps == 0 else f"{steps} grad step(s)"
        axes.plot(grid, adapted(grid), style, label=label)
    axes.plot(task.support_x[0], task.support_y[0], "k^", label="used for grad")
    axes.set_title(f"MAML, K={num_shots}")
    axes.legend(loc="lower right", fontsize="small")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def plot_returns(
    results: dict[str, Sequence], path: str, *, title: str = ""
) -> None:
    """Draws the average return (95% CI) against inner steps, one line per
    model, as the MAML paper's RL figures.

    Args:
        results: `{name: [tfmaml.rl.StepReturn, ...]}`.
        path: Where to write the PNG.
        title: The figure's title. Defaults to none.
    """
    figure, axes = plt.subplots(figsize=(5, 4))
    for name, rows in results.items():
        steps = [r.steps for r in rows]
        means = np.array([r.mean for r in rows])
        errors = np.array([r.ci95 for r in rows])
        axes.errorbar(steps, means, yerr=errors, marker="o", label=name)
    axes.set_xlabel("number of gradient steps")
    axes.set_ylabel("average return")
    axes.set_xticks(
        sorted({r.steps for rows in results.values() for r in rows})
    )
    if title:
        axes.set_title(title)
    axes.legend(loc="lower right", fontsize="small")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def plot_navigation_paths(
    observations: np.ndarray,
    goals: np.ndarray,
    path: str,
    *,
    step_labels: Sequence[str] = ("pre-update", "1 grad step"),
) -> None:
    """Draws the agent's paths in 2D navigation before and after
    adaptation for a few goals, as the MAML paper's Figure 4.

    Args:
        observations: `[steps + 1, tasks, K, T, 2]` positions
            (`tfmaml.rl.evaluation.sample_adaptation`); the first episode of
            each task and step is drawn.
        goals: `[tasks, 2]`.
        path: Where to write the PNG.
        step_labels: Labels of the steps drawn, in order. Defaults to
            pre-update and one step.
    """
    count = len(goals)
    figure, axes = plt.subplots(1, count, figsize=(3.2 * count, 3.2))
    axes = np.atleast_1d(axes)
    styles = ("b:", "g-", "r--", "m-.")
    for task, ax in enumerate(axes):
        for step, (label, style) in enumerate(
            zip(step_labels, styles, strict=False)
        ):
            points = observations[step, task, 0]
            ax.plot(
                np.r_[0.0, points[:, 0]],
                np.r_[0.0, points[:, 1]],
                style,
                label=label,
            )
        ax.plot(*goals[task], "k*", markersize=12, label="goal")
        ax.set_xlim(-0.6, 0.6)
        ax.set_ylim(-0.6, 0.6)
        ax.set_aspect("equal")
    axes[0].legend(loc="upper left", fontsize="x-small")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def plot_navigation_figures(
    model,
    results: dict[str, Sequence],
    task_batch,
    directory: str,
    *,
    num_trajectories: int,
    seed: int = 0,
    title: str = "",
) -> list[str]:
    """Writes `returns.png` (`plot_returns` of `results`) and `paths.png`
    (`plot_navigation_paths` of `model` on the first three tasks, adapted
    on `num_trajectories` episodes) to `directory`; returns their paths.

    Args:
        model: A `tfmaml.rl.MetaRL` on 2D navigation.
        results: `{name: [tfmaml.rl.StepReturn, ...]}`.
        task_batch: `[tasks, 2]` goals, the first three drawn.
        directory: Where the PNGs go.
        num_trajectories: Episodes the adaptation samples.
        seed: Seeds the episodes. Defaults to `0`.
        title: The returns figure's title. Defaults to none.
    """
    from tfmaml import rl

    returns_path = os.path.join(directory, "returns.png")
    paths_path = os.path.join(directory, "paths.png")
    plot_returns(results, returns_path, title=title)
    goals = task_batch[:3]
    rollouts = rl.evaluation.sample_adaptation(
        model, goals, steps=1, num_trajectories=num_trajectories, seed=seed
    )
    plot_navigation_paths(rollouts.observations, np.asarray(goals), paths_path)
    return [returns_path, paths_path]
