"""Meta-RL on simulators: half-cheetah and Meta-World, beside the anchors.

For a model `python -m tfmaml.train` trained in `--workdir` (its config
given by `--config`), prints:
- the learning curve (per epoch: return before and after the inner step,
  and success rate where the family records it), read from the run's
  TensorBoard logs;
- the return (and success rate) after 0-3 inner steps on the config's
  test tasks (Meta-World: the held-out ones) with 95% CIs, for the model
  and a randomly initialised policy, beside the anchors;
- sampling speed: environment steps/s of the worker pool with 1 and with
  N worker processes (random actions, the config's tasks x episodes), of
  the training step's own rollouts with the policy in the loop, and
  meta-steps/s of `fit`.

Usage:
  python benchmarks/rl_simulators.py --config=configs/cheetah_direction.py \
      --workdir=runs/cheetah_direction [--timed_steps=5] [--rounds=3]
  python benchmarks/rl_simulators.py --config=... --speed_only
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "The run's config file.")
flags.DEFINE_string("workdir", None, "Where tfmaml.train wrote the run.")
flags.DEFINE_integer("timed_steps", 5, "Meta-steps of the timed fit.")
flags.DEFINE_integer("pool_steps", 100, "Steps of the pool speed test.")
flags.DEFINE_string("workers", "1,2", "Worker counts to time.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds of the speed tests.")
flags.DEFINE_bool("speed_only", False, "Skip the curve and evaluation.")
FLAGS = flags.FLAGS

# The original code's result files (cbfinn/maml_rl; 40 tasks x 20
# episodes per meta-step, horizon 200): return after 0 / 1 / 2 / 3 steps.
ANCHORS = {
    "cheetah_direction": {
        "MAML (original)": (-50.7, 293.2, 313.5, 315.7),
        "pretrained (original)": (-43.0, -24.7, -12.8, 19.6),
        "oracle (original)": (442.7,),
    },
    "cheetah_velocity": {
        "MAML (original)": (-129.5, -78.6, -66.6, -60.8),
        "pretrained (original)": (-158.0, -135.4, -128.5, -133.6),
        "oracle (original)": (-54.5,),
    },
}
# Yu et al. 2019, Table 1: MAML success rates, meta-train / meta-test.
METAWORLD_ANCHORS = (
    "MAML (Yu et al. 2019): ML10 44.4% / 31.6%; ML45 40.7% / 39.9%"
)


def learning_curve(workdir):
    """Per-epoch training metrics from the run's TensorBoard events."""
    import tensorflow as tf

    curve = {}
    directory = os.path.join(workdir, "tensorboard", "train")
    for name in sorted(os.listdir(directory)):
        for record in tf.data.TFRecordDataset(os.path.join(directory, name)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag.startswith("epoch_"):
                    number = float(tf.make_ndarray(value.tensor))
                    curve.setdefault(event.step, {})[value.tag[6:]] = number
    return curve


def pool_speed(family, count, steps, workers):
    """Environment steps/s of `family`'s pool with `workers` processes."""
    import numpy as np
    import tensorflow as tf

    family.num_workers = workers
    family.close()
    tasks = family.sample_tasks(count, tf.constant([0, 1], tf.int64)).numpy()
    pool = family.pool
    pool.reset(tasks, np.arange(count))
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (count, family.action_size))
    pool.step(actions)
    start = time.perf_counter()
    for _ in range(steps):
        pool.step(actions)
    rate = count * steps / (time.perf_counter() - start)
    family.close()
    return rate


def _simulate(args):
    """Steps one environment alone for `steps` random actions; steps/s."""
    factory, task, steps, action_size = args
    import numpy as np

    env = factory.make(factory.kind(task))
    factory.set_task(env, task)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, action_size))
    start = time.perf_counter()
    for action in actions:
        if any(env.step(action)[2:4]):  # Terminated or truncated.
            env.reset()
    return steps / (time.perf_counter() - start)


def simulator_speed(family, workers, steps=3000):
    """The hardware's ceiling: environment steps/s of `workers` processes
    each stepping one environment alone (no pool, no TensorFlow)."""
    import multiprocessing

    import tensorflow as tf

    task = family.sample_tasks(1, tf.constant([0, 1], tf.int64)).numpy()[0]
    args = [(family.env_factory(), task, steps, family.action_size)] * workers
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return sum(pool.map(_simulate, args))


def main(argv):
    del argv
    from tfmaml import experiment

    config = FLAGS.config
    experiment.configure_runtime(config)
    splits = experiment.build_splits(config)
    if not FLAGS.speed_only:
        if not FLAGS.workdir:
            raise app.UsageError("--workdir is needed without --speed_only")
        report_quality(config, splits)
    report_speed(config, splits)


