"""Whole-class pretraining: `tfmaml.data.labelled_batches` labels every
image with its class and orientation, reproducibly; `tfmaml.pretraining`
trains an embedding that then separates new draws of its classes; the
config field pretrains a ProtoNet once per run directory."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from train_test import CONFIGS
from train_test import OMNIGLOT
from train_test import _run

import tfmaml
from tfmaml import config_pretraining
from tfmaml import experiment
from tfmaml import image_tasks
from tfmaml import pretraining
from tfmaml.configs import omniglot_20way_1shot
from tfmaml.data import labelled_batches
from tfmaml.data import labelled_classes
from tfmaml.data import sources


def _split(classes=5, per_class=4, size=6, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((classes * per_class, size, size, 1)).astype("f4")
    return sources.from_arrays(images, np.arange(len(images)) % classes)


def _orientations(image):
    """The eight symmetries of a square image, in `labelled_batches`'
    order: quarter turns, then the mirror image's quarter turns."""
    turns = [np.rot90(image, k, axes=(0, 1)) for k in range(4)]
    mirror = image[:, ::-1]
    return turns + [np.rot90(mirror, k, axes=(0, 1)) for k in range(4)]


@pytest.mark.parametrize(
    "rotations,reflections", [(False, False), (True, True)]
)
def test_every_example_is_its_labelled_class_in_its_orientation(
    rotations, reflections
):
    split = _split()
    classes = labelled_classes(
        split, rotations=rotations, reflections=reflections
    )
    assert classes == 5 * (8 if rotations else 1)
    x, y = next(
        iter(
            labelled_batches(
                split, 64, seed=3, rotations=rotations, reflections=reflections
            )
        )
    )
    x, y = x.numpy(), y.numpy()
    assert x.shape == (64, 6, 6, 1) and y.dtype == np.int32
    seen = set()
    for image, label in zip(x, y, strict=True):
        orientation, c = divmod(int(label), split.num_classes)
        start, size = split.class_starts[c], split.class_sizes[c]
        matches = [
            i
            for i in range(start, start + size)
            if np.array_equal(
                _orientations(split.images[i])[orientation], image
            )
        ]
        assert len(matches) == 1, (label, matches)
        seen.add(int(label))
    assert len(seen) > classes // 2  # Draws spread over the classes.


def test_batches_are_reproducible_and_resume_at_their_index():
    split = _split()
    kwargs = dict(
        seed=7, rotations=True, augment=tfmaml.data.AffineAugmentation()
    )
    first = [b for b in labelled_batches(split, 8, num_batches=3, **kwargs)]
    again = [b for b in labelled_batches(split, 8, num_batches=3, **kwargs)]
    resumed = next(iter(labelled_batches(split, 8, start=2, **kwargs)))
    for (x, y), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(first[2][0], resumed[0])
    np.testing.assert_array_equal(first[2][1], resumed[1])
    assert not np.array_equal(first[0][1], first[1][1])


def test_bad_arguments_are_named():
    split = _split()
    with pytest.raises(ValueError, match="batch_size"):
        labelled_batches(split, 0)
    with pytest.raises(TypeError, match="AffineAugmentation"):
        labelled_batches(split, 4, augment="affine")
    vectors = sources.from_arrays(np.zeros((10, 3), "f4"), np.arange(10) % 2)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        labelled_batches(vectors, 4, rotations=True)
    wide = sources.from_arrays(np.zeros((10, 4, 6, 1), "f4"), np.arange(10) % 2)
    with pytest.raises(ValueError, match=r"square.*\(4, 6, 1\)"):
        labelled_batches(wide, 4, rotations=True)
    net = tfmaml.networks.conv4((16, 16, 1), 5, filters=4)
    with pytest.raises(ValueError, match=r"flat embedding.*\(None, 8, 8, 4\)"):
        # Ends in max-pooling: not flat.
        pretraining.classifier(
            keras.Sequential([keras.Input((16, 16, 1)), *net.layers[:3]]), 5
        )


def _grouped_split():
    """Six classes of 4 images in three groups that are not contiguous in
    class order: class c is in group c % 3."""
    images = np.random.default_rng(1).random((24, 6, 6, 1)).astype("f4")
    labels = np.arange(24) % 6
    groups = np.array(["g0", "g1", "g2"])[labels % 3]
    return sources.from_arrays(images, labels, metadata={"group": groups})


