"""The CIFAR-FS and mini-ImageNet configs train end to end from the CLI, on
small data the test writes in the layout of the real sources."""

import csv
import io
import os
import pathlib
import subprocess
import sys
import tarfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmaml
from tfmaml import configs
from tfmaml.data import sources

CONFIGS = pathlib.Path(configs.__file__).parent
PER_CLASS = 6  # 5 shots + 1 query in the smoke variants.


def write_cifar100_archive(directory, per_class=PER_CLASS, seed=0):
    """`cifar-100-binary.tar.gz` with `per_class` random images of each of
    100 classes: CIFAR-FS's 36 held-out names and 64 others."""
    rng = np.random.default_rng(seed)
    names = [
        *sources.CIFAR_FS_VALIDATION,
        *sources.CIFAR_FS_TEST,
        *(f"train_class_{i}" for i in range(64)),
    ]
    fine = np.repeat(np.arange(100, dtype=np.uint8), per_class)
    pixels = rng.integers(0, 256, size=(len(fine), 3072), dtype=np.uint8)
    records = np.concatenate(
        [np.zeros_like(fine)[:, None], fine[:, None], pixels], 1
    )
    half = len(records) // 2
    members = {
        "fine_label_names.txt": "\n".join(names).encode(),
        "train.bin": records[:half].tobytes(),
        "test.bin": records[half:].tobytes(),
    }
    path = pathlib.Path(directory) / sources.CIFAR100_ARCHIVE
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-100-binary/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return names, records


def write_mini_imagenet(directory, classes=6, per_class=PER_CLASS, seed=0):
    """`images/` and the three split CSVs, `classes` classes per split."""
    rng = np.random.default_rng(seed)
    directory = pathlib.Path(directory)
    (directory / "images").mkdir(parents=True)
    for split in ("train", "val", "test"):
        rows = []
        for c in range(classes):
            for i in range(per_class):
                name = f"{split}{c:02d}_{i}.png"
                image = rng.integers(0, 256, (90, 100, 3), dtype=np.uint8)
                (directory / "images" / name).write_bytes(
                    tf.io.encode_png(image).numpy()
                )
                rows.append({"filename": name, "label": f"n{split}{c:02d}"})
        with open(directory / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["filename", "label"])
            writer.writeheader()
            writer.writerows(rows)


def test_cifar_fs_from_the_archive_has_the_cifar_fs_split(tmp_path):
    names, records = write_cifar100_archive(tmp_path)
    splits = sources.cifar_fs_from_archive(tmp_path)
    assert [s.num_classes for s in splits] == [64, 16, 20]
    assert set(splits.test.class_names) == set(sources.CIFAR_FS_TEST)
    # Pixels are channel-major in the records, channel-last in the source.
    first = splits.validation
    row = int(np.flatnonzero(records[:, 1] == names.index("beaver"))[0])
    expected = records[row, 2:].reshape(3, 32, 32).transpose(1, 2, 0)
    start = first.class_starts[first.class_names.index("beaver")]
    np.testing.assert_array_equal(first.images[start], expected)
    assert first.images.shape[1:] == sources.CIFAR100_IMAGE_SHAPE


def test_a_missing_cifar_archive_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-binary.tar.gz"):
        sources.cifar_fs_from_archive(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, algorithm",
    [
        ("cifar_fs_5way_1shot", "maml"),
        ("cifar_fs_5way_5shot", "maml"),
        ("mini_imagenet_5way_1shot", "maml"),
        ("mini_imagenet_5way_5shot", "maml"),
        ("cifar_fs_5way_1shot", "protonet"),
        ("cifar_fs_5way_1shot", "proto_maml"),
    ],
)
def test_image_config_smoke_run_trains_evaluates_and_exports(
    config, algorithm, tmp_path, float64
):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if config.startswith("cifar"):
        write_cifar100_archive(data_dir)
        raw_shape = sources.CIFAR100_IMAGE_SHAPE
    else:
        write_mini_imagenet(data_dir)
        raw_shape = sources.MINI_IMAGENET_IMAGE_SHAPE
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfmaml.train",
            f"--config={CONFIGS / config}.py:smoke",
            f"--config.data_dir={data_dir}",
            f"--config.algorithm={algorithm}",
            # In float64: a Conv4 adapted in float32 is a discontinuous
            # function of its inputs. Where two inputs of a max-pool window
            # (or a ReLU's input and 0) are within float32 rounding of a
            # tie, the inner gradient flows through one or the other, and
            # the two graphs (the export's, with unknown batch sizes, and
            # this process's) round differently: on one such small, barely
            # trained network, logits more than 1e-3 apart on 7 of 15
            # support sets and up to 0.08, while a 1e-7 change of the
            # support images moved them as much. In float64 such near-ties
            # are a billion times rarer and the paths agree to 2e-14 (15
            # draws).
            "--config.precision=float64",
            "--config.eval_inner_steps=3",
            "--workdir=run",
            "--export_dir=exported",
            "--fit_verbose=0",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "inner steps | tasks" in trained.stdout
    # The export takes raw uint8 images as the source stores them and gives
    # the outputs of the trained model adapted in this process.
    shots = 5 if config.endswith("5shot") else 1
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (10 + 5 * shots, *raw_shape), dtype=np.uint8)
    labels = np.repeat(np.arange(5, dtype=np.int32), shots)
    served = tf.saved_model.load(str(tmp_path / "exported"))
    out = served.adapt_and_predict(
        support_x=raw[: 5 * shots].astype("float64"),
        support_y=labels,
        query_x=raw[5 * shots :].astype("float64"),
    )
    assert int(out["inner_steps"]) == (0 if algorithm == "protonet" else 3)
    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    prepare = tfmaml.data.preprocessing(raw_shape[:2])
    expected = model.adapt(prepare(raw[: 5 * shots]), labels)(
        prepare(raw[5 * shots :])
    )
    assert out["predictions"].dtype == tf.float64
    if algorithm == "maml":
        # Inner steps move the logits (by about 2 here), and the export
        # moves them as this process does. (ProtoMAML's head starts at the
        # prototypes, which already fit the support set.)
        unadapted = model.adapt(prepare(raw[: 5 * shots]), labels, 0)(
            prepare(raw[5 * shots :])
        )
        assert np.abs(expected - unadapted).max() > 0.1
    np.testing.assert_allclose(
        out["predictions"], expected, rtol=1e-9, atol=1e-9
    )


