"""TensorFlow's thread pools as tfmaml leaves them: one thread per op.

MAML's meta-batch is many small, independent tasks. TensorFlow's default
gives every op all cores (its intra-op pool), so the small convolutions of
one task at a time share the cores and wait on each other; with one thread
per op, the inter-op pool runs tasks side by side, one per core. Measured
by `benchmarks/threads.py` and `benchmarks/throughput.py` (RESULTS.md):
faster on every config and CPU level tried, so it is the default of the
library, not only of the configs.

The pool is fixed once TensorFlow has run anything, so this happens when
tfmaml is imported, and only if nobody chose before: a value already set
through `tf.config.threading`, or TensorFlow already running, is left as
it is. `TFMAML_INTRA_OP_THREADS=N` in the environment picks N instead
(`0`: TensorFlow's own default).
"""

import os

import tensorflow as tf

ENVIRONMENT_VARIABLE = "TFMAML_INTRA_OP_THREADS"
DEFAULT_INTRA_OP_THREADS = 1


def set_default_threads() -> int:
    """Sets TensorFlow's intra-op pool to tfmaml's default (see the module
    docstring) unless it was chosen already; returns the pool's size as
    TensorFlow now reports it (0: TensorFlow's default).

    Raises:
        ValueError: If `TFMAML_INTRA_OP_THREADS` is not an integer >= 0.
    """
    value = os.environ.get(ENVIRONMENT_VARIABLE)
    threads = DEFAULT_INTRA_OP_THREADS
    if value is not None:
        try:
            threads = int(value)
        except ValueError:
            threads = -1
        if threads < 0:
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE} must be an integer >= 0 (0: "
                f"TensorFlow's default). Received: {value!r}"
            )
    chosen = tf.config.threading.get_intra_op_parallelism_threads()
    if threads and not chosen:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # TensorFlow is running: its pool stays as it is.
    return tf.config.threading.get_intra_op_parallelism_threads()
