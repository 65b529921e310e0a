"""Figures. Needs matplotlib (`pip install "tfmaml[plot]"`)."""

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
