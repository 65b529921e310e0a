"""What every benchmark prints: the command, the machine, a Markdown table."""

import math
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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

# The Omniglot subsets beside the repository (../shared/data/omniglot).
OMNIGLOT_DATA = (
    pathlib.Path(__file__).resolve().parents[2] / "shared/data/omniglot"
)


def run(main) -> None:
    """`absl.app.run(main)`, with tfmaml imported before anything loads
    TensorFlow: a benchmark runs with tfmaml's runtime defaults (oneDNN on,
    one thread per op: `tfmaml.runtime`), as a user who imports it first,
    and so do the processes it starts (the variables are inherited)."""
    from absl import app

    import tfmaml  # noqa: F401

    app.run(main)


def load_config(
    spec: str, overrides: Sequence[str] = (), data_dir: str | None = None
):
    """The config named `module[:variant]` (a module of `tfmaml.configs`,
    e.g. `omniglot_20way_1shot:maml`), its `data_dir` set if given, then
    `overrides` (`field=value`, `override`) applied in turn."""
    import importlib

    module, _, variant = spec.partition(":")
    config = importlib.import_module(f"tfmaml.configs.{module}")
    config = config.get_config(variant or None)
    if data_dir is not None:
        config.data_dir = data_dir
    for assignment in overrides:
        override(config, assignment)
    return config


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
    into a nested ConfigDict, e.g. `augmentation.shift=0.15`).

    Raises:
        ValueError: If the config has no such field. A ConfigDict takes a
            new key without complaint, so a misspelt field (or two arms
            run together, `a:x=1;b:y=2` for `a:x=1,b:y=2`) would otherwise
            run the reference's settings under the arm's name.
    """
    field, _, text = assignment.partition("=")
    *parents, name = field.split(".")
    where = config
    for depth, parent in enumerate(parents):
        _check_field(where, parent, ".".join(parents[:depth]), assignment)
        where = where[parent]
    _check_field(where, name, ".".join(parents), assignment)
    where[name] = parse_value(text)


def _check_field(config, name: str, parent: str, assignment: str) -> None:
    if name not in config:
        raise ValueError(
            f"No config field {name!r}"
            + (f" in {parent!r}" if parent else "")
            + f" (from {assignment!r}); the fields are "
            f"{sorted(config.keys())}."
        )


def t_interval(values: Sequence[float]) -> float:
    """The half-width of the 95% Student's t interval of `values`' mean
    (`nan` for a single value)."""
    if len(values) < 2:
        return float("nan")
    return (
        T95[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))
    )


def run_at_a_time(
    commands: Sequence[Sequence[str]], jobs: int, failure
) -> Iterator[tuple[int, str]]:
    """Runs `commands` (argument lists) in processes of their own, `jobs` at
    a time, and yields `(index, stdout)` as each ends. A command that fails
    raises `RuntimeError(failure(index))` and stops the others: left on,
    they would share the cores with whatever runs next. Stdout goes to a
    temporary file, so a chatty command cannot block on a full pipe."""
    waiting, running = list(enumerate(commands)), {}
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                index, command = waiting.pop(0)
                output = tempfile.TemporaryFile("w+")
                running[index] = (
                    subprocess.Popen(command, stdout=output),
                    output,
                )
            time.sleep(1)
            for index, (process, output) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[index]
                with output:
                    output.seek(0)
                    text = output.read()
                if process.returncode:
                    raise RuntimeError(failure(index))
                yield index, text
    finally:
        for process, output in running.values():
            process.kill()
            process.wait()
            output.close()
