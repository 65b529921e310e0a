"""Episode pipeline throughput next to the model's meta-training speed.

For each Omniglot config, times the `tf.data` episode pipeline alone
(meta-batches/s and tasks/s, after warm-up) and `train_on_batch` of the
config's model (median of timed meta-steps after tracing), and prints the
ratio: the pipeline must be at least 10x faster than the model consumes.

Usage:
  python benchmarks/data.py [--data_dir=DIR] [--batches=300] [--steps=4]
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_string("data_dir", str(common.OMNIGLOT_DATA), "Omniglot archives.")
flags.DEFINE_integer("batches", 300, "Meta-batches read to time the pipeline.")
flags.DEFINE_integer("steps", 4, "Timed meta-training steps per config.")
FLAGS = flags.FLAGS
CONFIGS = ("omniglot_5way_1shot", "omniglot_20way_1shot:maml")


def main(argv):
    del argv

    from tfmaml import experiment

    rows = []
    for name in CONFIGS:
        config = common.load_config(name)
        config.data_dir = FLAGS.data_dir
        start = time.perf_counter()
        splits = experiment.build_splits(config)
        setup = time.perf_counter() - start
        iterator = iter(splits.train)
        for _ in range(20):
            next(iterator)
        start = time.perf_counter()
        for _ in range(FLAGS.batches):
            next(iterator)
        pipeline = FLAGS.batches / (time.perf_counter() - start)

        model = experiment.build_model(config)
        batch = next(iterator)
        model.train_on_batch(*batch)  # Traces.
        times = []
        for _ in range(FLAGS.steps):
            batch = next(iterator)
            start = time.perf_counter()
            model.train_on_batch(*batch)
            times.append(time.perf_counter() - start)
        model_rate = 1.0 / statistics.median(times)
        rows.append((config, setup, pipeline, model_rate))

    table = []
    for config, setup, pipeline, model_rate in rows:
        tasks = config.meta_batch_size
        table.append(
            (
                f"{config.name} (meta-batch {tasks}, "
                f"{config.num_queries} queries/class)",
                f"{setup:.1f} s",
                f"{pipeline * tasks:.0f}",
                f"{model_rate * tasks:.1f}",
                f"{pipeline / model_rate:.0f}x",
            )
        )
    common.print_report(
        (
            "config",
            "load + split + preprocess",
            "pipeline tasks/s",
            "model meta-training tasks/s",
            "pipeline / model",
        ),
        table,
    )


if __name__ == "__main__":
    common.run(main)
