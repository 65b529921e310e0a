"""The benchmarks' `field=value` overrides set existing fields and refuse
others: a ConfigDict takes a new key silently, and a screen whose arm
misspelt its field would report the reference's score under the arm's
name."""

import importlib.util
import pathlib

import ml_collections
import pytest

COMMON = pathlib.Path(__file__).resolve().parents[1] / "benchmarks/common.py"


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("benchmark_common", COMMON)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config():
    return ml_collections.ConfigDict(
        {"pretrain_steps": 2000, "augmentation": {"shift": 0.1}}
    )


def test_an_override_sets_a_field_and_a_nested_field(common):
    settings = config()
    common.override(settings, "pretrain_steps=4000")
    common.override(settings, "augmentation.shift=0.15")
    assert settings.pretrain_steps == 4000
    assert settings.augmentation.shift == 0.15


@pytest.mark.parametrize(
    "assignment, named",
    [
        ("pretrain_step=4000", "'pretrain_step'"),
        # Two arms run together with `;` instead of `,`.
        ("b:pretrain_steps=1000", "'b:pretrain_steps'"),
        ("augmentation.shfit=0.2", "'shfit' in 'augmentation'"),
        ("augment.shift=0.2", "'augment'"),
    ],
)
def test_an_override_of_a_field_the_config_lacks_is_refused(
    common, assignment, named
):
    settings = config()
    with pytest.raises(ValueError, match=f"No config field {named}"):
        common.override(settings, assignment)
    assert settings.to_dict() == config().to_dict()  # Nothing was set.
