"""Omniglot few-shot accuracy after meta-training on a stated time budget.

Meta-trains `configs/omniglot_5way_1shot.py` and
`configs/omniglot_20way_1shot.py:maml` (MAML's settings; `--configs`
picks others) on the split by alphabet of the two small background
subsets (`../shared/data/omniglot`), each for `--minutes` of wall time,
then prints the test accuracy over 600 tasks of unseen alphabets with 95%
confidence intervals after 0, 1, 3, 5 and 10 inner steps (a ProtoNet:
after 0).

`--precisions=float32,mixed_bfloat16` trains each config in both
precisions; with `--max_steps` they stop at the same meta-batch count, so
their accuracies compare at equal training.

`--seeds=0,1,2` runs each config as a user does instead, to its own end
(its `total_steps`, schedule and early stopping): `python -m tfmaml.train`
once per seed in a fresh process, `--parallel` of them at a time. It
prints each seed's meta-training (steps and minutes of `fit`) and test
accuracy on random and on within-alphabet episodes, then the mean over
seeds with a 95% confidence interval (Student's t over the seeds' means).
A config is a module of `tfmaml.configs` with an optional variant
(`omniglot_20way_1shot:maml`). With `--parallel` above 1 the runs share
the cores: their minutes are not the config's wall time on an idle machine,
but their accuracies are (training is deterministic and ends at a step
count, not a time).

Usage:
  python benchmarks/omniglot.py [--minutes=15] [--max_steps=0]
      [--precisions=float32] [--data_dir=DIR]
  python benchmarks/omniglot.py --configs=omniglot_20way_1shot
      --seeds=0,1,2 [--parallel=1] [--out=DIR] [--data_dir=DIR]
"""

import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_float("minutes", 15.0, "Meta-training wall time per config.")
flags.DEFINE_string("data_dir", str(common.OMNIGLOT_DATA), "Omniglot archives.")
flags.DEFINE_list(
    "configs",
    ["omniglot_5way_1shot", "omniglot_20way_1shot:maml"],
    "Configs to run.",
)
flags.DEFINE_integer("max_steps", 0, "Stop after this many meta-batches.")
flags.DEFINE_list("precisions", ["float32"], "Keras dtype policies to run.")
flags.DEFINE_list("seeds", [], "Run each config to its end per seed.")
flags.DEFINE_integer("parallel", 1, "With --seeds: runs at a time.")
flags.DEFINE_string("out", "", "With --seeds: workdirs (default: a temp dir).")
FLAGS = flags.FLAGS


def _train_command(config, seed, workdir):
    module, _, variant = config.partition(":")
    path = pathlib.Path(__file__).resolve().parents[1] / "configs"
    return [
        sys.executable,
        "-m",
        "tfmaml.train",
        f"--config={path / module}.py" + (f":{variant}" if variant else ""),
        f"--config.seed={seed}",
        f"--config.data_dir={FLAGS.data_dir}",
        f"--workdir={workdir}",
        f"--export_dir={workdir}/export",
        "--fit_verbose=0",
    ]


def _seeds_report():
    out = pathlib.Path(FLAGS.out or tempfile.mkdtemp(prefix="omniglot_"))
    runs = [(c, int(s)) for c in FLAGS.configs for s in FLAGS.seeds]
    workdirs = [out / f"{c.replace(':', '_')}_seed{s}" for c, s in runs]
    commands = [
        _train_command(*run, w) for run, w in zip(runs, workdirs, strict=True)
    ]
    for command in commands:
        print("$", " ".join(command), flush=True)
    done = {}
    for index, _ in common.run_at_a_time(
        commands,
        FLAGS.parallel,
        lambda i: f"{runs[i]} failed; its log: {workdirs[i] / 'log.txt'}",
    ):
        done[runs[index]] = (
            json.loads((workdirs[index] / "training.json").read_text()),
            json.loads((workdirs[index] / "evaluation.json").read_text()),
        )
        print(runs[index], json.dumps(done[runs[index]]), flush=True)
    kinds = sorted({k for _, figures in done.values() for k in figures})
    rows, by_config = [], {}
    for config, seed in runs:
        training, figures = done[(config, seed)]
        cells = []
        for kind in kinds:
            last = figures[kind][-1]  # The most inner steps evaluated.
            by_config.setdefault((config, kind), []).append(last["accuracy"])
            cells.append(
                f"{100 * last['accuracy']:.1f}% +- "
                f"{100 * last['accuracy_ci95']:.1f}% ({last['steps']} steps)"
            )
        rows.append(
            (
                config,
                str(seed),
                f"{training['steps']} steps, "
                f"{training['seconds'] / 60:.1f} min",
                *cells,
            )
        )
    for config in FLAGS.configs:
        cells = []
        for kind in kinds:
            values = by_config[(config, kind)]
            mean = statistics.fmean(values)
            half = common.t_interval(values)
            cells.append(f"{100 * mean:.1f}% +- {100 * half:.1f}%")
        rows.append((config, "mean over seeds (95% CI)", "", *cells))
    print()
    common.print_report(
        ("config", "seed", "meta-training", *(f"test, {k}" for k in kinds)),
        rows,
    )
    print(f"Workdirs: {out}")


def main(argv):
    del argv
    if FLAGS.seeds:
        if len(FLAGS.seeds) > len(common.T95) + 1:
            raise ValueError(
                f"--seeds: at most {len(common.T95) + 1} seeds (the Student's "
                f"t table's reach); received {len(FLAGS.seeds)}."
            )
        _seeds_report()
        return

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
        config = common.load_config(name)
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
            step_counts=experiment.test_step_counts(config),
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
    common.run(main)
