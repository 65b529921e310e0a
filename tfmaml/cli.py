"""Flags and paths shared by the `tfmaml.train` and `tfmaml.evaluate` mains."""

import os

from absl import flags
from ml_collections import config_flags

from tfmaml import configs

DEFAULT_CONFIG = os.path.join(os.path.dirname(configs.__file__), "sinusoid.py")
MODEL_FILE = "model.keras"


def define_flags() -> None:
    """Defines `--config` (with `--config.field=value` overrides) and
    `--workdir`."""
    config_flags.DEFINE_config_file(
        "config",
        default=DEFAULT_CONFIG,
        help_string="A config file, optionally `path.py:variant`. Defaults to "
        "the sinusoid config shipped with tfmaml.",
        lock_config=True,
    )
    flags.DEFINE_string(
        "workdir",
        None,
        "Where logs, checkpoints and the trained model go. Defaults to "
        "workdirs/<config.name>.",
    )


def workdir(config) -> str:
    """The `--workdir` flag, or `workdirs/<config.name>`."""
    return flags.FLAGS.workdir or os.path.join("workdirs", config.name)
