"""Meta-training speed with TensorFlow's runtime as tfmaml leaves it.

TensorFlow's intra-op pool (threads that split one op) is fixed before it
runs anything, and its oneDNN switch as it is imported, so tfmaml can only
choose them at import (`tfmaml.runtime`). This measures, per config,
seconds per meta-step of `model.fit` in fresh processes with one setting
(`--knob`) at TensorFlow's default and at tfmaml's, so the library's
default rests on numbers: `threads`, the intra-op pool at TensorFlow's
default (one thread per core) vs one thread per op (tasks side by side
through the inter-op pool); `onednn`, `TF_ENABLE_ONEDNN_OPTS=0` vs `=1`
(TensorFlow turns oneDNN on by itself only on CPUs with AVX-512 VNNI/BF16
or AMX, so on others the two differ); `bias_gradient`, TensorFlow's
`BiasAddGrad` (which oneDNN merges into the filter gradient) vs the summed
bias gradient of `tfmaml.bias_gradients`. Each process runs the config's own
training stream and model, `--warmup` untimed meta-steps (tracing), then
the median of `--steps` timed ones; rounds alternate the settings so a
drift of the machine hits both.

`--isa=avx2` caps oneDNN at AVX2 on an AVX-512 machine
(`common.ISA_LIMITS`, as `throughput.py` does).

Usage:
  python benchmarks/threads.py [--configs=sinusoid,omniglot_5way_1shot,...]
      [--knob=threads|onednn|bias_gradient] [--rounds=2] [--steps=10]
      [--warmup=3] [--isa=native,avx2] [--data_dir=DIR]
"""

import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

# Per knob: TensorFlow's default, then tfmaml's, as the environment of the
# process (variables read at import, see tfmaml.runtime).
KNOBS = {
    "threads": {
        "TensorFlow's default": {"TFMAML_INTRA_OP_THREADS": "0"},
        "1 thread/op": {"TFMAML_INTRA_OP_THREADS": "1"},
    },
    "onednn": {
        "oneDNN off": {"TF_ENABLE_ONEDNN_OPTS": "0"},
        "oneDNN on": {"TF_ENABLE_ONEDNN_OPTS": "1"},
    },
    "bias_gradient": {
        "TensorFlow's BiasAddGrad": {"TFMAML_SUMMED_BIAS_GRADIENTS": "0"},
        "summed": {"TFMAML_SUMMED_BIAS_GRADIENTS": "1"},
    },
}
flags.DEFINE_enum("knob", "threads", list(KNOBS), "The setting compared.")
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
flags.DEFINE_string("data_dir", str(common.OMNIGLOT_DATA), "Omniglot archives.")
flags.DEFINE_string("child", "", "Internal: time one config.")
FLAGS = flags.FLAGS


def _time_config(spec):
    """Seconds per meta-step (median) of the config's `fit` here."""

    import keras
    import tensorflow as tf

    from tfmaml import experiment
    from tfmaml import runtime

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
        "onednn": runtime.onednn_enabled(),
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
    settings = KNOBS[FLAGS.knob]
    rows = []
    for isa in FLAGS.isa:
        for spec in FLAGS.configs:
            seconds = {label: [] for label in settings}
            for _ in range(FLAGS.rounds):
                for label, environment in settings.items():
                    env = {
                        **os.environ,
                        **common.ISA_LIMITS[isa],
                        **environment,
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
            default, chosen = (statistics.median(s) for s in seconds.values())
            rows.append(
                (
                    isa,
                    spec,
                    *(
                        " / ".join(f"{s:.4g}" for s in rounds)
                        for rounds in seconds.values()
                    ),
                    f"{default / chosen:.2f}x",
                )
            )
    default, chosen = settings
    common.print_report(
        (
            "ISA",
            "config",
            f"s / meta-step, {default} (rounds)",
            f"s / meta-step, {chosen} (rounds)",
            f"speed-up of {chosen} (medians)",
        ),
        rows,
    )


if __name__ == "__main__":
    common.run(main)
