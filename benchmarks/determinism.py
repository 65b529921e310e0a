"""How repeatable is one meta-gradient, call after call, with op determinism?

`config.deterministic` turns on TensorFlow's op determinism so that a
resumed run ends with the weights of an uninterrupted one. One case was
measured not to hold bitwise: second-order MAML with five inner steps
through a Conv4 whose blocks normalise before max-pooling, in
`task_loop="map"` (README, Exact resume). This script is that bisection,
made repeatable: per row, a fresh process builds a small Conv4 (8 filters,
84x84x3 inputs, seed 0) with the row's normalisation and pooling, computes
the meta-gradient of one fixed random meta-batch (4 tasks, 5-way 5-shot,
1 query per class) `--calls` times in one `tf.function`, and counts the
distinct results (bit patterns). One distinct result is repeatable.

Usage:
  python benchmarks/determinism.py [--norms=batch,layer,none]
      [--pools=max,average] [--steps=5] [--task_loops=map]
      [--first_order=false] [--calls=40]
"""

import collections
import hashlib
import itertools
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import flags  # noqa: E402

NORMS = ("batch", "layer", "none")
POOLS = ("max", "average")
flags.DEFINE_list("norms", list(NORMS), "Of " + str(list(NORMS)))
flags.DEFINE_list("pools", list(POOLS), "Of " + str(list(POOLS)))
flags.DEFINE_list("steps", ["5"], "Inner steps, one row each.")
flags.DEFINE_list("task_loops", ["map"], "tfmaml task loops, one row each.")
flags.DEFINE_bool("first_order", False, "First-order MAML.")
flags.DEFINE_integer("calls", 40, "Meta-gradients computed per row.")
flags.DEFINE_string("child", "", "Internal: run one row.")
FLAGS = flags.FLAGS


def _network(norm, pool):
    import keras

    import tfmaml

    layers = [keras.Input((84, 84, 3))]
    for _ in range(4):
        layers.append(keras.layers.Conv2D(8, 3, padding="same"))
        if norm == "batch":
            layers.append(tfmaml.BatchNormalization())
        elif norm == "layer":
            layers.append(keras.layers.LayerNormalization())
        if pool == "max":
            layers.append(keras.layers.MaxPooling2D(2))
        else:
            layers.append(keras.layers.AveragePooling2D(2))
        layers.append(keras.layers.ReLU())
    layers += [keras.layers.Flatten(), keras.layers.Dense(5)]
    return keras.Sequential(layers)


def _run_row(spec):
    """Counts the distinct meta-gradients of one row, in this process."""
    import keras
    import numpy as np
    import tensorflow as tf

    import tfmaml
    from tfmaml.batches import Episode

    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)
    model = tfmaml.MAML(
        _network(spec["norm"], spec["pool"]),
        inner_lr=0.05,
        inner_steps=spec["steps"],
        first_order=spec["first_order"],
        task_loop=spec["task_loop"],
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    tasks = 4

    def labels(per_class):
        return np.tile(np.repeat(np.arange(5), per_class), (tasks, 1))

    episode = Episode(
        tf.constant(rng.random((tasks, 25, 84, 84, 3), dtype=np.float32)),
        tf.constant(labels(5), tf.int32),
        tf.constant(rng.random((tasks, 5, 84, 84, 3), dtype=np.float32)),
        tf.constant(labels(1), tf.int32),
        None,
    )
    meta_gradient = tf.function(
        lambda e: model.compute_meta_gradients(e)[0], jit_compile=False
    )
    results = collections.Counter()
    first = None
    spread = 0.0
    for _ in range(spec["calls"]):
        gradient = [g.numpy() for g in meta_gradient(episode)]
        if first is None:
            first = gradient
        spread = max(
            spread,
            max(
                float(np.abs(a - b).max())
                for a, b in zip(gradient, first, strict=True)
            ),
        )
        digest = hashlib.md5(b"".join(g.tobytes() for g in gradient))
        results[digest.hexdigest()] += 1
    return {
        "distinct": len(results),
        "commonest": results.most_common(1)[0][1],
        "spread": spread,
    }


def _spawn_row(spec):
    """`_run_row(spec)` in a fresh process (its own TensorFlow runtime)."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.child:
        print(json.dumps(_run_row(json.loads(FLAGS.child))))
        return
    for name, values, known in (
        ("norms", FLAGS.norms, NORMS),
        ("pools", FLAGS.pools, POOLS),
    ):
        unknown = [v for v in values if v not in known]
        if unknown:
            raise ValueError(f"Unknown --{name} {unknown}: use {list(known)}")
    order = "first" if FLAGS.first_order else "second"
    rows = []
    for task_loop, steps, norm, pool in itertools.product(
        FLAGS.task_loops, map(int, FLAGS.steps), FLAGS.norms, FLAGS.pools
    ):
        result = _spawn_row(
            dict(
                norm=norm,
                pool=pool,
                steps=steps,
                task_loop=task_loop,
                first_order=FLAGS.first_order,
                calls=FLAGS.calls,
            )
        )
        rows.append(
            [
                task_loop,
                str(steps),
                order,
                norm,
                pool,
                f"{result['distinct']} / {FLAGS.calls}",
                str(result["commonest"]),
                f"{result['spread']:.1e}",
            ]
        )
    common.print_report(
        [
            "task loop",
            "inner steps",
            "order",
            "normalisation",
            "pooling",
            "distinct results / calls",
            "commonest result's calls",
            "largest difference from the first",
        ],
        rows,
    )


if __name__ == "__main__":
    common.run(main)
