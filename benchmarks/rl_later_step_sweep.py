"""Picks the step size of later inner steps for meta-RL evaluation on
validation tasks (never the test tasks).

Loads a navigation model trained by `python -m tfmaml.train
--config=configs/navigation2d.py` and evaluates, on 40 validation tasks
(the config's validation stream, batches 0 and 1; 40 episodes per step),
the return after 0-3 inner steps with a first step of `inner_lr` and each
later one of every candidate.

Usage:
  python benchmarks/rl_later_step_sweep.py --workdir=workdirs/navigation2d
      [--rates=0.5,0.25,0.1,0.05]
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_string("workdir", "workdirs/navigation2d", "The trained run.")
flags.DEFINE_list("rates", ["0.5", "0.25", "0.1", "0.05"], "Later rates.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import keras
    import tensorflow as tf

    from tfmaml import experiment
    from tfmaml import inner_loop
    from tfmaml import rl
    from tfmaml.configs import navigation2d

    config = navigation2d.get_config()
    config.validation_batches = 2
    tasks = tf.concat(
        [
            b[rl.task_families.TASKS]
            for b in experiment.build_splits(config).validation
        ],
        axis=0,
    )
    model = keras.models.load_model(os.path.join(FLAGS.workdir, "model.keras"))
    rows = []
    for rate in map(float, FLAGS.rates):
        results = rl.evaluate_returns(
            model,
            tasks,
            num_trajectories=config.eval_num_trajectories,
            seed=7,
            inner_optimizer=inner_loop.SGD((config.inner_lr, rate)),
        )
        rows.append(
            [f"{config.inner_lr}, then {rate}"]
            + [f"{r.mean:.2f} +- {r.ci95:.2f}" for r in results]
        )
    common.print_report(
        ["inner steps' sizes", *(f"after {s}" for s in (0, 1, 2, 3))], rows
    )


if __name__ == "__main__":
    common.run(main)
