"""Leave one alphabet out: arms of a config (each a set of overrides)
scored on every training alphabet in turn.

Why. Choosing a recipe's levers on one held-out alphabet (Balinese) went
against the test alphabets four times in RESULTS.md (128 filters, wider
last blocks, 42x42 inputs, a fitted head), and two seeds of one lever
differ by more than most levers gain. Holding out each of the subset
split's five training alphabets in turn (the other four train) gives five
validation scores per arm, each within one alphabet, as the hard half of
the test is. Runs of the same alphabet and seed draw the same validation
tasks, so each arm's difference to the first arm is paired; the summary
gives its mean with a Student's t interval over the (alphabet, seed)
pairs. The test alphabets are never touched.

Each run is its own process: the config (`pretrain_on_validation` off,
so the held-out alphabet stays unseen), its pretraining and its
`total_steps` of episodes, then `--tasks` validation tasks scored at the
config's last test-time step count. `--jobs=2` runs two at a time with
the cores split between them (`intra_op_threads`), the two arms of one
alphabet side by side when there are two.

Usage:
  python benchmarks/held_out.py --config=omniglot_20way_1shot \
      --set=ensemble_size=1,pretrain_steps=2000,support_views=0,query_views=0 \
      --arms="mixed:,grouped:pretrain_group_by=alphabet;\
pretrain_group_fraction=0.5" \
      [--seeds=0] [--alphabets=Balinese,...] [--tasks=300] [--jobs=1]
      [--data_dir=DIR]

An arm is `name:field=value;field=value` (nothing after the colon: the
config as `--set` leaves it; a dotted field reaches into a nested one,
e.g. `augmentation.shift=0.15`); the first arm is the reference.
"""

import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import flags  # noqa: E402

# The training alphabets of the Omniglot subset split (images_background_
# small1; see ../shared/data/omniglot/README.md).
TRAINING_ALPHABETS = ("Balinese", "Early_Aramaic", "Greek", "Korean", "Latin")
flags.DEFINE_string(
    "config", "omniglot_20way_1shot", "A tfmaml.configs module[:variant]."
)
flags.DEFINE_list(
    "arms", ["config:"], "'name:field=value;...', the first the reference."
)
flags.DEFINE_list("set", [], "Overrides of every arm, 'field=value'.")
flags.DEFINE_list("alphabets", list(TRAINING_ALPHABETS), "Held out in turn.")
flags.DEFINE_list("seeds", ["0"], "Seeds of every (arm, alphabet).")
flags.DEFINE_integer("tasks", 300, "Validation tasks per run.")
flags.DEFINE_integer("jobs", 1, "Runs at a time, the cores split.")
flags.DEFINE_string("data_dir", str(common.OMNIGLOT_DATA), "Data directory.")
flags.DEFINE_string("one", "", "Internal: one run, as JSON.")
FLAGS = flags.FLAGS


