"""TensorFlow's CPU runtime as tfmaml leaves it: oneDNN on, one thread per op.

oneDNN. TensorFlow's x86 build carries oneDNN's convolution kernels but
turns them on by default only on CPUs with AVX-512 VNNI or BF16 or AMX;
on an AVX2-only CPU it runs its own (Eigen) kernels. On a 2-core
AVX2-only AMD EPYC, oneDNN made Conv4's meta-step 1.75x (W1), 1.28x (W2)
and 1.85x (W3) faster, and `fit` 1.37x to 1.86x on the sinusoid, Omniglot
and 2D-navigation configs (`benchmarks/throughput.py`,
`benchmarks/threads.py --knob=onednn`; RESULTS.md). TensorFlow reads
`TF_ENABLE_ONEDNN_OPTS` once, as it is imported, so `request_onednn` sets
it before tfmaml imports TensorFlow, unless the user set it (their value
stands) or TensorFlow was imported first (then `warn_if_onednn_off` says
how to turn it on).

Threads. MAML's meta-batch is many small, independent tasks. TensorFlow's
default gives every op all cores (its intra-op pool), so the small
convolutions of one task at a time share the cores and wait on each other;
with one thread per op, the inter-op pool runs tasks side by side, one per
core. Measured by `benchmarks/threads.py` and `benchmarks/throughput.py`
(RESULTS.md): faster on every config and CPU level tried, so it is the
default of the library, not only of the configs. The pool is fixed once
TensorFlow has run anything, so this happens when tfmaml is imported, and
only if nobody chose before: a value already set through
`tf.config.threading`, or TensorFlow already running, is left as it is.
`TFMAML_INTRA_OP_THREADS=N` in the environment picks N instead (`0`:
TensorFlow's own default). Training without tasks side by side is the
exception: a classifier's batches, as the 20-way recipe pretrains, ran
1.36x faster with every core on each op (Zen 4, RESULTS.md), so that
config sets `intra_op_threads` to `usable_cores()`.
"""

import os
import platform
import sys
import warnings

ENVIRONMENT_VARIABLE = "TFMAML_INTRA_OP_THREADS"
DEFAULT_INTRA_OP_THREADS = 1
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
X86 = ("x86_64", "amd64")


def _on_x86() -> bool:
    """Whether this is an x86 CPU, the only kind tfmaml's oneDNN default
    was measured on."""
    return platform.machine().lower() in X86


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the
    OS has one: a container or `taskset` can allow fewer than the machine
    has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def request_onednn() -> bool:
    """Asks TensorFlow for its oneDNN kernels (see the module docstring):
    sets `TF_ENABLE_ONEDNN_OPTS=1` on x86 if the user has not set it and
    TensorFlow is not imported yet. Returns whether it set it (other
    architectures are left to TensorFlow: not measured)."""
    if (
        ONEDNN_VARIABLE in os.environ
        or "tensorflow" in sys.modules
        or not _on_x86()
    ):
        return False
    os.environ[ONEDNN_VARIABLE] = "1"
    return True


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN kernels in this process (it
    decided as it was imported)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def warn_if_onednn_off() -> None:
    """Warns, naming the fix, when TensorFlow was imported before tfmaml
    and chose to run without oneDNN on its own (the user did not set
    `TF_ENABLE_ONEDNN_OPTS`): meta-training is then slower than it needs
    to be on this CPU."""
    if ONEDNN_VARIABLE in os.environ or not _on_x86() or onednn_enabled():
        return
    warnings.warn(
        "TensorFlow was imported before tfmaml and runs without its oneDNN "
        "kernels (its default on CPUs without AVX-512 VNNI/BF16 or AMX), "
        "so meta-training here is up to 1.9x slower than it could be. "
        f"Set {ONEDNN_VARIABLE}=1 in the environment, or import tfmaml "
        f"before tensorflow and keras ({ONEDNN_VARIABLE}=0 keeps it off "
        "and silences this).",
        RuntimeWarning,
        stacklevel=3,
    )


def set_default_threads() -> int:
    """Sets TensorFlow's intra-op pool to tfmaml's default (see the module
    docstring) unless it was chosen already; returns the pool's size as
    TensorFlow now reports it (0: TensorFlow's default).

    Raises:
        ValueError: If `TFMAML_INTRA_OP_THREADS` is not an integer >= 0.
    """
    import tensorflow as tf

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
