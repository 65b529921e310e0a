"""Every algorithm of the MAML family on sinusoid and Omniglot, same budget.

For each algorithm, meta-trains `configs/sinusoid.py` (K=10) for
`--sinusoid_steps` meta-batches and `configs/omniglot_{5,20}way_1shot.py`
(`--ways`) on the Omniglot subset split for `--omniglot_minutes` of wall
time, then prints the 600-task test MSE or accuracy (95% CI) after the
config's test-time inner steps (ProtoNet: none, it has no inner loop),
meta-training tasks/s, and peak memory (RSS). Each run is its own
subprocess, so peak memory is that run's alone.

Omniglot's schedules (MAML++'s annealing, the cosine rate) last
`--omniglot_steps` meta-batches, which is also a cap; by default about the
count the minutes allow at 20 a minute. For an equal-wall-time comparison
pass a cap the minutes cannot reach, so time alone ends every run.

Algorithms: maml, fomaml, reptile (5 inner steps, its usual setting),
meta_sgd, anil, and maml++ (MAML with learned per-layer per-step rates, the
multi-step loss annealed over half the budget, first order for the first
tenth, cosine meta learning rate, per-step batch norm on Omniglot; 2 inner
steps so the multi-step loss has something to weigh), protonet
(prototypical networks: Conv4 without its head as the embedding) and
proto_maml (MAML whose head starts each task at the prototypes).

The papers' figures on full Omniglot (1,200 training characters, not the
subset split's five alphabets), 5-way / 20-way 1-shot: ProtoNets 98.8 / 96.0
(Snell et al. 2017), MAML 98.7 / 95.8 (Finn et al. 2017).

Usage:
  python benchmarks/algorithms.py [--sinusoid_steps=10000]
      [--omniglot_minutes=2] [--omniglot_steps=N] [--ways=5,20]
      [--algorithms=maml,protonet,proto_maml] [--data_dir=DIR]
"""

import json
import math
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

ALGORITHMS = (
    "maml",
    "fomaml",
    "reptile",
    "meta_sgd",
    "anil",
    "maml++",
    "protonet",
    "proto_maml",
)
flags.DEFINE_integer("sinusoid_steps", 10_000, "Sinusoid meta-batches.")
flags.DEFINE_float("omniglot_minutes", 2.0, "Omniglot training wall time.")
flags.DEFINE_integer(
    "omniglot_steps", 0, "Omniglot schedules' length and cap (0: 20/minute)."
)
flags.DEFINE_list("ways", ["5"], "Omniglot ways: 5 and/or 20 (1-shot).")
flags.DEFINE_string("data_dir", str(common.OMNIGLOT_DATA), "Omniglot archives.")
flags.DEFINE_list("algorithms", list(ALGORITHMS), "Algorithms to run.")
flags.DEFINE_list("tasks", ["sinusoid", "omniglot"], "Task families to run.")
flags.DEFINE_string("one", "", "Internal: run one 'task:algorithm:ways'.")
FLAGS = flags.FLAGS


def _config(task, algorithm, ways):
    if task == "sinusoid":
        from tfmaml.configs import sinusoid

        config = sinusoid.get_config()
        config.total_steps = FLAGS.sinusoid_steps
    else:
        from tfmaml.configs import omniglot_5way_1shot
        from tfmaml.configs import omniglot_20way_1shot

        module = {5: omniglot_5way_1shot, 20: omniglot_20way_1shot}[ways]
        # The 20-way config's default is its ProtoNet recipe; MAML's
        # settings are its `maml` variant.
        config = module.get_config("maml" if ways == 20 else None)
        config.data_dir = FLAGS.data_dir
        config.steps_per_epoch = 10
        # For the schedules: about the steps the time budget allows.
        config.total_steps = FLAGS.omniglot_steps or max(
            10, int(FLAGS.omniglot_minutes * 20)
        )
    if algorithm == "maml++":
        config.inner_steps = max(config.inner_steps, 2)
        config.learn_inner_lr = "per_layer_per_step"
        config.multi_step_loss_steps = config.total_steps // 2
        config.first_order_steps = config.total_steps // 10
        config.lr_schedule = "cosine"
        config.per_step_batch_norm = task == "omniglot"
    else:
        config.algorithm = algorithm
    if algorithm == "reptile":
        config.inner_steps = 5
    return config


