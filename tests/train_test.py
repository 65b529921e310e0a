"""The `tfmaml.train` and `tfmaml.evaluate` command lines, end to end."""

import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmaml
from tfmaml import cli
from tfmaml.configs import sinusoid

CONFIGS = pathlib.Path(sinusoid.__file__).parent
OMNIGLOT = pathlib.Path(__file__).resolve().parents[2] / "shared/data/omniglot"


def _run(module, *args, cwd, native_logs=False):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if native_logs:  # As a user's shell has it: TensorFlow's default.
        del env["TF_CPP_MIN_LOG_LEVEL"]
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
    )


def _losses(output):
    rows = re.findall(r"^\s+(\d+) \|\s+\d+ \| ([\d.]+) \+-", output, re.M)
    return {int(steps): float(loss) for steps, loss in rows}


def test_the_default_config_is_the_shipped_sinusoid_config():
    assert os.path.samefile(cli.DEFAULT_CONFIG, sinusoid.__file__)
    config = sinusoid.get_config()
    assert (config.num_shots, config.meta_batch_size) == (10, 25)
    assert tuple(config.hidden_units) == (40, 40)
    assert (config.inner_lr, config.learning_rate) == (0.01, 1e-3)


def test_unknown_config_variants_are_named():
    with pytest.raises(ValueError, match="'k7'"):
        sinusoid.get_config("k7")


