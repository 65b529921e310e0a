"""SavedModel export: adapt_and_predict served without tfmaml."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmaml

REPO = pathlib.Path(__file__).resolve().parent.parent
WAYS = 3


def _regression_model():
    model = tfmaml.MAML(
        tfmaml.networks.mlp((1,), 1, hidden_units=(16, 16)),
        inner_lr=0.05,
        eval_inner_steps=3,
    )
    model.compile(keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(
        tfmaml.data.sinusoid(num_shots=5, meta_batch_size=4, num_batches=20),
        verbose=0,
    )
    return model


def _classifier():
    base = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, padding="same"),
            tfmaml.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(WAYS),
        ]
    )
    model = tfmaml.MAML(base, inner_lr=0.4, eval_inner_steps=2)
    model.compile(
        "adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _task(seed=0, shots=2, queries=4):
    rng = np.random.default_rng(seed)
    support_x = rng.normal(size=(WAYS * shots, 8, 8, 1)).astype("float32")
    support_y = np.repeat(np.arange(WAYS), shots).astype("int32")
    query_x = rng.normal(size=(queries, 8, 8, 1)).astype("float32")
    return support_x, support_y, query_x


def test_regression_export_adapts_like_the_model_without_tfmaml(
    tmp_path, run_without_tfmaml
):
    model = _regression_model()
    model.export(tmp_path / "saved")
    x = np.linspace(-5, 5, 7, dtype="float32")[:, None]
    support_y = 2.0 * np.sin(x - 1.0)
    query_x = np.linspace(-4, 4, 11, dtype="float32")[:, None]
    np.savez(tmp_path / "task.npz", x=x, y=support_y, q=query_x)
    run_without_tfmaml(
        """
        import numpy as np
        import tensorflow as tf
        served = tf.saved_model.load("saved")
        task = np.load("task.npz")
        out = served.adapt_and_predict(
            support_x=task["x"], support_y=task["y"], query_x=task["q"])
        base = served.signatures["serving_default"](x=task["q"])
        np.savez("out.npz", adapted=out["predictions"],
                 steps=out["inner_steps"], base=base["predictions"])
        """
    )
    out = np.load(tmp_path / "out.npz")
    expected = model.adapt(x, support_y)(query_x)
    np.testing.assert_allclose(out["adapted"], expected, atol=1e-5)
    np.testing.assert_allclose(out["base"], model(query_x), atol=1e-5)
    assert int(out["steps"]) == 3
    # Adaptation really happened in the served graph.
    assert np.abs(out["adapted"] - out["base"]).max() > 1e-3


def test_classifier_export_returns_logits_and_probabilities(tmp_path):
    model = _classifier()
    model.export(tmp_path / "saved")
    served = tf.saved_model.load(str(tmp_path / "saved"))
    support_x, support_y, query_x = _task()
    out = served.adapt_and_predict(
        support_x=support_x, support_y=support_y, query_x=query_x
    )
    expected = model.adapt(support_x, support_y)(query_x)
    np.testing.assert_allclose(out["predictions"], expected, atol=1e-5)
    np.testing.assert_allclose(
        out["probabilities"], tf.nn.softmax(expected), atol=1e-6
    )
    # Any support and query sizes.
    bigger = served.adapt_and_predict(
        support_x=np.concatenate([support_x, support_x]),
        support_y=np.concatenate([support_y, support_y]),
        query_x=query_x[:1],
    )
    assert bigger["predictions"].shape == (1, WAYS)


def test_saved_model_cli_shows_and_runs_the_signatures(tmp_path):
    cli = shutil.which("saved_model_cli") or os.path.join(
        os.path.dirname(sys.executable), "saved_model_cli"
    )
    model = _classifier()
    model.export(tmp_path / "saved")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    shown = subprocess.run(
        [cli, "show", "--dir", str(tmp_path / "saved"), "--all"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    assert "signature_def['adapt_and_predict']" in shown
    assert "signature_def['serving_default']" in shown
    for name in ("support_x", "support_y", "query_x", "inner_steps"):
        assert f"['{name}']" in shown

    support_x, support_y, query_x = _task(seed=1)
    np.save(tmp_path / "sx.npy", support_x)
    np.save(tmp_path / "sy.npy", support_y)
    np.save(tmp_path / "qx.npy", query_x)
    subprocess.run(
        [
            cli,
            "run",
            "--dir",
            str(tmp_path / "saved"),
            "--tag_set",
            "serve",
            "--signature_def",
            "adapt_and_predict",
            "--inputs",
            f"support_x={tmp_path / 'sx.npy'};support_y={tmp_path / 'sy.npy'}"
            f";query_x={tmp_path / 'qx.npy'}",
            "--outdir",
            str(tmp_path / "cli_out"),
        ],
        capture_output=True,
        check=True,
        env=env,
    )
    expected = model.adapt(support_x, support_y)(query_x)
    np.testing.assert_allclose(
        np.load(tmp_path / "cli_out" / "predictions.npy"), expected, atol=1e-5
    )


def test_bad_inputs_to_the_signature_name_the_input(tmp_path):
    model = _classifier()
    model.export(tmp_path / "saved")
    served = tf.saved_model.load(str(tmp_path / "saved"))
    support_x, support_y, query_x = _task()
    with pytest.raises(Exception, match="support_y holds a class >= 3"):
        served.adapt_and_predict(
            support_x=support_x, support_y=support_y + 1, query_x=query_x
        )
    with pytest.raises(Exception, match="support_y holds a negative class"):
        served.adapt_and_predict(
            support_x=support_x, support_y=support_y - 1, query_x=query_x
        )
    with pytest.raises(Exception, match="support_x"):
        served.adapt_and_predict(
            support_x=support_x[..., 0], support_y=support_y, query_x=query_x
        )
    # A tensor of the wrong dtype. (NumPy arrays are converted to the
    # signature's dtype by TensorFlow before the graph runs.)
    with pytest.raises(TypeError, match="name='support_y'"):
        served.adapt_and_predict(
            support_x=support_x,
            support_y=tf.constant(support_y, tf.float32),
            query_x=query_x,
        )
    with pytest.raises(TypeError, match="name='query_x'"):
        served.adapt_and_predict(
            support_x=support_x,
            support_y=support_y,
            query_x=tf.constant(query_x, tf.float64),
        )
    with pytest.raises(Exception, match="same number of examples"):
        served.adapt_and_predict(
            support_x=support_x, support_y=support_y[:-1], query_x=query_x
        )


def test_export_refuses_other_formats_and_an_uncompiled_model(tmp_path):
    model = tfmaml.MAML(tfmaml.networks.mlp((1,), 1))
    with pytest.raises(ValueError, match="Compile"):
        model.export(tmp_path / "a")
    model.compile("adam", loss="mse")
    with pytest.raises(ValueError, match="format='onnx'"):
        model.export(tmp_path / "b", format="onnx")


def test_the_shipped_sinusoid_model_adapts(tmp_path, run_without_tfmaml):
    # saved_models/sinusoid is what `python -m tfmaml.train` exports.
    shutil.copytree(REPO / "saved_models" / "sinusoid", tmp_path / "saved")
    run_without_tfmaml(
        """
        import json
        import numpy as np
        import tensorflow as tf
        served = tf.saved_model.load("saved")
        x = np.linspace(-5, 5, 10, dtype="float32")[:, None]
        grid = np.linspace(-5, 5, 100, dtype="float32")[:, None]
        truth = 3.0 * np.sin(grid - 1.0)
        out = served.adapt_and_predict(
            support_x=x, support_y=3.0 * np.sin(x - 1.0), query_x=grid)
        base = served.serve(grid)["predictions"]
        json.dump({
            "adapted": float(np.mean((out["predictions"] - truth) ** 2)),
            "base": float(np.mean((base - truth) ** 2)),
        }, open("mse.json", "w"))
        """
    )
    mse = json.loads((tmp_path / "mse.json").read_text())
    assert mse["adapted"] < 0.25 * mse["base"]
    assert mse["adapted"] < 0.5


def test_the_shipped_omniglot_20_way_model_tells_characters_apart(
    tmp_path, run_without_tfmaml
):
    # saved_models/omniglot_20way_1shot is what `python -m tfmaml.train
    # --config=configs/omniglot_20way_1shot.py` exports (seed 0, see
    # benchmarks/RESULTS.md). Within-alphabet 20-way 1-shot episodes of an
    # unseen alphabet, raw 105x105 uint8 drawings, in a client without
    # tfmaml; chance is 5%.
    from tfmaml.data import sources

    shutil.copytree(
        REPO / "saved_models" / "omniglot_20way_1shot", tmp_path / "saved"
    )
    omniglot = sources.omniglot_from_archives(
        REPO.parent / "shared" / "data" / "omniglot"
    )
    test = sources.omniglot_splits(omniglot).test
    alphabet = np.asarray(test.metadata["alphabet"])[test.class_starts]
    katakana = np.flatnonzero(alphabet == "Japanese_(katakana)")
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(10):
        classes = rng.choice(katakana, 20, replace=False)
        drawings = np.stack(
            [rng.choice(test.class_sizes[c], 6, replace=False) for c in classes]
        )  # [20, 1 shot + 5 queries]
        rows = test.class_starts[classes][:, None] + drawings
        episodes.append(test.images[rows.T.reshape(-1)])
    np.save(tmp_path / "episodes.npy", np.stack(episodes))
    assert np.stack(episodes).dtype == np.uint8
    run_without_tfmaml(
        """
        import json
        import numpy as np
        import tensorflow as tf
        served = tf.saved_model.load("saved")
        labels = np.tile(np.arange(20, dtype=np.int32), 6)
        correct = []
        for images in np.load("episodes.npy"):
            out = served.adapt_and_predict(
                support_x=images[:20], support_y=labels[:20],
                query_x=images[20:])
            guess = np.argmax(out["probabilities"], axis=-1)
            correct.append(float(np.mean(guess == labels[20:])))
        json.dump(correct, open("accuracy.json", "w"))
        """
    )
    accuracy = json.loads((tmp_path / "accuracy.json").read_text())
    assert np.mean(accuracy) > 0.7, accuracy  # 0.845 for the shipped model.
