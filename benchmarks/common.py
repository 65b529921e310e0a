"""What every benchmark prints: the command, the machine, a Markdown table."""

import os
import platform
import sys
from collections.abc import Sequence

# Environment that caps both frameworks' kernels at an instruction set:
# oneDNN's (TensorFlow and PyTorch) and PyTorch's own ATen kernels.
ISA_LIMITS = {
    "native": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "avx512": {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "ATEN_CPU_CAPABILITY": "avx512",
    },
}


def run(main) -> None:
    """`absl.app.run(main)`, with tfmaml imported before anything loads
    TensorFlow: a benchmark runs with tfmaml's runtime defaults (oneDNN on,
    one thread per op: `tfmaml.runtime`), as a user who imports it first,
    and so do the processes it starts (the variables are inherited)."""
    from absl import app

    import tfmaml  # noqa: F401

    app.run(main)


def load_config(spec: str):
    """The config named `module[:variant]` (a module of `tfmaml.configs`,
    e.g. `omniglot_20way_1shot:maml`)."""
    import importlib

    module, _, variant = spec.partition(":")
    config = importlib.import_module(f"tfmaml.configs.{module}")
    return config.get_config(variant or None)


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB (`VmHWM`). Not `getrusage`: Linux
    carries a parent's high-water mark into the child it forks."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("No VmHWM in /proc/self/status")


def print_report(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Prints the command line that ran, the machine, and the table."""
    import keras
    import tensorflow as tf

    print("command: python " + " ".join(sys.argv))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; python "
        f"{platform.python_version()}, tensorflow {tf.__version__}, keras "
        f"{keras.__version__}"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def time_budget(seconds: float):
    """A Keras callback that stops `fit` after `seconds` of wall time
    (counted from the start of training, tracing included)."""
    import time

    import keras

    class TimeBudget(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if time.perf_counter() - self.start > seconds:
                self.model.stop_training = True

    return TimeBudget()
