"""The cost of adapting to one task after another (the personalisation use).

For the sinusoid MLP (2x40, K=10, 10 inner steps) and a small Conv4 (16
filters, 28x28x1, 5-way 1-shot, 3 inner steps), prints the time of the
1st and the 100th call of
- the inner loop alone: `model.adapted_weights` in one `tf.function`, the
  floor any way of adapting pays;
- `model.adapt_and_predict(support_x, support_y, query_x)`: the inner loop
  and the query predictions, no copy of the network;
- `model.adapt(support_x, support_y)(query_x)`: a new Keras copy each call;
and the ratio of the 100th call to the inner loop's, the traces kept, and
the process's resident memory after 100 and after `--calls` calls of
`adapt_and_predict` (each call a new task).

Usage:
  python benchmarks/adaptation.py [--calls=1000] [--repeats=5]
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_integer("calls", 1000, "Calls of the memory test.")
flags.DEFINE_integer("repeats", 5, "Calls timed around the 100th (median).")
FLAGS = flags.FLAGS


def rss_mib() -> float:
    """This process's resident memory now (`VmRSS`), MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("No VmRSS in /proc/self/status")


def workloads():
    import keras
    import numpy as np

    import tfmaml

    rng = np.random.default_rng(0)
    sinusoid = tfmaml.MAML(
        tfmaml.networks.mlp((1,), 1, hidden_units=(40, 40)),
        inner_lr=0.01,
        eval_inner_steps=10,
    )
    sinusoid.compile(keras.optimizers.Adam(1e-3), loss="mse")

    def sinusoid_task():
        x = rng.uniform(-5, 5, (10, 1)).astype("float32")
        return x, np.sin(x).astype("float32"), x

    conv4 = tfmaml.MAML(
        tfmaml.networks.conv4((28, 28, 1), 5, filters=16),
        inner_lr=0.4,
        eval_inner_steps=3,
    )
    conv4.compile(
        keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )

    def conv4_task():
        x = rng.random((5, 28, 28, 1), "float32")
        labels = np.arange(5, dtype="int32")
        return x, labels, rng.random((5, 28, 28, 1), "float32")

    return {
        "sinusoid MLP, 10 steps": (sinusoid, sinusoid_task),
        "Conv4 16 filters, 5 images, 3 steps": (conv4, conv4_task),
    }


def timed(function, make_task, calls):
    """Seconds of each of `calls` calls, each on a new task."""
    times = []
    for _ in range(calls):
        task = make_task()
        start = time.perf_counter()
        result = function(*task)
        for value in result if isinstance(result, list) else [result]:
            value.numpy()  # Waits for the op to finish.
        times.append(time.perf_counter() - start)
    return times


def measure(name, model, make_task, rows, memory_rows):
    """Adds `model`'s rows: the ways' call times, traces and memory."""
    import tensorflow as tf

    steps = model.eval_inner_steps
    inner_loop = tf.function(
        lambda x, y: model.adapted_weights(x, y, steps), jit_compile=False
    )
    ways = {
        "inner loop alone": lambda x, y, q: inner_loop(x, y),
        "adapt_and_predict": model.adapt_and_predict,
        "adapt(...)(query_x)": lambda x, y, q: model.adapt(x, y)(q),
    }
    results = {}
    for way, function in ways.items():
        times = timed(function, make_task, 100 + FLAGS.repeats)
        results[way] = (times[0], statistics.median(times[99:]))
    floor = results["inner loop alone"][1]
    for way, (first, hundredth) in results.items():
        rows.append(
            [
                name,
                way,
                f"{first * 1e3:.1f}",
                f"{hundredth * 1e3:.2f}",
                f"{hundredth / floor:.2f}x",
            ]
        )
    traces = model.cached_function(
        ("adapt_and_predict", steps), None
    ).experimental_get_tracing_count()
    before = rss_mib()
    timed(model.adapt_and_predict, make_task, FLAGS.calls)
    memory_rows.append(
        [
            name,
            str(traces),
            f"{before:.0f}",
            f"{rss_mib():.0f}",
            str(FLAGS.calls),
        ]
    )


def main(argv):
    del argv
    rows, memory_rows = [], []
    for name, (model, make_task) in workloads().items():
        measure(name, model, make_task, rows, memory_rows)
    print("## Adapting to one task after another")
    common.print_report(
        ["network", "way", "1st call ms", "100th call ms", "vs inner loop"],
        rows,
    )
    print()
    print("## adapt_and_predict: traces and resident memory")
    common.print_report(
        [
            "network",
            "traces",
            f"RSS MiB after {100 + FLAGS.repeats} calls",
            "RSS MiB after the further calls",
            "further calls",
        ],
        memory_rows,
    )


if __name__ == "__main__":
    common.run(main)
