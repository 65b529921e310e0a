"""What the command line shows, and where the rest goes.

`python -m tfmaml.train` and `python -m tfmaml.evaluate` show the config,
a progress bar per epoch, the evaluation table, where things were written,
and errors. Everything else (TensorFlow's native start-up and SavedModel
lines, absl and `tensorflow` INFO logs, Python warnings such as Keras')
goes to `log.txt` in the workdir. `--verbosity=N` (absl's flag) keeps the
old behaviour: everything on the terminal.

Native lines are written by C++ to file descriptor 2, before and after the
workdir is known, so the package diverts that descriptor as it is imported
by either command (`divert_native_stderr`, before TensorFlow loads) into a
temporary file; `log_to_workdir` moves that into the workdir's log and
sends descriptor 2 there. Python's `sys.stderr` stays the terminal, so
tracebacks and usage errors stay loud. Nothing here imports TensorFlow,
and nothing happens when tfmaml is imported any other way.
"""

import logging
import os
import shutil
import sys
import tempfile

COMMANDS = ("tfmaml.train", "tfmaml.evaluate")
LOG_FILE = "log.txt"

# The temporary file holding native lines until the workdir is known, and
# whether this process was diverted at all.
_pending = None
_diverted = False


def launched_command(argv: list[str] | None = None) -> str | None:
    """The tfmaml command this process runs (`python -m tfmaml.train`),
    read from the interpreter's own options (`sys.orig_argv`): `None` for
    any other module, a script or `-c`."""
    args = list(sys.orig_argv if argv is None else argv)[1:]
    while args:
        option = args.pop(0)
        if option == "-m":
            return args[0] if args and args[0] in COMMANDS else None
        if option == "-c" or not option.startswith("-"):
            return None  # A command string or a script: not ours.
        if option in ("-W", "-X") and args:
            args.pop(0)  # The option's value.
    return None


def verbose(argv: list[str] | None = None) -> bool:
    """Whether the command line asks for everything (`--verbosity`, `-v`)."""
    argv = sys.orig_argv if argv is None else argv
    return any(
        a.split("=")[0] in ("--verbosity", "-v") or a.startswith("--v=")
        for a in argv
    )


def divert_native_stderr() -> None:
    """For a quiet tfmaml command: points file descriptor 2 at a temporary
    file (native writes go there) and keeps `sys.stderr` on the terminal.
    Does nothing for any other process, or with `--verbosity`."""
    global _pending, _diverted
    if _diverted or launched_command() is None or verbose():
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    _pending = tempfile.TemporaryFile("w+b")
    os.dup2(_pending.fileno(), 2)
    sys.stderr = os.fdopen(terminal, "w", buffering=1)
    _diverted = True


def log_to_workdir(workdir: str) -> str | None:
    """Sends the command's logs to `workdir/log.txt` (the native lines so
    far included) and keeps only errors of Python's logging on the
    terminal. Returns the log's path, or `None` if this process was not
    diverted (another caller, or `--verbosity`)."""
    global _pending
    if not _diverted:
        return None
    path = os.path.join(workdir, LOG_FILE)
    with open(path, "ab") as log:
        if _pending is not None:
            _pending.seek(0)
            shutil.copyfileobj(_pending, log)
            _pending.close()
            _pending = None
        log.flush()
        os.dup2(log.fileno(), 2)  # Descriptor 2 keeps the file open.
    handler = logging.FileHandler(path)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    loud = logging.StreamHandler(sys.stderr)
    loud.setLevel(logging.ERROR)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)  # absl's, on the terminal.
    root.addHandler(handler)
    root.addHandler(loud)
    root.setLevel(logging.INFO)
    tensorflow = logging.getLogger("tensorflow")
    for existing in list(tensorflow.handlers):
        tensorflow.removeHandler(existing)
    tensorflow.propagate = True
    logging.captureWarnings(True)
    return path
