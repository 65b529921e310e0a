"""Shared fixtures: quiet TensorFlow, seeds, a float64 scope, and a Python
that cannot import tfmaml."""

import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Before Keras loads TensorFlow: the tests run with tfmaml's runtime
# defaults (oneDNN on, one thread per op), as a user who imports it first.
import tfmaml  # noqa: E402, F401

# isort: split
import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


@pytest.fixture
def float64():
    """Builds layers and losses in float64 for finite-difference checks.

    Sets the global dtype policy too: once anything has set it (loading or
    exporting a model does), it takes precedence over `floatx`.
    """
    previous = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(previous[0])
    keras.config.set_dtype_policy(previous[1])


@pytest.fixture
def run_without_tfmaml(tmp_path):
    """Runs a script in `tmp_path` in a fresh Python that cannot import
    tfmaml or Keras (what a client of an exported model has); fails the
    test with its stderr unless `check=False`.

    The client's TensorFlow gets this process's intra-op thread pool
    (importing tfmaml set it to 1): thread counts change the last bits of
    oneDNN's reductions, and an ill-conditioned adaptation (MobileNetV3's
    batch norm on six images) amplifies them, so only the same runtime
    settings compare to 1e-5. README "Export" says so."""
    import tensorflow as tf

    threads = tf.config.threading.get_intra_op_parallelism_threads()

    def run(script, *, check=True):
        path = tmp_path / "script.py"
        path.write_text(
            "import sys\n"
            "sys.modules['tfmaml'] = None  # Any import of it now fails.\n"
            "sys.modules['keras'] = None\n"
            "import tensorflow as tf\n"
            f"tf.config.threading.set_intra_op_parallelism_threads({threads})\n"
            + textwrap.dedent(script)
        )
        result = subprocess.run(
            [sys.executable, str(path)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        if check:
            assert result.returncode == 0, result.stderr[-3000:]
        return result

    return run