def _run_one(run):
    import keras

    from tfmaml import config_pretraining
    from tfmaml import evaluation
    from tfmaml import experiment
    from tfmaml import runtime

    config = common.load_config(
        FLAGS.config, FLAGS.set + _arms()[run["arm"]], FLAGS.data_dir
    )
    config.validation_alphabet = run["alphabet"]
    config.seed = int(run["seed"])
    config.pretrain_on_validation = False
    config.validation_batches = -(-FLAGS.tasks // config.meta_batch_size)
    if FLAGS.jobs > 1:
        config.intra_op_threads = max(1, runtime.usable_cores() // FLAGS.jobs)
    experiment.configure_runtime(config)
    keras.utils.set_random_seed(config.seed)
    splits = experiment.build_splits(config)
    model = experiment.build_model(config)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        pretrained = config_pretraining.pretrain(model, config, workdir)
    if config.total_steps:
        model.fit(
            splits.train,
            epochs=-(-config.total_steps // config.steps_per_epoch),
            steps_per_epoch=config.steps_per_epoch,
            shuffle=False,
            verbose=0,
        )
    minutes = (time.perf_counter() - start) / 60
    (result,) = evaluation.evaluate_adaptation(
        model,
        splits.validation,
        step_counts=experiment.test_step_counts(config)[-1:],
        num_tasks=FLAGS.tasks,
    )
    print(
        json.dumps(
            {
                **run,
                "pretrained": pretrained,
                "episodes": config.total_steps,
                "minutes": minutes,
                "accuracy": result.accuracy,
                "accuracy_ci95": result.accuracy_ci95,
            }
        )
    )


def _run_all(runs):
    """Runs every run, `--jobs` at a time; returns their results in order."""
    args = [a for a in sys.argv[1:] if not a.startswith("--one")]
    commands = [
        [sys.executable, __file__, *args, f"--one={json.dumps(run)}"]
        for run in runs
    ]
    results = {}
    for index, output in common.run_at_a_time(
        commands, FLAGS.jobs, lambda i: f"A run failed: {runs[i]}"
    ):
        results[index] = json.loads(output.strip().splitlines()[-1])
        print(json.dumps(results[index]), flush=True)
    return [results[i] for i in range(len(runs))]


def _arms():
    """`--arms` as {name: ["field=value", ...]}, in order."""
    arms = {}
    for arm in FLAGS.arms:
        name, colon, overrides = arm.partition(":")
        overrides = [o for o in overrides.split(";") if o]
        if (
            not colon
            or not name
            or name in arms
            or not all("=" in o for o in overrides)
        ):
            raise ValueError(
                "--arms: each arm is 'name:field=value;field=value' with a "
                f"name of its own; received {arm!r}."
            )
        arms[name] = overrides
    return arms


def _paired_summary(results, arms):
    """Per arm: mean accuracy, and the mean paired difference to the first
    arm over (alphabet, seed) with its Student's t interval."""
    by_arm = {
        arm: {
            (r["alphabet"], r["seed"]): r["accuracy"]
            for r in results
            if r["arm"] == arm
        }
        for arm in arms
    }
    reference = by_arm[arms[0]]
    rows = []
    for arm in arms:
        scores = by_arm[arm]
        cells = [f"{100 * statistics.fmean(scores.values()):.2f}%"]
        if arm == arms[0]:
            cells.append("")
        else:
            diffs = [scores[k] - reference[k] for k in reference]
            half = common.t_interval(diffs)
            cells.append(
                f"{100 * statistics.fmean(diffs):+.2f} +- {100 * half:.2f}"
            )
        rows.append((arm, str(len(scores)), *cells))
    return rows


def main(argv):
    del argv
    if FLAGS.one:
        _run_one(json.loads(FLAGS.one))
        return
    overrides_of = _arms()
    arms = list(overrides_of)
    for overrides in overrides_of.values():  # Bad fields fail here.
        common.load_config(FLAGS.config, FLAGS.set + overrides)
    pairs = len(FLAGS.alphabets) * len(FLAGS.seeds)
    if len(arms) > 1 and not 2 <= pairs <= len(common.T95) + 1:
        raise ValueError(
            "--alphabets x --seeds: the paired interval needs 2 to "
            f"{len(common.T95) + 1} (alphabet, seed) pairs; received {pairs}."
        )
    runs = [
        {"arm": arm, "alphabet": alphabet, "seed": seed}
        for seed in FLAGS.seeds
        for alphabet in FLAGS.alphabets
        for arm in arms
    ]
    results = _run_all(runs)
    common.print_report(
        (
            "arm",
            "held-out alphabet",
            "seed",
            "pretraining steps",
            "minutes",
            f"validation, {FLAGS.tasks} tasks (95% CI)",
        ),
        [
            (
                r["arm"],
                r["alphabet"],
                str(r["seed"]),
                " / ".join(map(str, r["pretrained"])) or "0",
                f"{r['minutes']:.1f}",
                f"{100 * r['accuracy']:.2f}% +- "
                f"{100 * r['accuracy_ci95']:.2f}%",
            )
            for r in results
        ],
    )
    print()
    common.print_report(
        (
            "arm",
            "runs",
            "mean validation",
            f"paired difference to {arms[0]} (95% CI)",
        ),
        _paired_summary(results, arms),
    )


if __name__ == "__main__":
    common.run(main)
