"""Pretraining on a wall-time budget: the step count that fits the CPU's
measured rate, with the cosine decay ending there. A fake clock that
advances a fixed time per batch makes the rate, and so the count, exact."""

import math
import time

import keras
import numpy as np
import pytest
from train_test import OMNIGLOT

import tfmaml
from tfmaml import config_pretraining
from tfmaml import experiment
from tfmaml import pretraining
from tfmaml.configs import omniglot_20way_1shot
from tfmaml.data import labelled_batches
from tfmaml.data import sources


def test_the_schedule_is_cosine_decay_to_a_horizon_that_can_move():
    horizon = keras.Variable(100.0, trainable=False)
    ours = pretraining.CosineToHorizon(1e-3, horizon)
    keras_decay = keras.optimizers.schedules.CosineDecay(1e-3, 100)
    for step in (0, 1, 37, 50, 99, 100, 150):
        np.testing.assert_allclose(
            float(ours(step)), float(keras_decay(step)), rtol=1e-6, atol=1e-12
        )
    horizon.assign(40.0)
    np.testing.assert_allclose(float(ours(20)), 0.5e-3, rtol=1e-6)
    assert float(ours(40)) == 0.0 and float(ours(70)) == 0.0


class _FakeClock:
    """`time.perf_counter`, advanced by `per_batch` seconds at each batch's
    end (before the budget reads it), or by `slower` from batch `after` on
    (counting from 0)."""

    def __init__(self, monkeypatch, per_batch, slower=None, after=None):
        self.now = 1000.0
        self.batches = 0
        monkeypatch.setattr(time, "perf_counter", lambda: self.now)
        batch_end = pretraining._StopAt.on_train_batch_end

        def advanced(stop, batch, logs=None):
            late = slower is not None and self.batches >= after
            self.now += slower if late else per_batch
            self.batches += 1
            batch_end(stop, batch, logs)

        monkeypatch.setattr(pretraining._StopAt, "on_train_batch_end", advanced)


def _tiny_split():
    rng = np.random.default_rng(0)
    images = rng.random((5 * 4, 16, 16, 1)).astype("f4")
    return sources.from_arrays(images, np.repeat(np.arange(5), 4))


def test_a_budget_trains_the_steps_that_fit_and_ends_the_decay_there(
    monkeypatch,
):
    _FakeClock(monkeypatch, per_batch=0.5)
    keras.utils.set_random_seed(0)
    embedding = tfmaml.networks.conv4((16, 16, 1), None, filters=4)
    history = pretraining.pretrain_embedding(
        embedding,
        labelled_batches(_tiny_split(), 8, seed=0),
        5,
        steps=10_000,
        steps_per_epoch=7,
        seconds=30.0,
    )
    # Timed from batch 5 to 25: 0.5 s a batch, 12.5 s gone at batch 25,
    # so 17.5 s left: 35 more batches.
    probe, timed = pretraining.BUDGET_PROBE, pretraining.BUDGET_TIMED
    assert history.history["steps"] == probe + timed + 35 == 60
    assert sum(1 for _ in history.history["loss"]) == math.ceil(60 / 7)
    optimizer = history.model.optimizer
    assert int(optimizer.iterations) == 60
    schedule = optimizer._learning_rate
    assert float(schedule(60)) == 0.0
    np.testing.assert_allclose(float(schedule(30)), 0.5e-3, rtol=1e-6)
    # Three times slower from batch 30 on: the rate of the last 20
    # batches catches up, and the run ends at 40 batches, 30 s (15 s for
    # the first 30, 1.5 s each for the next 10).
    clock = _FakeClock(monkeypatch, per_batch=0.5, slower=1.5, after=30)
    history = pretraining.pretrain_embedding(
        embedding,
        labelled_batches(_tiny_split(), 8, seed=0),
        5,
        steps=10_000,
        seconds=30.0,
    )
    assert history.history["steps"] == 40
    assert clock.now - 1000.0 == pytest.approx(30.0)
    assert float(history.model.optimizer._learning_rate(40)) == 0.0
    # A budget larger than the steps need: the steps, and the decay over
    # them.
    _FakeClock(monkeypatch, per_batch=0.001)
    history = pretraining.pretrain_embedding(
        embedding,
        labelled_batches(_tiny_split(), 8, seed=0),
        5,
        steps=40,
        seconds=30.0,
    )
    assert history.history["steps"] == 40
    np.testing.assert_allclose(
        float(history.model.optimizer._learning_rate(20)), 0.5e-3, rtol=1e-6
    )
    # No time left (an ensemble's last member after the others overran):
    # the fewest batches, those that measure the rate.
    history = pretraining.pretrain_embedding(
        embedding,
        labelled_batches(_tiny_split(), 8, seed=0),
        5,
        steps=10_000,
        seconds=0,
    )
    assert history.history["steps"] == probe + timed


def test_an_ensemble_shares_its_budget_between_its_members(
    tmp_path, monkeypatch
):
    config = omniglot_20way_1shot.get_config("smoke")
    config.data_dir = str(OMNIGLOT)
    config.ensemble_size = 2
    config.pretrain_steps = 10_000
    config.pretrain_batch_size = 8
    config.pretrain_minutes = 1.0
    model = experiment.build_model(config)
    clock = _FakeClock(monkeypatch, per_batch=0.5)
    lines = []
    trained = config_pretraining.pretrain(
        model, config, str(tmp_path), report=lines.append
    )
    # The first member gets half of 60 s: 60 batches (as above); the
    # second what is left, the same.
    assert trained == [60, 60], (trained, lines)
    assert clock.now - 1000.0 == pytest.approx(60.0)
    assert lines[1].startswith("Pretrained ensemble member conv4_1 (2 of 2)")
    assert "for 60 steps" in lines[1]
    # A budget the first member overruns (25 batches, 12.5 s, of 6 s):
    # the second has none left and trains the fewest batches.
    config.pretrain_minutes = 0.1
    short = config_pretraining.pretrain(
        experiment.build_model(config), config, str(tmp_path / "short")
    )
    fewest = pretraining.BUDGET_PROBE + pretraining.BUDGET_TIMED
    assert short == [fewest, fewest]


def test_bad_budgets_are_named(tmp_path):
    embedding = tfmaml.networks.conv4((16, 16, 1), None, filters=4)
    batches = labelled_batches(_tiny_split(), 8, seed=0)
    for seconds in (-1.0, math.inf, "60"):
        with pytest.raises(ValueError, match=r"`seconds`.*Received"):
            pretraining.pretrain_embedding(
                embedding, batches, 5, steps=3, seconds=seconds
            )
    config = omniglot_20way_1shot.get_config("smoke")
    config.data_dir = str(OMNIGLOT)
    config.pretrain_steps = 3
    config.pretrain_minutes = -5.0
    with pytest.raises(ValueError, match=r"pretrain_minutes=-5.0"):
        config_pretraining.pretrain(
            experiment.build_model(config), config, str(tmp_path)
        )
    assert not any(tmp_path.iterdir())  # Nothing trained or written.
