"""Which processes `tfmaml.console` quiets (the command-line behaviour
itself is tested end to end in `train_test.py`)."""

import pytest

from tfmaml import console


@pytest.mark.parametrize(
    "argv, command",
    [
        (["python", "-m", "tfmaml.train", "--workdir=w"], "tfmaml.train"),
        (["python3", "-m", "tfmaml.evaluate"], "tfmaml.evaluate"),
        (["python", "-m", "pytest", "tests"], None),
        (["python", "-W", "ignore", "-m", "tfmaml.train"], "tfmaml.train"),
        (["python", "script.py", "-m", "tfmaml.train"], None),
        (["python", "-m"], None),
        (["python", "-c", "import tfmaml"], None),
    ],
)
def test_only_the_tfmaml_commands_are_quieted(argv, command):
    assert console.launched_command(argv) == command


@pytest.mark.parametrize(
    "argv, wanted",
    [
        (["python", "-m", "tfmaml.train", "--verbosity=0"], True),
        (["python", "-m", "tfmaml.train", "--verbosity", "1"], True),
        (["python", "-m", "tfmaml.train", "-v", "1"], True),
        (["python", "-m", "tfmaml.train", "--v=1"], True),
        (["python", "-m", "tfmaml.train", "--config.verbose=1"], False),
        (["python", "-m", "tfmaml.train"], False),
    ],
)
def test_verbosity_brings_everything_back(argv, wanted):
    assert console.verbose(argv) == wanted


def test_another_process_is_left_alone(tmp_path):
    # This process is pytest: nothing was diverted, nothing is logged.
    assert console.log_to_workdir(str(tmp_path)) is None
    assert not (tmp_path / console.LOG_FILE).exists()
