"""Omniglot few-shot accuracy after meta-training on a stated time budget.

Meta-trains `configs/omniglot_5way_1shot.py` and
`configs/omniglot_20way_1shot.py` on the split by alphabet of the two small
background subsets (`../shared/data/omniglot`), each for `--minutes` of wall
time, then prints the test accuracy over 600 tasks of unseen alphabets with
95% confidence intervals after 0, 1, 3, 5 and 10 inner steps.

`--precisions=float32,mixed_bfloat16` trains each config in both
precisions; with `--max_steps` they stop at the same meta-batch count, so
their accuracies compare at equal training.

Usage:
  python benchmarks/omniglot.py [--minutes=15] [--max_steps=0]
      [--precisions=float32] [--data_dir=DIR]
"""

import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

DEFAULT_DATA = (
    pathlib.Path(__file__).resolve().parents[2] / "shared/data/omniglot"
)
flags.DEFINE_float("minutes", 15.0, "Meta-training wall time per config.")
flags.DEFINE_string("data_dir", str(DEFAULT_DATA), "Omniglot archives.")
flags.DEFINE_list(
    "configs",
    ["omniglot_5way_1shot", "omniglot_20way_1shot"],
    "Configs to run.",
)
flags.DEFINE_integer("max_steps", 0, "Stop after this many meta-batches.")
flags.DEFINE_list("precisions", ["float32"], "Keras dtype policies to run.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import importlib

    import keras
    import tensorflow as tf

    from tfmaml import evaluation
    from tfmaml import experiment

    class TimeBudget(keras.callbacks.Callback):
        def __init__(self, seconds):
            super().__init__()
            self.seconds, self.steps = seconds, 0

        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if time.perf_counter() - self.start > self.seconds or (
                self.steps == FLAGS.max_steps
            ):
                self.model.stop_training = True

    # As the Omniglot configs set it (thread pools are fixed once TF runs).
    tf.config.threading.set_intra_op_parallelism_threads(1)
    runs = [(n, p) for n in FLAGS.configs for p in FLAGS.precisions]
    rows = []
    for name, precision in runs:
        config = importlib.import_module(f"tfmaml.configs.{name}").get_config()
        config.data_dir = FLAGS.data_dir
        config.precision = precision
        keras.config.set_dtype_policy(precision)
        keras.utils.set_random_seed(config.seed)
        splits = experiment.build_splits(config)
        model = experiment.build_model(config)
        budget = TimeBudget(60 * FLAGS.minutes)
        start = time.perf_counter()
        model.fit(
            splits.train,
            epochs=10_000,
            steps_per_epoch=10,
            callbacks=[budget],
            shuffle=False,
            verbose=0,
        )
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        results = evaluation.evaluate_adaptation(
            model,
            splits.test,
            step_counts=tuple(config.eval_step_counts),
            num_tasks=config.eval_tasks,
        )
        eval_seconds = time.perf_counter() - start
        rows.append((config, budget.steps, seconds, eval_seconds, results))
        print(
            f"{name} {precision}: {budget.steps} meta-batches in "
            f"{seconds:.0f} s",
            flush=True,
        )
        print(evaluation.format_results(results), flush=True)

    steps = sorted({r.steps for row in rows for r in row[4]})
    table = []
    for config, done, seconds, eval_seconds, results in rows:
        by_steps = {r.steps: r for r in results}
        table.append(
            (
                f"{config.name} {config.precision} (train "
                f"{config.inner_steps} / test {config.eval_inner_steps} "
                "steps)",
                f"{done} x {config.meta_batch_size} tasks, "
                f"{seconds / 60:.1f} min (+{eval_seconds:.0f} s eval)",
                *(
                    f"{100 * by_steps[s].accuracy:.1f}% +- "
                    f"{100 * by_steps[s].accuracy_ci95:.1f}%"
                    if s in by_steps
                    else "-"
                    for s in steps
                ),
            )
        )
    print()
    common.print_report(
        ("config", "meta-training", *(f"acc. after {s} steps" for s in steps)),
        table,
    )


if __name__ == "__main__":
    app.run(main)
