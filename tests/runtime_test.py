"""tfmaml's thread default: one thread per op, set at import unless chosen."""

import os
import subprocess
import sys

import pytest

PRINT_POOL = (
    "import tensorflow as tf; "
    "print(tf.config.threading.get_intra_op_parallelism_threads())"
)


def _pool_after(code, **environment):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TFMAML_INTRA_OP_THREADS", None)
    env.update(environment)
    result = subprocess.run(
        [sys.executable, "-c", code + "; " + PRINT_POOL],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split()[-1])


def test_importing_tfmaml_gives_one_thread_per_op():
    assert _pool_after("import tensorflow") == 0  # TensorFlow's own default.
    assert _pool_after("import tfmaml") == 1


def test_the_environment_variable_picks_the_pool():
    assert _pool_after("import tfmaml", TFMAML_INTRA_OP_THREADS="0") == 0
    assert _pool_after("import tfmaml", TFMAML_INTRA_OP_THREADS="2") == 2


def test_a_choice_made_before_import_is_kept():
    chosen = (
        "import tensorflow as tf; "
        "tf.config.threading.set_intra_op_parallelism_threads(2); "
        "import tfmaml"
    )
    assert _pool_after(chosen) == 2
    # TensorFlow already running: its pool cannot change, and importing
    # tfmaml must not fail for it.
    running = "import tensorflow as tf; tf.constant(1.0) + 1; import tfmaml"
    assert _pool_after(running) == 0


@pytest.mark.parametrize("value", ["-1", "one"])
def test_a_bad_value_is_named(value):
    env = {**os.environ, "TFMAML_INTRA_OP_THREADS": value}
    result = subprocess.run(
        [sys.executable, "-c", "import tfmaml"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode != 0
    assert "TFMAML_INTRA_OP_THREADS must be an integer >= 0" in result.stderr
    assert repr(value) in result.stderr