def report_quality(config, splits):
    """The learning curve and the returns after 0-3 inner steps."""
    import keras

    from tfmaml import experiment
    from tfmaml import rl
    from tfmaml import rl_tasks

    model = keras.models.load_model(os.path.join(FLAGS.workdir, "model.keras"))
    task_batch = next(iter(splits.test))[rl.task_families.TASKS]
    keras.utils.set_random_seed(config.seed + 1)
    models = {
        "MAML (tfmaml)": model,
        "random init": experiment.build_model(config),
    }
    results = {
        name: rl_tasks.evaluate_rl_returns(m, config, task_batch)
        for name, m in models.items()
    }
    if config.task == "metaworld":
        # Meta-World reports meta-training tasks too: fresh draws of them.
        train_batch = next(
            iter(
                rl.task_batches(
                    model.family, config.eval_tasks, seed=config.seed + 7
                )
            )
        )[rl.task_families.TASKS]
        results["MAML (tfmaml), meta-train tasks"] = (
            rl_tasks.evaluate_rl_returns(model, config, train_batch)
        )
    for m in models.values():
        m.family.close()

    curve = learning_curve(FLAGS.workdir)
    success = "success" in next(iter(curve.values()), {})
    header = ["epoch", "meta-steps", "return before", "return after"]
    header += ["success before", "success after"] if success else []
    rows = []
    for epoch, logs in sorted(curve.items()):
        row = [
            str(epoch + 1),
            str((epoch + 1) * config.steps_per_epoch),
            f"{logs['pre_return']:.1f}",
            f"{logs['return']:.1f}",
        ]
        if success:
            row += [
                f"{100 * logs['pre_success']:.1f}%",
                f"{100 * logs['success']:.1f}%",
            ]
        rows.append(row)
    print(f"## Learning curve ({config.name}, training tasks)")
    common.print_report(header, rows)

    steps = tuple(config.eval_step_counts)
    header = ["model", *(f"after {s} steps" for s in steps)]
    rows = []
    for name, r in results.items():
        cells = [f"{x.mean:.1f} +- {x.ci95:.1f}" for x in r]
        if r[0].success is not None:
            cells = [
                f"{c} ({100 * x.success:.1f}% +- {100 * x.success_ci95:.1f}%)"
                for c, x in zip(cells, r, strict=True)
            ]
        rows.append([name, *cells])
    for name, figures in ANCHORS.get(config.name, {}).items():
        rows.append([name, *(f"{x:.1f}" for x in figures)])
    print(
        f"\n## Return (success rate) after inner steps: {len(task_batch)} "
        f"test tasks x {config.eval_num_trajectories} episodes, 95% CI"
    )
    common.print_report(header, rows)
    if config.task == "metaworld":
        print(METAWORLD_ANCHORS)


def report_speed(config, splits):
    """Sampling speed with 1 and N processes, and meta-steps/s."""
    import tensorflow as tf

    from tfmaml import experiment
    from tfmaml import rl
    from tfmaml import rl_tasks

    family = rl_tasks.build_family(config)
    count = config.meta_batch_size * config.num_trajectories
    workers = [int(w) for w in FLAGS.workers.split(",")]
    rates, alone = {}, {}
    for _ in range(FLAGS.rounds):  # Interleaved: the host's load varies.
        for w in workers:
            rates.setdefault(w, []).append(
                pool_speed(family, count, FLAGS.pool_steps, w)
            )
            alone.setdefault(w, []).append(simulator_speed(family, w))
    timed = experiment.build_model(config)
    train = iter(splits.train)
    timed.fit(splits.train.take(1), verbose=0)  # Traces.
    batch = next(train)
    seeds = batch["seeds"]

    @tf.function
    def sample(tasks, seeds):
        return timed.collect(timed._weights(), tasks, seeds, steps=0)[1]

    sample(batch["tasks"], seeds)
    start = time.perf_counter()
    sample(batch["tasks"], seeds)
    rollout_rate = count * config.horizon / (time.perf_counter() - start)
    start = time.perf_counter()
    timed.fit(splits.train.skip(1).take(FLAGS.timed_steps), verbose=0)
    meta_rate = FLAGS.timed_steps / (time.perf_counter() - start)
    timed.family.close()
    print(f"\n## Sampling speed ({count} environments: tasks x episodes)")
    one, best = min(workers), max(workers)
    rows = []
    for name, measured in (
        ("worker pool, random actions", rates),
        ("simulator alone (one env per process)", alone),
    ):
        for w, values in measured.items():
            rows.append(
                [
                    f"{name}, {w} process(es)",
                    " / ".join(f"{v:,.0f}" for v in values),
                    "",
                ]
            )
        ratios = [
            b / a for a, b in zip(measured[one], measured[best], strict=True)
        ]
        rows.append(
            [
                f"{name}: speed-up, {best} over {one}",
                " / ".join(f"{r:.2f}x" for r in ratios),
                "",
            ]
        )
    rows.append(
        [
            "training rollout (policy in the loop), "
            f"{rl.simulators.default_num_workers()} workers",
            f"{rollout_rate:,.0f}",
            "",
        ]
    )
    rows.append(["fit (sampling, inner step, TRPO)", "", f"{meta_rate:.3f}"])
    common.print_report(["measure", "env steps/s", "meta-steps/s"], rows)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    common.run(main)
