"""The examples in public docstrings run and give what they show."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "tfmaml.model",
        "tfmaml.networks",
        "tfmaml.batch_norm",
        "tfmaml.data.sinusoid",
        "tfmaml.data.episodes",
        "tfmaml.data.labelled",
    ],
)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
