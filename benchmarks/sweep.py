"""A documented grid over one config field, scored on validation classes.

For each value of `--field`, meta-trains the config (a module of
`tfmaml.configs` with an optional variant, e.g.
`omniglot_20way_1shot:maml`) for `--minutes` of wall time in its own
process, then evaluates on `--tasks` tasks of the validation classes (for
the Omniglot subset split: a fifth of the training alphabets' characters,
held out) after the config's test-time inner steps.
The test alphabets are never touched, so a value picked here can be
reported on them afterwards without having been tuned on them.

Usage:
  python benchmarks/sweep.py --config=omniglot_20way_1shot:maml --field=inner_lr
      --values=0.05,0.1,0.3,1.0 [--minutes=5] [--tasks=600]
      [--set=field=value,...] [--data_dir=DIR]
"""

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_string(
    "config", "omniglot_20way_1shot", "A tfmaml.configs module[:variant]."
)
flags.DEFINE_string("field", "inner_lr", "The config field to sweep.")
flags.DEFINE_list("values", ["0.05", "0.1", "0.3", "1.0"], "Its values.")
flags.DEFINE_list("set", [], "Fixed overrides, 'field=value'.")
flags.DEFINE_float("minutes", 5.0, "Meta-training wall time per value.")
flags.DEFINE_integer("tasks", 600, "Validation tasks per evaluation.")
flags.DEFINE_string("data_dir", str(common.OMNIGLOT_DATA), "Data directory.")
flags.DEFINE_string("one", "", "Internal: run one value.")
FLAGS = flags.FLAGS


def _run_one(value):

    import keras

    from tfmaml import evaluation
    from tfmaml import experiment

    config = common.load_config(
        FLAGS.config, [*FLAGS.set, f"{FLAGS.field}={value!r}"], FLAGS.data_dir
    )
    config.total_steps = 1_000_000  # Time alone ends the run.
    config.validation_batches = -(-FLAGS.tasks // config.meta_batch_size)
    experiment.configure_runtime(config)
    keras.utils.set_random_seed(config.seed)
    splits = experiment.build_splits(config)
    model = experiment.build_model(config)
    start = time.perf_counter()
    model.fit(
        splits.train,
        epochs=1_000_000,
        steps_per_epoch=10,
        callbacks=[common.time_budget(60 * FLAGS.minutes)],
        shuffle=False,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    steps = int(model.optimizer.iterations)
    results = evaluation.evaluate_adaptation(
        model,
        splits.validation,
        step_counts=(0,)
        if config.get("algorithm") == "protonet"
        else (config.eval_inner_steps,),
        num_tasks=FLAGS.tasks,
    )
    print(
        json.dumps(
            {
                "budget": f"{steps} x {config.meta_batch_size} tasks, "
                f"{seconds:.0f} s",
                "results": [r._asdict() for r in results],
            }
        )
    )


def main(argv):
    del argv
    if FLAGS.one:
        _run_one(common.parse_value(FLAGS.one))
        return
    for value in FLAGS.values:  # Bad fields fail here.
        common.load_config(FLAGS.config, [*FLAGS.set, f"{FLAGS.field}={value}"])
    rows = []
    for text in FLAGS.values:
        args = [a for a in sys.argv[1:] if not a.startswith("--one")]
        output = subprocess.run(
            [sys.executable, __file__, *args, f"--one={text}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result = json.loads(output.strip().splitlines()[-1])
        print(text, json.dumps(result), flush=True)
        for r in result["results"]:
            if r["diverged_at"] is not None:
                score = f"diverged at step {r['diverged_at']}"
            else:
                score = (
                    f"{100 * r['accuracy']:.1f}% +- "
                    f"{100 * r['accuracy_ci95']:.1f}%"
                    if r["accuracy"] is not None
                    else f"loss {r['loss']:.3f} +- {r['loss_ci95']:.3f}"
                )
            rows.append(
                (
                    f"{FLAGS.field}={text}",
                    result["budget"],
                    str(r["steps"]),
                    score,
                )
            )
    common.print_report(
        (
            "value",
            "meta-training",
            "inner steps (test)",
            f"validation, {FLAGS.tasks} tasks (95% CI)",
        ),
        rows,
    )


if __name__ == "__main__":
    common.run(main)
