"""Shared fixtures: quiet TensorFlow, seeds, and a float64 scope."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
