"""Meta-RL on 2D navigation: return after 0-3 inner steps vs the original.

Trains `configs/navigation2d.py` (MAML-TRPO) and its `pretrained` variant
(one policy trained on all tasks with the same budget), then evaluates
both and a randomly initialised policy on 40 fresh test tasks (40 episodes
per step, each inner step adapting on the previous step's episodes), and
prints the returns with 95% CIs beside the figures of the original code's
result files (cbfinn/maml_rl), the wall time, environment steps/s and
meta-steps/s. Writes the return-vs-steps and paths figures.

With `--maml_workdir` / `--pretrained_workdir` it evaluates the models
`python -m tfmaml.train` wrote there (their `model.keras` and training
log) instead of training again; the timing then comes from a short timed
run of the same config.

Usage:
  python benchmarks/rl.py [--steps=300] [--out=workdirs/rl_benchmark]
      [--maml_workdir=DIR --pretrained_workdir=DIR]
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_integer("steps", 300, "Meta-training steps of each model.")
flags.DEFINE_string("maml_workdir", None, "Evaluate this run's model.keras.")
flags.DEFINE_string(
    "pretrained_workdir", None, "Evaluate this run's model.keras."
)
flags.DEFINE_integer("timed_steps", 10, "Steps of the timing run.")
flags.DEFINE_float(
    "pretrained_inner_lr",
    None,
    "Also evaluate the pretrained policy with this first step (later steps "
    "a fifth of it), e.g. one chosen for it on validation tasks: its log "
    "std ends far smaller than MAML's, so MAML's step size overshoots.",
)
flags.DEFINE_string("out", "workdirs/rl_benchmark", "Where figures go.")
flags.DEFINE_float("inner_lr", None, "Override the config's inner rate.")
flags.DEFINE_integer("meta_batch_size", None, "Override the meta-batch.")
FLAGS = flags.FLAGS

# The original code's result files: return after 0 / 1 / 2 / 3 steps.
ORIGINAL = {
    "MAML (original)": (-40.4, -11.7, -3.3, -3.2),
    "pretrained (original)": (-40.8, -19.7, -11.7, -8.5),
    "random init (original)": (-82.7, -58.0, -53.8, -46.8),
}
ORACLE = -2.3


def _train(config, workdir):
    """The trained model (loaded from `workdir`, or trained here) and its
    timing: seconds for `config.total_steps`, meta-steps/s, env steps/s
    (from a timed run of `--timed_steps` after one traced step)."""
    import keras

    from tfmaml import experiment

    keras.utils.set_random_seed(config.seed)
    splits = experiment.build_splits(config)
    model = experiment.build_model(config)
    model.fit(splits.train, steps_per_epoch=1, verbose=0, shuffle=False)
    steps = FLAGS.timed_steps if workdir else config.total_steps - 1
    start = time.perf_counter()
    model.fit(
        splits.train.skip(1),
        epochs=1,
        steps_per_epoch=steps,
        verbose=0 if workdir else 2,
        shuffle=False,
    )
    seconds = time.perf_counter() - start
    if workdir:
        model = keras.models.load_model(os.path.join(workdir, "model.keras"))
        seconds *= (config.total_steps - 1) / steps
    # Per meta-step, (inner steps + 1) x tasks x episodes x horizon.
    env_steps = (
        (config.inner_steps + 1)
        * config.meta_batch_size
        * config.num_trajectories
        * config.horizon
    )
    rate = (config.total_steps - 1) / seconds
    return model, splits, seconds, rate, rate * env_steps


def main(argv):
    del argv
    import keras

    from tfmaml import experiment
    from tfmaml import inner_loop
    from tfmaml import plots
    from tfmaml import rl
    from tfmaml import rl_tasks
    from tfmaml.configs import navigation2d

    os.makedirs(FLAGS.out, exist_ok=True)
    configs = {
        "MAML": navigation2d.get_config(),
        "pretrained": navigation2d.get_config("pretrained"),
    }
    for config in configs.values():
        experiment.configure_runtime(config)
        config.total_steps = FLAGS.steps
        if FLAGS.inner_lr:
            config.inner_lr = FLAGS.inner_lr
        if FLAGS.meta_batch_size:
            config.meta_batch_size = FLAGS.meta_batch_size
    models, timing = {}, {}
    workdirs = {
        "MAML": FLAGS.maml_workdir,
        "pretrained": FLAGS.pretrained_workdir,
    }
    for name, config in configs.items():
        model, splits, seconds, rate, env_rate = _train(config, workdirs[name])
        models[name] = model
        timing[name] = (seconds, rate, env_rate)
    config = configs["MAML"]
    keras.utils.set_random_seed(config.seed + 1)
    random_init = experiment.build_model(config)
    models["random init"] = random_init
    task_batch = next(iter(splits.test))[rl.task_families.TASKS]
    steps = tuple(config.eval_step_counts)
    rules = {}  # Other test-time rules than the config's.
    if FLAGS.pretrained_inner_lr:
        rate = FLAGS.pretrained_inner_lr
        name = f"pretrained, steps {rate:g} then {rate / 5:g}"
        models[name] = models["pretrained"]
        rules[name] = inner_loop.SGD((rate, rate / 5))
    results = {
        name: rl_tasks.evaluate_rl_returns(
            m, config, task_batch, inner_optimizer=rules.get(name)
        )
        for name, m in models.items()
    }
    rows = []
    for name, r in results.items():
        seconds, rate, env_rate = timing.get(name, (0.0, 0.0, 0.0))
        rows.append(
            [
                f"{name} (tfmaml)",
                *(f"{x.mean:.1f} +- {x.ci95:.1f}" for x in r),
                f"{FLAGS.steps if name in timing else 0}",
                (f"{seconds:.0f}" + ("*" if workdirs.get(name) else ""))
                if name in timing
                else "-",
                f"{rate:.2f}" if name in timing else "-",
                f"{env_rate:,.0f}" if name in timing else "-",
            ]
        )
    for name, figures in ORIGINAL.items():
        rows.append(
            [name, *(f"{x:.1f}" for x in figures), "100**", "-", "-", "-"]
        )
    rows.append(
        ["oracle (original)", f"{ORACLE:.1f}", "", "", "", "", "", "", ""]
    )
    header = [
        "model",
        *(f"return after {s}" for s in steps),
        "meta-steps",
        "train s",
        "meta-steps/s",
        "env steps/s",
    ]
    common.print_report(header, rows)
    print(
        "* Estimated from a timed run of --timed_steps steps (the model was "
        "trained by python -m tfmaml.train in its workdir).\n"
        "** The original trained for 100 TRPO iterations of 20 tasks x 20 "
        "episodes (maml_trpo_point.py), evaluated 40 tasks with 40 "
        "episodes per step and step sizes 0.5 then 0.25."
    )
    written = plots.plot_navigation_figures(
        models["MAML"],
        results,
        task_batch,
        FLAGS.out,
        num_trajectories=config.eval_num_trajectories,
        seed=config.seed,
        title="2D navigation",
    )
    print(f"figures: {', '.join(written)}")


if __name__ == "__main__":
    common.run(main)