def test_wider_training_episodes_and_augmentation_reach_the_training_stream(
    tmp_path,
):
    from configs import cifar_fs_5way_1shot
    from tfmaml import experiment

    write_cifar100_archive(tmp_path)
    config = cifar_fs_5way_1shot.get_config("smoke")
    config.data_dir = str(tmp_path)
    plain = experiment.build_splits(config)
    config.algorithm = "protonet"
    config.train_num_ways = 8
    config.augment = True
    wider = experiment.build_splits(config)
    x, y = next(iter(wider.train))
    assert x["support_x"].shape[1] == 8 and int(tf.reduce_max(y)) == 7
    val_x, _ = next(iter(wider.validation))
    assert val_x["support_x"].shape[1] == config.num_ways
    # Validation and test images are never distorted.
    np.testing.assert_array_equal(
        next(iter(plain.validation))[0]["query_x"], val_x["query_x"]
    )
    config.train_num_ways = 0  # The test's ways, distorted images.
    plain_x = next(iter(plain.train))[0]["query_x"].numpy()
    distorted = next(iter(experiment.build_splits(config).train))[0]
    assert distorted["query_x"].shape == plain_x.shape
    assert np.abs(distorted["query_x"].numpy() - plain_x).mean() > 0.01
    config.algorithm, config.train_num_ways = "maml", 8
    with pytest.raises(ValueError, match=r"train_num_ways=8 differs .*'maml'"):
        experiment.build_splits(config)


def test_the_reflections_field_doubles_the_training_classes(tmp_path):
    from configs import cifar_fs_5way_1shot
    from tfmaml import experiment
    from tfmaml import image_tasks

    write_cifar100_archive(tmp_path)
    config = cifar_fs_5way_1shot.get_config("smoke")
    config.data_dir = str(tmp_path)
    config.algorithm = "protonet"
    classes = image_tasks._load_classes(config).train.num_classes
    config.train_num_ways = classes + 1
    with pytest.raises(ValueError, match=f"has {classes} classes; an episode"):
        experiment.build_splits(config)
    config.reflections = True
    x, y = next(iter(experiment.build_splits(config).train))
    assert x["support_x"].shape[1] == classes + 1
    assert int(tf.reduce_max(y)) == classes


def test_the_validation_alphabet_field_reaches_the_omniglot_split():
    from configs import omniglot_20way_1shot
    from tfmaml import image_tasks

    config = omniglot_20way_1shot.get_config("smoke")
    config.data_dir = str(
        pathlib.Path(__file__).resolve().parents[2] / "shared/data/omniglot"
    )
    fifth = image_tasks._load_classes(config).validation.class_names
    config.validation_alphabet = "Korean"
    held_out = image_tasks._load_classes(config)
    assert {n.split("/")[0] for n in held_out.validation.class_names} == {
        "Korean"
    }
    assert len(held_out.validation.class_names) == 40
    assert "Korean" not in {n.split("/")[0] for n in held_out.train.class_names}
    assert {n.split("/")[0] for n in fifth} != {"Korean"}


def test_the_recipes_views_and_head_reach_its_protonet():
    from configs import omniglot_20way_1shot
    from tfmaml import experiment

    config = omniglot_20way_1shot.get_config()
    model = experiment.build_model(config)
    assert (model.support_views, model.query_views) == (8, 4)
    assert model.head_steps == 0  # See the config's docstring.
    assert model.view_augmentation == tfmaml.data.AffineAugmentation(
        **config.augmentation
    )
    config.support_views = config.query_views = 0
    plain = experiment.build_model(config)
    assert (plain.support_views, plain.query_views) == (0, 0)
    assert plain.view_augmentation is None
    config.head_steps, config.head_learning_rate = 5, 0.25
    fitted = experiment.build_model(config)
    assert (fitted.head_steps, fitted.head_learning_rate) == (5, 0.25)
    assert plain.assignment_steps == 0  # Each query on its own.
    config.assignment_steps, config.assignment_sharpness = 20, 8.0
    assigned = experiment.build_model(config)
    assert (assigned.assignment_steps, assigned.assignment_sharpness) == (
        20,
        8.0,
    )


def test_the_balanced_variant_is_the_recipe_scored_set_level_on_lakes_runs():
    from configs import omniglot_20way_1shot
    from tfmaml import experiment

    recipe = omniglot_20way_1shot.get_config().to_dict()
    balanced = omniglot_20way_1shot.get_config("balanced")
    assert (balanced.eval_num_queries, balanced.assignment_steps) == (1, 20)
    changed = {k for k, v in balanced.to_dict().items() if recipe[k] != v}
    assert changed == {"eval_num_queries", "assignment_steps"}
    assert experiment.build_model(balanced).assignment_steps == 20
    with pytest.raises(ValueError, match=r"`balanced`.*'maml,balanced'"):
        omniglot_20way_1shot.get_config("maml,balanced")
    with pytest.raises(ValueError, match=r"\['balance'\]"):
        omniglot_20way_1shot.get_config("balance")
