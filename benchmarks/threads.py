"""Meta-training speed with TensorFlow's thread pools as tfmaml leaves them.

TensorFlow's intra-op pool (threads that split one op) is fixed before it
runs anything, so tfmaml can only choose it at import. This measures, per
config, meta-steps per second of `model.fit` in fresh processes with the
intra-op pool at TensorFlow's default (one thread per core) and at one
thread per op (tasks side by side through the inter-op pool), so the
library's default rests on numbers. Each process runs the config's own
training stream and model, `--warmup` untimed meta-steps (tracing), then
the median of `--steps` timed ones; rounds alternate the settings so a
drift of the machine hits both.

`--isa=avx2` caps oneDNN at AVX2 on an AVX-512 machine
(`common.ISA_LIMITS`, as `throughput.py` does).

Usage:
  python benchmarks/threads.py [--configs=sinusoid,omniglot_5way_1shot,...]
      [--rounds=2] [--steps=10] [--warmup=3] [--isa=native,avx2]
      [--data_dir=DIR]
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

DEFAULT_DATA = (
    pathlib.Path(__file__).resolve().parents[2] / "shared/data/omniglot"
)
# The environment variable tfmaml reads at import (see tfmaml.runtime).
SETTINGS = {"TensorFlow's default": "0", "1 thread/op": "1"}
flags.DEFINE_list(
    "configs",
    [
        "sinusoid",
        "omniglot_5way_1shot",
        "omniglot_20way_1shot:maml",
        "navigation2d",
    ],
    "Configs (modules of tfmaml.configs), optionally 'name:variant'.",
)
flags.DEFINE_list("isa", ["native"], "Of " + str(list(common.ISA_LIMITS)))
flags.DEFINE_integer("rounds", 2, "Alternating rounds per config.")
flags.DEFINE_integer("steps", 10, "Timed meta-steps per process.")
flags.DEFINE_integer("warmup", 3, "Untimed meta-steps first.")
flags.DEFINE_string("data_dir", str(DEFAULT_DATA), "Omniglot archives.")
flags.DEFINE_string("child", "", "Internal: time one config.")
FLAGS = flags.FLAGS


def _time_config(spec):
    """Seconds per meta-step (median) of the config's `fit` here."""

    import keras
    import tensorflow as tf

    from tfmaml import experiment

    config = common.load_config(spec)
    if "data_dir" in config:
        config.data_dir = FLAGS.data_dir
    config.intra_op_threads = 0  # Leave the pool as tfmaml set it.
    config.steps_per_execution = 1  # One meta-step per timed call.
    experiment.configure_runtime(config)
    keras.utils.set_random_seed(config.seed)
    splits = experiment.build_splits(config)
    model = experiment.build_model(config)

    class Clock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.start)

    times = []
    model.fit(
        splits.train,
        epochs=1,
        steps_per_epoch=FLAGS.warmup + FLAGS.steps,
        callbacks=[Clock()],
        shuffle=False,
        verbose=0,
    )
    return {
        "seconds": statistics.median(times[FLAGS.warmup :]),
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
    }


def main(argv):
    del argv
    if FLAGS.child:
        print(json.dumps(_time_config(FLAGS.child)))
        return
    unknown = [i for i in FLAGS.isa if i not in common.ISA_LIMITS]
    if unknown:
        raise app.UsageError(
            f"Unknown --isa {unknown}: use {list(common.ISA_LIMITS)}"
        )
    rows = []
    for isa in FLAGS.isa:
        for spec in FLAGS.configs:
            seconds = {label: [] for label in SETTINGS}
            for _ in range(FLAGS.rounds):
                for label, threads in SETTINGS.items():
                    env = {
                        **os.environ,
                        **common.ISA_LIMITS[isa],
                        "TFMAML_INTRA_OP_THREADS": threads,
                    }
                    args = [a for a in sys.argv[1:] if "--child" not in a]
                    output = subprocess.run(
                        [sys.executable, __file__, *args, f"--child={spec}"],
                        capture_output=True,
                        text=True,
                        check=True,
                        env=env,
                    ).stdout
                    result = json.loads(output.strip().splitlines()[-1])
                    seconds[label].append(result["seconds"])
                    print(spec, isa, label, result, flush=True)
            default, one = (statistics.median(s) for s in seconds.values())
            rows.append(
                (
                    isa,
                    spec,
                    *(
                        " / ".join(f"{s:.4g}" for s in rounds)
                        for rounds in seconds.values()
                    ),
                    f"{default / one:.2f}x",
                )
            )
    common.print_report(
        (
            "ISA",
            "config",
            "s / meta-step, TensorFlow's default (rounds)",
            "s / meta-step, 1 thread/op (rounds)",
            "speed-up of 1 thread/op (medians)",
        ),
        rows,
    )


if __name__ == "__main__":
    app.run(main)