def test_grouped_batches_draw_from_one_group_each_and_resume():
    split = _grouped_split()
    batches = labelled_batches(
        split, 16, seed=2, rotations=True, group_by="group", num_batches=60
    )
    groups_seen, images_seen = set(), set()
    for x, y in batches:
        classes = y.numpy() % split.num_classes
        (group,) = set(classes % 3)  # One group a batch.
        groups_seen.add(group)
        for image, label in zip(x.numpy(), y.numpy(), strict=True):
            orientation, c = divmod(int(label), split.num_classes)
            start = split.class_starts[c]
            matches = [
                i
                for i in range(start, start + split.class_sizes[c])
                if np.array_equal(
                    _orientations(split.images[i])[orientation], image
                )
            ]
            assert len(matches) == 1, (label, matches)
            images_seen.add(matches[0])
    assert groups_seen == {0, 1, 2}
    assert len(images_seen) == 24  # Every image of every group drawn.
    resumed = next(
        iter(
            labelled_batches(
                split, 16, seed=2, rotations=True, group_by="group", start=7
            )
        )
    )
    seventh = list(batches.skip(7).take(1))[0]
    np.testing.assert_array_equal(seventh[0], resumed[0])
    np.testing.assert_array_equal(seventh[1], resumed[1])


def test_a_group_fraction_groups_that_share_of_the_batches():
    split = _grouped_split()
    grouped = 0
    for _, y in labelled_batches(
        split, 32, group_by="group", group_fraction=0.25, num_batches=400
    ):
        grouped += len(set(y.numpy() % 3)) == 1
    # Binomial(400, 0.25): 100 +- 8.7; a batch of 32 drawn from the whole
    # split falls in one group with probability 3 / 3^32.
    assert 70 <= grouped <= 130


def test_bad_groupings_are_named():
    split = _grouped_split()
    with pytest.raises(ValueError, match=r"group_by='alphabet'.*\['group'\]"):
        labelled_batches(split, 4, group_by="alphabet")
    for fraction in (0, 1.5, "half", True):
        with pytest.raises(ValueError, match="group_fraction"):
            labelled_batches(
                split, 4, group_by="group", group_fraction=fraction
            )
    with pytest.raises(ValueError, match="group_fraction.*group_by"):
        labelled_batches(split, 4, group_fraction=0.5)
    mixed = sources.from_arrays(
        split.images, np.arange(24) % 6, metadata={"group": np.arange(24) % 4}
    )
    with pytest.raises(ValueError, match="several 'group' groups"):
        labelled_batches(mixed, 4, group_by="group")


def test_the_config_groups_pretraining_batches_by_alphabet():
    config = omniglot_20way_1shot.get_config("smoke")
    config.data_dir = str(OMNIGLOT)
    config.pretrain_on_validation = True  # Classes from two splits.
    config.pretrain_group_by = "alphabet"
    config.pretrain_group_fraction = 0.5
    (batches,), _ = image_tasks.labelled_training_batches(config)
    joined = image_tasks.labelled_training_source(config)
    alphabets = joined.metadata["alphabet"][joined.class_starts]
    per_batch = [
        len(set(alphabets[y.numpy() % joined.num_classes]))
        for _, y in batches.take(12)
    ]
    assert 1 in per_batch and max(per_batch) > 1, per_batch
    config.pretrain_group_by = "script"
    with pytest.raises(ValueError, match="group_by='script'"):
        image_tasks.labelled_training_batches(config)


def test_cosine_logits_are_a_learned_scale_times_cosines():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)).astype("f4")
    layer = pretraining.CosineLogits(4, scale=3.0)
    logits = layer(x).numpy()
    w = layer.kernel.numpy()  # A row per class.
    cosines = (x @ w.T) / np.outer(
        np.linalg.norm(x, axis=1), np.linalg.norm(w, axis=1)
    )
    np.testing.assert_allclose(logits, 3.0 * cosines, rtol=1e-5, atol=1e-6)
    # Only directions count: a longer feature vector gives the same logits.
    np.testing.assert_allclose(layer(7.0 * x), logits, rtol=1e-5, atol=1e-6)
    # The scale is a weight the loss moves: d logits / d log_scale = logits.
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(layer(x))
    grad = tape.gradient(total, layer.log_scale)
    np.testing.assert_allclose(grad, logits.sum(), rtol=1e-5)
    # Its config round trip (what a `.keras` file stores) keeps the outputs.
    model = keras.Sequential([keras.Input((5,)), layer])
    clone = keras.Sequential.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(x), logits, rtol=1e-6)
    with pytest.raises(ValueError, match="scale"):
        pretraining.CosineLogits(4, scale=0.0)
    with pytest.raises(ValueError, match="units"):
        pretraining.CosineLogits(0)
    with pytest.raises(ValueError, match=r"head.*'dot'"):
        pretraining.classifier(
            tfmaml.networks.conv4((16, 16, 1), None, filters=4), 5, "dot"
        )


