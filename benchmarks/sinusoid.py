"""Sinusoid regression: 600-task MSE after 1, 5 and 10 inner steps.

Meta-trains the `configs/sinusoid.py` setup (2x40 ReLU MLP, one inner step
of 0.01, meta-batch 25, Adam 1e-3) for K=5 and K=10 and prints the test MSE
with 95% confidence intervals beside the MAML paper's K=5 figures (Finn et
al. 2017, Figure 3: MAML and the pretrained baseline).

Usage:
  python benchmarks/sinusoid.py [--steps=70000] [--shots=5,10]
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_integer("steps", 70_000, "Meta-training steps (meta-batches).")
flags.DEFINE_list("shots", ["5", "10"], "Values of K to train and evaluate.")
FLAGS = flags.FLAGS

PAPER_K5 = {
    "MAML (paper)": {1: 0.67, 5: 0.38, 10: 0.35},
    "pretrained (paper)": {1: 2.41, 5: 2.23, 10: 2.19},
}
STEP_COUNTS = (1, 5, 10)


def main(argv):
    del argv
    import keras

    from tfmaml import evaluation
    from tfmaml import experiment
    from tfmaml.configs import sinusoid

    rows = []
    for shots in map(int, FLAGS.shots):
        config = sinusoid.get_config()
        config.num_shots = config.num_queries = shots
        config.total_steps = FLAGS.steps
        keras.utils.set_random_seed(config.seed)
        splits = experiment.build_splits(config)
        model = experiment.build_model(config)
        start = time.perf_counter()
        model.fit(
            splits.train,
            epochs=-(-config.total_steps // config.steps_per_epoch),
            steps_per_epoch=config.steps_per_epoch,
            shuffle=False,
            verbose=0,
        )
        seconds = time.perf_counter() - start
        results = evaluation.evaluate_adaptation(
            model,
            splits.test,
            step_counts=STEP_COUNTS,
            num_tasks=config.eval_tasks,
        )
        rows.append(
            (
                f"tfmaml MAML, K={shots}",
                {
                    r.steps: f"{r.loss:.3f} +- {r.loss_ci95:.3f}"
                    for r in results
                },
                f"{config.total_steps} steps x {config.meta_batch_size} "
                f"tasks, {seconds:.0f} s",
            )
        )
    for name, figures in PAPER_K5.items():
        rows.append(
            (name + ", K=5", {k: f"{v:.2f}" for k, v in figures.items()}, "")
        )

    common.print_report(
        (
            "model",
            *(f"MSE after {k} step{'s' * (k > 1)}" for k in STEP_COUNTS),
            "training",
        ),
        [
            (name, *(figures[k] for k in STEP_COUNTS), budget)
            for name, figures, budget in rows
        ],
    )


if __name__ == "__main__":
    common.run(main)