@pytest.mark.slow
def test_train_then_evaluate_with_the_default_config(tmp_path):
    # No --config: the shipped default, shrunk by overrides.
    overrides = [
        "--config.total_steps=300",
        "--config.steps_per_epoch=150",
        "--config.eval_tasks=40",
    ]
    trained = _run(
        "tfmaml.train",
        *overrides,
        "--workdir=run",
        "--fit_verbose=2",
        cwd=tmp_path,
        native_logs=True,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    workdir = tmp_path / "run"
    # The terminal shows the config, the epochs, the table and the paths;
    # TensorFlow's and absl's lines went to the workdir's log.
    assert trained.stdout.startswith("Config:\n")
    assert f"Wrote the run to run (log: {os.path.join('run', 'log.txt')})" in (
        trained.stdout
    )
    log = (workdir / "log.txt").read_text()
    for noise in ("Assets written to", "Sharding callback", 'Model: "maml"'):
        assert noise in log and noise not in trained.stderr + trained.stdout
    assert not re.search(r"^[IWE]\d{4} ", trained.stderr, re.M)
    for name in (
        "model.keras",
        "evaluation.txt",
        "config.txt",
        "checkpoints/latest.keras",
        "checkpoints/best.keras",
    ):
        assert (workdir / name).exists(), name
    assert list((workdir / "tensorboard" / "train").iterdir())
    exported = tmp_path / "saved_models" / "sinusoid"
    assert (exported / "saved_model.pb").exists()

    train_losses = _losses(trained.stdout)
    assert sorted(train_losses) == [0, 1, 5, 10]
    # Adaptation helps even after a short run.
    assert train_losses[10] < train_losses[0]

    evaluated = _run(
        "tfmaml.evaluate", *overrides, "--workdir=run", cwd=tmp_path
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    # The reloaded model on the same test tasks gives the same figures.
    assert _losses(evaluated.stdout) == train_losses
    png = (workdir / "sinusoid.png").read_bytes()
    assert png.startswith(b"\x89PNG")

    model = keras.models.load_model(workdir / "model.keras")
    assert isinstance(model, tfmaml.MAML)
    assert model.eval_inner_steps == 10
    served = tf.saved_model.load(str(exported))
    x = np.linspace(-5, 5, 6, dtype="float32")[:, None]
    out = served.adapt_and_predict(support_x=x, support_y=x, query_x=x)
    np.testing.assert_allclose(
        out["predictions"], model.adapt(x, x)(x), atol=1e-5
    )
    assert int(out["inner_steps"]) == 10


def test_a_bad_override_is_named(tmp_path):
    result = _run(
        "tfmaml.train",
        "--config.inner_steps=-1",
        "--workdir=run",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "inner_steps=-1" in result.stderr


def test_evaluate_without_a_trained_model_says_what_to_run(tmp_path):
    result = _run("tfmaml.evaluate", "--workdir=nothing", cwd=tmp_path)
    assert result.returncode != 0
    assert "No trained model at nothing/model.keras" in result.stderr


@pytest.mark.slow
def test_omniglot_smoke_run_exports_a_model_that_takes_raw_images(tmp_path):
    data_dir = OMNIGLOT
    args = [
        "--config=" + str(CONFIGS / "omniglot_5way_1shot.py") + ":smoke",
        f"--config.data_dir={data_dir}",
        "--workdir=run",
        "--export_dir=exported",
    ]
    trained = _run("tfmaml.train", *args, "--fit_verbose=0", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    evaluated = _run("tfmaml.evaluate", *args[:-1], cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    # Two tables: random 5-way episodes, then 5 characters of one alphabet.
    random_table, within_table = evaluated.stdout.split(
        "Within one alphabet (Japanese_(katakana), Sanskrit, Tagalog):"
    )
    assert "Random 5-way episodes:" in random_table
    for table in (random_table, within_table):
        assert re.search(
            r"^\s+1 \|\s+8 \| [\d.]+ \+- [\d.]+ \| [\d.]+% \+-",
            table,
            re.M,
        )
    saved = (tmp_path / "run" / "evaluation.txt").read_text()
    assert "Within one alphabet" in saved

    # The export takes images as Omniglot stores them: 105x105, ink dark on
    # white, uint8; it resizes and inverts them itself.
    from tfmaml.data import sources

    omniglot = sources.omniglot_from_archives(data_dir)
    rows = np.concatenate([omniglot.class_starts[:5] + i for i in range(3)])
    raw = omniglot.images[rows]
    labels = np.tile(np.arange(5, dtype=np.int32), 3)
    served = tf.saved_model.load(str(tmp_path / "exported"))
    out = served.adapt_and_predict(
        support_x=raw[:5], support_y=labels[:5], query_x=raw[5:]
    )
    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    prepare = tfmaml.data.preprocessing((28, 28), invert=True)
    expected = model.adapt(prepare(raw[:5]), labels[:5])(prepare(raw[5:]))
    np.testing.assert_allclose(out["predictions"], expected, atol=1e-5)
    assert out["probabilities"].shape == (10, 5)


@pytest.mark.parametrize("algorithm", ["fomaml", "reptile", "meta_sgd", "anil"])
def test_the_algorithm_is_one_config_field(algorithm):
    from tfmaml import experiment

    config = sinusoid.get_config("smoke")
    config.algorithm = algorithm
    model = experiment.build_model(config)
    expected = {
        "fomaml": tfmaml.MAML,
        "reptile": tfmaml.Reptile,
        "meta_sgd": tfmaml.MetaSGD,
        "anil": tfmaml.ANIL,
    }[algorithm]
    assert type(model) is expected
    assert model.first_order == (algorithm in ("fomaml", "reptile"))


def test_maml_plus_plus_options_and_cosine_schedule_come_from_the_config():
    from tfmaml import experiment

    config = sinusoid.get_config("smoke")
    config.inner_steps = 3
    config.learn_inner_lr = "per_layer_per_step"
    config.multi_step_loss_steps = 100
    config.first_order_steps = 10
    config.inner_momentum = 0.5
    config.lr_schedule = "cosine"
    model = experiment.build_model(config)
    assert model.learn_inner_lr == "per_layer_per_step"
    assert (model.multi_step_loss_steps, model.first_order_steps) == (100, 10)
    assert model.inner_momentum == 0.5
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    assert float(optimizer.learning_rate) == pytest.approx(config.learning_rate)
    optimizer.iterations.assign(config.total_steps)
    assert float(optimizer.learning_rate) == pytest.approx(0.0)
    config.algorithm = "maml_plus"
    with pytest.raises(ValueError, match="'maml_plus'.*'anil'"):
        experiment.build_model(config)


def test_per_step_batch_norm_comes_from_the_config():
    from tfmaml import experiment
    from tfmaml.configs import omniglot_5way_1shot

    config = omniglot_5way_1shot.get_config("smoke")
    config.inner_steps = 2
    config.per_step_batch_norm = True
    model = experiment.build_model(config)
    norms = [
        layer
        for layer in model.base_model.layers
        if isinstance(layer, tfmaml.BatchNormalization)
    ]
    assert len(norms) == 4
    assert all(layer.num_steps == 2 for layer in norms)
    assert norms[0].gamma.shape == (3, config.filters)
    # Meta-learned, not adapted: the inner loop leaves them out.
    assert not any(layer.name in model.inner_variables for layer in norms)
    assert "conv_0" in model.inner_variables


@pytest.mark.slow
def test_navigation_smoke_run_trains_evaluates_and_exports(tmp_path):
    args = [
        "--config=" + str(CONFIGS / "navigation2d.py") + ":smoke",
        "--workdir=run",
    ]
    trained = _run(
        "tfmaml.train",
        *args,
        "--export_dir=exported",
        "--fit_verbose=0",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "average return (95% CI)" in trained.stdout
    assert "signatures act and adapt_and_act" in trained.stdout
    evaluated = _run(
        "tfmaml.evaluate",
        *args,
        "--pretrained_workdir=run",
        cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "random init" in evaluated.stdout
    assert "pretrained" in evaluated.stdout
    for figure in ("returns.png", "paths.png"):
        assert (tmp_path / "run" / figure).stat().st_size > 1000
    served = tf.saved_model.load(str(tmp_path / "exported"))
    out = served.act(observations=np.zeros((3, 2), "float32"))
    assert out["actions"].shape == (3, 2) and out["stddev"].shape == (2,)


def test_early_stopping_ends_with_the_best_validation_weights(tmp_path):
    # A meta learning rate this large makes the second epoch worse than the
    # first on validation (asserted below, so the test can tell).
    trained = _run(
        "tfmaml.train",
        "--config=" + str(CONFIGS / "sinusoid.py") + ":smoke",
        "--config.learning_rate=0.3",
        "--config.total_steps=800",
        "--config.early_stopping_patience=1",
        "--config.restore_best_weights=True",
        "--workdir=run",
        "--export_dir=exported",
        "--fit_verbose=2",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    val_losses = [
        float(v) for v in re.findall(r"val_loss: ([\d.]+)", trained.stdout)
    ]
    assert len(val_losses) == 2, trained.stdout  # Stopped after 2 of 4.
    assert val_losses[1] > val_losses[0]

    def weights(name):
        model = keras.models.load_model(tmp_path / "run" / name)
        return model.get_weights()

    best = weights("checkpoints/best.keras")
    for final, kept in zip(weights("model.keras"), best, strict=True):
        np.testing.assert_array_equal(final, kept)
    last = weights("checkpoints/latest.keras")
    assert (
        max(np.abs(a - b).max() for a, b in zip(last, best, strict=True)) > 0.1
    )


def test_the_20_way_recipe_trains_wide_and_serves_20_way(tmp_path):
    # The recipe, with training episodes wider than the test's.
    from tfmaml.configs import omniglot_20way_1shot

    data_dir = OMNIGLOT
    trained = _run(
        "tfmaml.train",
        "--config=" + str(CONFIGS / "omniglot_20way_1shot.py") + ":smoke",
        f"--config.data_dir={data_dir}",
        "--config.train_num_ways=30",
        "--workdir=run",
        "--export_dir=exported",
        "--fit_verbose=0",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    figures = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert set(figures) == {"random", "within_alphabet"}
    assert [r["steps"] for r in figures["random"]] == [0]  # A ProtoNet.
    training = json.loads((tmp_path / "run" / "training.json").read_text())
    assert training["steps"] == 6 and training["seconds"] > 0
    # Trained on 30-way episodes, served 20-way on raw images.
    from tfmaml.data import sources

    omniglot = sources.omniglot_from_archives(data_dir)
    rows = np.concatenate([omniglot.class_starts[:20] + i for i in range(2)])
    labels = np.tile(np.arange(20, dtype=np.int32), 2)
    served = tf.saved_model.load(str(tmp_path / "exported"))
    raw = omniglot.images[rows]
    out = served.adapt_and_predict(
        support_x=raw[:20], support_y=labels[:20], query_x=raw[20:]
    )
    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    # The recipe centres and scales each drawing's ink: the export must too.
    prepare = tfmaml.data.preprocessing(
        (28, 28), invert=True, centre_ink=True, ink_radius=0.23
    )
    expected = model.adapt_and_predict(
        prepare(raw[:20]), labels[:20], prepare(raw[20:])
    )
    np.testing.assert_allclose(out["predictions"], expected, atol=1e-4)
    assert out["probabilities"].shape == (20, 20)
    with pytest.raises(
        ValueError, match=r"\['mam'\].*\['balanced', 'maml', 'smoke'\]"
    ):
        omniglot_20way_1shot.get_config("mam,smoke")