def _run_one(task, algorithm, ways):
    import keras

    from tfmaml import evaluation
    from tfmaml import experiment

    config = _config(task, algorithm, ways)
    experiment.configure_runtime(config)
    keras.utils.set_random_seed(config.seed)
    splits = experiment.build_splits(config)
    model = experiment.build_model(config)

    start = time.perf_counter()
    model.fit(
        splits.train,
        epochs=-(-config.total_steps // config.steps_per_epoch),
        steps_per_epoch=config.steps_per_epoch,
        callbacks=[common.time_budget(60 * FLAGS.omniglot_minutes)]
        if task == "omniglot"
        else [],
        shuffle=False,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    steps = int(model.optimizer.iterations)
    # At the step count trained for, and at the config's test count.
    counts = sorted({config.inner_steps, config.eval_inner_steps})
    if algorithm == "protonet":
        counts = [0]
    results = evaluation.evaluate_adaptation(
        model, splits.test, step_counts=counts, num_tasks=config.eval_tasks
    )
    peak = common.peak_rss_mib()
    print(
        json.dumps(
            {
                "task": task if task == "sinusoid" else f"omniglot {ways}-way",
                "algorithm": algorithm,
                "train_steps": 0
                if algorithm == "protonet"
                else config.inner_steps,
                "budget": f"{steps} x {config.meta_batch_size} tasks, "
                f"{seconds:.0f} s",
                "tasks_per_s": steps * config.meta_batch_size / seconds,
                "results": [r._asdict() for r in results],
                "peak_mib": peak,
            }
        )
    )


def main(argv):
    del argv
    if FLAGS.one:
        task, algorithm, ways = FLAGS.one.split(":")
        _run_one(task, algorithm, int(ways))
        return
    unknown = set(FLAGS.algorithms) - set(ALGORITHMS)
    if unknown or not set(FLAGS.ways) <= {"5", "20"}:
        raise app.UsageError(
            f"--algorithms must be among {ALGORITHMS} (got {sorted(unknown)})"
            f" and --ways among 5, 20 (got {FLAGS.ways})."
        )
    runs = [
        (task, algorithm, ways)
        for task in FLAGS.tasks
        for ways in (FLAGS.ways if task == "omniglot" else ["5"])
        for algorithm in FLAGS.algorithms
        # Prototypes need classes: Omniglot only.
        if task == "omniglot" or algorithm not in ("protonet", "proto_maml")
    ]
    rows = []
    for task, algorithm, ways in runs:
        args = [a for a in sys.argv[1:] if not a.startswith("--one")]
        one = f"--one={task}:{algorithm}:{ways}"
        output = subprocess.run(
            [sys.executable, __file__, *args, one],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result = json.loads(output.strip().splitlines()[-1])
        print(json.dumps(result), flush=True)
        metric = "; ".join(
            f"{r['steps']} steps: {_format(r)}" for r in result["results"]
        )
        rows.append(
            (
                result["task"],
                algorithm,
                str(result["train_steps"]),
                result["budget"],
                metric,
                f"{result['tasks_per_s']:.1f}",
                f"{result['peak_mib']:.0f}",
            )
        )
    common.print_report(
        (
            "task",
            "algorithm",
            "inner steps (train)",
            "meta-training",
            "test, 600 tasks (95% CI), after k inner steps",
            "tasks/s",
            "peak RSS MiB",
        ),
        rows,
    )
    print(
        "Papers, full Omniglot (1,200 training characters), 5-way / 20-way "
        "1-shot: ProtoNets 98.8% / 96.0%, MAML 98.7% / 95.8%."
    )


def _format(result):
    """MSE or accuracy with its CI, or the step where adaptation diverged
    (a huge but finite loss is flagged too)."""
    if result.get("diverged_at") is not None:
        return (
            f"diverged at step {result['diverged_at']} "
            f"({result['diverged_tasks']} tasks)"
        )
    if not math.isfinite(result["loss"]) or result["loss"] > 1e3:
        return f"diverged (loss {result['loss']:.3g})"
    if result["accuracy"] is None:
        return f"MSE {result['loss']:.3f} +- {result['loss_ci95']:.3f}"
    return (
        f"acc. {100 * result['accuracy']:.1f}% +- "
        f"{100 * result['accuracy_ci95']:.1f}%"
    )


if __name__ == "__main__":
    common.run(main)