@pytest.mark.parametrize("head", pretraining.HEADS)
def test_pretraining_learns_an_embedding_that_separates_new_draws(head):
    # Five classes, each a fixed pattern plus noise: new draws of a class
    # must land nearer its own prototype after pretraining than before.
    rng = np.random.default_rng(1)
    patterns = rng.random((5, 16, 16, 1)).astype("f4")

    def draws(n, seed):
        noise = np.random.default_rng(seed).normal(0, 0.2, (5, n, 16, 16, 1))
        return (patterns[:, None] + noise).astype("f4")

    train = draws(20, 2)
    split = sources.from_arrays(
        train.reshape(-1, 16, 16, 1), np.repeat(np.arange(5), 20)
    )
    keras.utils.set_random_seed(0)
    embedding = tfmaml.networks.conv4((16, 16, 1), None, filters=16)

    def prototype_accuracy():
        support, query = draws(1, 3), draws(10, 4)
        both = np.concatenate([support, query], 1).reshape(-1, 16, 16, 1)
        e = tf.reshape(embedding(both, training=True), [5, 11, -1])
        e_s, e_q = e[:, 0], tf.reshape(e[:, 1:], [50, -1])
        d = tf.reduce_sum((e_q[:, None] - e_s[None]) ** 2, -1)
        labels = np.repeat(np.arange(5), 10)
        return float(np.mean(np.argmin(d, 1) == labels))

    before = prototype_accuracy()
    history = pretraining.pretrain_embedding(
        embedding,
        labelled_batches(split, 32, seed=0),
        5,
        steps=150,
        learning_rate=3e-3,
        head=head,
        steps_per_epoch=20,
    )
    assert len(history.history["loss"]) == 8  # 7 x 20 + 10 steps.
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    after = prototype_accuracy()
    assert after >= 0.9 and after > before + 0.3, (before, after)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_label_smoothing_is_the_loss_pretraining_reports(smoothing):
    # One step on one batch: `fit` reports the loss of the weights before
    # the step, which the same seed's classifier gives here in NumPy:
    # cross-entropy against (1 - s) one-hot + s / classes.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("f4")
    y = rng.integers(0, 4, 16)
    batches = tf.data.Dataset.from_tensors((x, y)).repeat()

    def embedding():
        keras.utils.set_random_seed(3)
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(5)])

    history = pretraining.pretrain_embedding(
        embedding(),
        batches,
        4,
        steps=1,
        seed=7,
        label_smoothing=smoothing,
    )
    logits = pretraining.classifier(embedding(), 4, "linear", 7)(x).numpy()
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    targets = (1 - smoothing) * np.eye(4)[y] + smoothing / 4
    expected = -(targets * log_p).sum(1).mean()
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)
    accuracy = np.mean(logits.argmax(1) == y)
    np.testing.assert_allclose(history.history["accuracy"][0], accuracy)
    with pytest.raises(ValueError, match="label_smoothing=1.0"):
        pretraining.pretrain_embedding(
            embedding(), batches, 4, steps=1, label_smoothing=1.0
        )


def test_pretraining_on_validation_labels_its_classes_too():
    config = omniglot_20way_1shot.get_config("smoke")
    config.data_dir = str(OMNIGLOT)
    config.pretrain_batch_size = 512
    (alone,), classes = image_tasks.labelled_training_batches(config)
    config.pretrain_on_validation = True
    (joined,), more = image_tasks.labelled_training_batches(config)
    # The subsets split: 109 training and 27 validation characters, each
    # in its eight orientations.
    assert (classes, more) == (8 * 109, 8 * 136)
    # Labels past the training characters' are drawn; the first batch of
    # images is not what the training classes alone gave.
    labels = np.concatenate([y.numpy() for _, y in joined.take(4)])
    assert labels.max() >= classes and labels.min() >= 0
    assert labels.max() < more
    first = next(iter(alone))[1].numpy()
    assert not np.array_equal(first, labels[: len(first)])


