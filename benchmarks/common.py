"""What every benchmark prints: the command, the machine, a Markdown table."""

import os
import platform
import shlex
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

    print("command: python " + shlex.join(sys.argv))
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


# Student's t, two-sided 95%, by degrees of freedom (1 to 30: up to 31
# samples; more are refused rather than given the normal's 1.96).
T95 = dict(
    enumerate(
        (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262)
        + (2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101)
        + (2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052)
        + (2.048, 2.045, 2.042),
        start=1,
    )
)


def parse_value(text: str):
    """A config value given on the command line: a Python literal, else the
    text itself (e.g. an algorithm's name)."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def override(config, assignment: str) -> None:
    """Sets `config`'s field from `field=value` (a dotted field reaches
    into a nested ConfigDict, e.g. `augmentation.shift=0.15`)."""
    field, _, text = assignment.partition("=")
    *parents, name = field.split(".")
    for parent in parents:
        config = config[parent]
    config[name] = parse_value(text)
