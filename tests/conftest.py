"""Shared fixtures: quiet TensorFlow, seeds, a float64 scope, a Python
that cannot import tfmaml, and second-order MAML's meta-gradients."""

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


@pytest.fixture
def second_order_maml():
    """`second_order_maml(network)(episode) -> (meta-loss, meta-gradients)`:
    MAML with two second-order inner steps (rate 0.3) around `network`, the
    meta-gradients one NumPy array per trainable variable, averaged over
    the episode's tasks. For tests that compute one meta-gradient two ways
    (a speed-up switched on and off) or against finite differences."""
    import tensorflow as tf

    def wrap(network):
        model = tfmaml.MAML(network, inner_lr=0.3, inner_steps=2)
        model.compile(
            keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )

        def loss_and_gradients(episode):
            results = model.solve_tasks(
                episode,
                steps=2,
                first_order=False,
                training=True,
                gradients_of=model.trainable_variables,
            )
            tasks = episode.support_x.shape[0]
            gradients = model.mean_over_tasks(results.gradients, tasks)
            loss = float(tf.reduce_mean(results.loss))
            return loss, [g.numpy() for g in gradients]

        return loss_and_gradients

    return wrap
