"""tfmaml's runtime defaults, set at import unless chosen: TensorFlow's
oneDNN kernels on (x86), one thread per op."""

import os
import platform
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


ONEDNN_STATE = (
    "from tensorflow.python.util import _pywrap_util_port as port; "
    "print(port.IsMklEnabled())"
)
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _run(code, **environment):
    """Runs `code` in a fresh Python without the user's oneDNN choice;
    returns its result (stdout, stderr)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    env.update(environment)
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _onednn_after(code, **environment):
    output = _run(code + "; " + ONEDNN_STATE, **environment).stdout
    return output.split()[-1] == "True"


def test_importing_tfmaml_first_turns_onednn_on():
    # TensorFlow's own choice depends on the CPU (on only with AVX-512
    # VNNI/BF16 or AMX); tfmaml's is on, on every x86 CPU.
    assert _onednn_after("import tfmaml") == X86
    # The variable reaches processes tfmaml's users start (data workers,
    # the benchmarks' rows).
    code = "import os, tfmaml; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"
    assert _run(code).stdout.split()[-1] == ("1" if X86 else "None")


def test_the_users_onednn_choice_is_kept():
    assert not _onednn_after("import tfmaml", TF_ENABLE_ONEDNN_OPTS="0")
    assert _onednn_after("import tfmaml", TF_ENABLE_ONEDNN_OPTS="1") == X86


def test_tensorflow_imported_first_warns_only_if_onednn_is_off():
    code = (
        "import tensorflow; "
        "from tensorflow.python.util import _pywrap_util_port as port; "
        "off = not port.IsMklEnabled(); import tfmaml; print(off)"
    )
    result = _run(code)
    off = result.stdout.split()[-1] == "True"
    warned = "TF_ENABLE_ONEDNN_OPTS=1 in the environment" in result.stderr
    assert warned == (off and X86), result.stderr[-2000:]
    # Asking for it off is a choice: no warning.
    result = _run(code, TF_ENABLE_ONEDNN_OPTS="0")
    assert "TF_ENABLE_ONEDNN_OPTS=1" not in result.stderr


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="no affinity mask here"
)
def test_the_20_way_recipe_gives_each_op_the_cores_it_may_use():
    # Its training pretrains one classifier: no tasks to run side by side.
    recipe = (
        "import os; {pin}"
        "from tfmaml import experiment; "
        "from tfmaml.configs import omniglot_20way_1shot as c; "
        "experiment.configure_runtime(c.get_config())"
    )
    cores = len(os.sched_getaffinity(0))
    assert _pool_after(recipe.format(pin="")) == cores
    pinned = "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
    assert _pool_after(recipe.format(pin=pinned)) == 1


def test_usable_cores_falls_back_to_the_machines_count(monkeypatch):
    from tfmaml import runtime

    if hasattr(os, "sched_getaffinity"):
        assert runtime.usable_cores() == len(os.sched_getaffinity(0))
        monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert runtime.usable_cores() == 7
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # Unknown: one.
    assert runtime.usable_cores() == 1


def test_the_precision_field_sets_the_dtype_policy_or_names_the_choices():
    import keras

    from tfmaml import experiment
    from tfmaml.configs import sinusoid

    config = sinusoid.get_config()
    # Process-wide settings, not this test's subject.
    config.deterministic = False
    config.intra_op_threads = config.inter_op_threads = 0
    previous = keras.config.dtype_policy()
    try:
        config.precision = "float64"
        experiment.configure_runtime(config)
        assert keras.config.dtype_policy().name == "float64"
        config.precision = "float16"
        with pytest.raises(ValueError, match="`precision` must be one of"):
            experiment.configure_runtime(config)
        assert keras.config.dtype_policy().name == "float64"  # Unchanged.
    finally:
        keras.config.set_dtype_policy(previous)