def test_the_config_pretrains_a_protonet_once_per_workdir(tmp_path):
    config = omniglot_20way_1shot.get_config("smoke")
    config.data_dir = str(OMNIGLOT)
    config.pretrain_steps = 3
    config.pretrain_batch_size = 16
    model = experiment.build_model(config)
    assert config_pretraining.pretrain(model, config, str(tmp_path))
    path = tmp_path / config_pretraining.PRETRAINED_WEIGHTS
    assert path.exists()
    trained = [w.copy() for w in model.base_model.get_weights()]
    assert (tmp_path / "tensorboard" / "pretraining").is_dir()
    # Started again: the same embedding, loaded rather than trained.
    again = experiment.build_model(config)
    assert not config_pretraining.pretrain(again, config, str(tmp_path))
    loaded = again.base_model.get_weights()
    for ours, theirs in zip(loaded, trained, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    config.pretrain_steps = 0
    assert not config_pretraining.pretrain(
        again, config, str(tmp_path / "none")
    )
    # The head is the config's: a name it does not know fails by name
    # before anything trains or is written.
    config.pretrain_steps, config.pretrain_head = 3, "dot"
    with pytest.raises(ValueError, match=r"head.*'dot'"):
        config_pretraining.pretrain(again, config, str(tmp_path / "dot"))
    assert not (
        tmp_path / "dot" / config_pretraining.PRETRAINED_WEIGHTS
    ).exists()
    # Named too when the weights are kept and would only be loaded.
    with pytest.raises(ValueError, match=r"pretrain_head='dot'"):
        config_pretraining.pretrain(again, config, str(tmp_path))
    # Pretraining on the validation classes too: only where nothing
    # after it would be chosen on them, and only with pretraining.
    config.pretrain_head = "linear"
    config.pretrain_on_validation = True
    config.total_steps = 5
    with pytest.raises(ValueError, match="use it with total_steps=0"):
        config_pretraining.pretrain(again, config, str(tmp_path / "validation"))
    config.total_steps, config.pretrain_steps = 0, 0
    with pytest.raises(ValueError, match="pretrain_steps=0 pretrains nothing"):
        config_pretraining.pretrain(again, config, str(tmp_path / "validation"))
    maml = omniglot_20way_1shot.get_config("maml,smoke")
    maml.pretrain_steps = 3
    with pytest.raises(ValueError, match="pretrain_steps.*algorithm='maml'"):
        config_pretraining.pretrain(None, maml, str(tmp_path))


def _ensemble_and_config(members: int = 2):
    config = omniglot_20way_1shot.get_config("smoke")
    config.data_dir = str(OMNIGLOT)
    config.ensemble_size = members
    config.pretrain_steps = 3
    config.pretrain_batch_size = 16
    keras.utils.set_random_seed(0)  # The members' initial weights.
    return experiment.build_model(config), config


def test_an_ensemble_stopped_during_pretraining_keeps_its_finished_members(
    tmp_path, monkeypatch
):
    model, config = _ensemble_and_config()
    initial = model.base_model.get_weights()
    lines = []
    assert config_pretraining.pretrain(
        model, config, str(tmp_path / "whole"), report=lines.append
    )
    whole = model.base_model.get_weights()
    assert [line.split(" (")[0] for line in lines] == [
        "Pretrained ensemble member conv4_0",
        "Pretrained ensemble member conv4_1",
    ]
    # Once the ensemble is whole, its members are in one file only.
    assert not (
        tmp_path / "whole" / config_pretraining.PRETRAINED_MEMBERS
    ).exists()

    # A run stopped while its second member trains...
    pretrain_embedding = pretraining.pretrain_embedding

    def stopped_at_the_second(embedding, *args, **kwargs):
        if embedding.name == "conv4_1":
            raise KeyboardInterrupt
        return pretrain_embedding(embedding, *args, **kwargs)

    monkeypatch.setattr(
        pretraining, "pretrain_embedding", stopped_at_the_second
    )
    stopped, config = _ensemble_and_config()
    with pytest.raises(KeyboardInterrupt):
        config_pretraining.pretrain(stopped, config, str(tmp_path / "stopped"))
    kept = tmp_path / "stopped" / config_pretraining.PRETRAINED_MEMBERS
    assert sorted(p.name for p in kept.iterdir()) == ["conv4_0.weights.h5"]
    assert not (
        tmp_path / "stopped" / config_pretraining.PRETRAINED_WEIGHTS
    ).exists()
    # ... and started again loads the first member and trains the second
    # from its first batch, as the run that was not stopped trained it
    # (its head's initial weights do not depend on the members before it).
    monkeypatch.setattr(pretraining, "pretrain_embedding", pretrain_embedding)
    again, config = _ensemble_and_config()
    lines = []
    assert config_pretraining.pretrain(
        again, config, str(tmp_path / "stopped"), report=lines.append
    )
    assert lines[0].startswith("Loaded ensemble member conv4_0 (1 of 2)")
    assert lines[1].startswith("Pretrained ensemble member conv4_1 (2 of 2)")
    resumed = again.base_model.get_weights()
    for ours, theirs in zip(resumed, whole, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    # Both members trained (a weight that moved in each).
    moved = [not np.allclose(w, b) for w, b in zip(whole, initial, strict=True)]
    half = len(moved) // 2
    assert any(moved[:half]) and any(moved[half:]), moved
    assert not kept.exists()


def test_kept_weights_that_do_not_fit_the_config_are_named(tmp_path):
    model, config = _ensemble_and_config()
    kept = tmp_path / config_pretraining.PRETRAINED_MEMBERS
    kept.mkdir()
    other = tfmaml.networks.conv4((28, 28, 1), None, filters=4, name="conv4_1")
    other.save_weights(kept / "conv4_1.weights.h5")
    with pytest.raises(ValueError, match=r"conv4_1\.weights\.h5.*'conv4_1'"):
        config_pretraining.pretrain(model, config, str(tmp_path))
    # The file is still there for the user to look at.
    assert (kept / "conv4_1.weights.h5").exists()
    # The same for an ensemble's whole file.
    model.base_model.save_weights(tmp_path / "other.weights.h5")
    smaller, config = _ensemble_and_config(members=3)
    (tmp_path / "other.weights.h5").rename(
        tmp_path / config_pretraining.PRETRAINED_WEIGHTS
    )
    with pytest.raises(ValueError, match=r"pretrained\.weights\.h5 holds"):
        config_pretraining.pretrain(smaller, config, str(tmp_path))


def test_a_pretrained_protonet_without_episodes_trains_and_exports(tmp_path):
    # The recipe's shape: an ensemble of embeddings, each pretrained.
    trained = _run(
        "tfmaml.train",
        "--config=" + str(CONFIGS / "omniglot_20way_1shot.py") + ":smoke",
        f"--config.data_dir={OMNIGLOT}",
        "--config.ensemble_size=2",
        "--config.pretrain_steps=4",
        "--config.pretrain_batch_size=16",
        "--config.total_steps=0",
        "--config.pretrain_on_validation=True",
        "--workdir=run",
        "--export_dir=exported",
        "--fit_verbose=0",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Pretrained the embedding for 4 steps" in trained.stdout
    assert "validation (classes pretrained on): accuracy" in trained.stdout
    assert (tmp_path / "run" / config_pretraining.PRETRAINED_WEIGHTS).exists()
    figures = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert set(figures) == {"random", "within_alphabet"}
    assert trained.stdout.count("Pretrained ensemble member") == 2
    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    embedding = tfmaml.networks.embedding_ensemble(
        [
            tfmaml.networks.conv4((28, 28, 1), None, filters=8, name=name)
            for name in ("conv4_0", "conv4_1")
        ]
    )
    embedding.load_weights(
        tmp_path / "run" / config_pretraining.PRETRAINED_WEIGHTS
    )
    for saved, pretrained in zip(
        model.base_model.get_weights(), embedding.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(saved, pretrained)
    # Each member trained on its own draws, from its own initialisation.
    first, second = tfmaml.networks.ensemble_members(model.base_model)
    assert not np.allclose(first.get_weights()[0], second.get_weights()[0])
    served = tf.saved_model.load(str(tmp_path / "exported"))
    raw = np.random.default_rng(0).integers(0, 256, (6, 105, 105, 1))
    out = served.adapt_and_predict(
        support_x=raw[:3].astype("f4"),
        support_y=np.arange(3, dtype="int32"),
        query_x=raw[3:].astype("f4"),
    )
    # The run's preprocessing (the recipe's: ink centred and scaled).
    prepare = image_tasks.preprocessing(
        omniglot_20way_1shot.get_config("smoke")
    )
    expected = model.adapt_and_predict(
        prepare(raw[:3].astype("f4")),
        np.arange(3, dtype="int32"),
        prepare(raw[3:].astype("f4")),
    )
    np.testing.assert_allclose(out["predictions"], expected, atol=1e-4)
