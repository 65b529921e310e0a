"""Class-indexed sources: Omniglot (archives, TFDS), CIFAR-FS, mini-ImageNet."""

import hashlib
import os
import pathlib
import shutil
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfmaml.data import join_classes
from tfmaml.data import sources

OMNIGLOT_DIR = pathlib.Path(
    os.environ.get(
        "TFMAML_OMNIGLOT_DIR",
        pathlib.Path(__file__).resolve().parents[2] / "shared/data/omniglot",
    )
)
SMALL1_ALPHABETS = {"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}


@pytest.fixture(scope="module")
def omniglot():
    return sources.omniglot_from_archives(OMNIGLOT_DIR)


def _png(array):
    return tf.io.encode_png(np.asarray(array, np.uint8)).numpy()


def _write_zip(path, members):
    with zipfile.ZipFile(path, "w") as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}


def test_the_small_archives_give_242_characters_of_20_drawings(omniglot):
    # 136 + 156 characters, Greek and Latin (24 + 26) being in both.
    assert omniglot.num_classes == 242
    assert omniglot.images.shape == (4840, 105, 105, 1)
    assert omniglot.images.dtype == np.uint8
    assert set(omniglot.class_sizes) == {20}
    # Ink is dark on white.
    assert omniglot.images.mean() > 200
    alphabets = set(omniglot.metadata["alphabet"])
    assert alphabets == SMALL1_ALPHABETS | {
        "Japanese_(katakana)",
        "Sanskrit",
        "Tagalog",
    }
    first = slice(omniglot.class_starts[0], omniglot.class_starts[0] + 20)
    assert omniglot.class_names[0] == "Balinese/character01"
    assert set(omniglot.metadata["character"][first]) == {"character01"}
    assert sorted(omniglot.metadata["drawer"][first]) == [
        f"{d:02d}" for d in range(1, 21)
    ]


def test_the_published_checksums_are_the_ones_tfds_registers():
    registry = pathlib.Path(tfds.__file__).parent / "url_checksums"
    lines = (registry / "omniglot.txt").read_text().split("\n")
    registered = {
        line.split("\t")[3]: line.split("\t")[2] for line in lines if line
    }
    assert registered == sources.OMNIGLOT_SHA256
    sums = (OMNIGLOT_DIR / "SHA256SUMS").read_text().split("\n")
    for line in filter(None, sums):
        digest, name = line.split()
        assert sources.OMNIGLOT_SHA256[name] == digest


def test_the_subsets_split_is_by_alphabet_and_disjoint(omniglot):
    splits = sources.omniglot_splits(omniglot, split="auto")
    names = [set(s.class_names) for s in splits]
    assert not (
        names[0] & names[1] or names[0] & names[2] or names[1] & names[2]
    )
    assert sum(map(len, names)) == 242
    test_alphabets = {n.split("/")[0] for n in names[2]}
    assert test_alphabets == set(sources.OMNIGLOT_SUBSET_TEST_ALPHABETS)
    train_alphabets = {n.split("/")[0] for n in names[0] | names[1]}
    assert train_alphabets == SMALL1_ALPHABETS
    assert len(names[1]) == 136 // 5
    # Images follow their classes.
    for split in splits:
        alphabets = {n.split("/")[0] for n in split.class_names}
        assert set(split.metadata["alphabet"]) == alphabets


def test_a_held_out_alphabet_is_the_whole_validation_split(omniglot):
    splits = sources.omniglot_splits(
        omniglot, split="subsets", validation_alphabet="Balinese"
    )
    alphabet = np.array([n.split("/")[0] for n in omniglot.class_names])
    balinese = set(np.array(omniglot.class_names)[alphabet == "Balinese"])
    assert set(splits.validation.class_names) == balinese
    assert len(balinese) == 24
    # The other four train on all their characters; the test is unchanged.
    train = set(splits.train.class_names)
    assert {n.split("/")[0] for n in train} == SMALL1_ALPHABETS - {"Balinese"}
    assert len(train) == 136 - 24
    assert splits.test.class_names == (
        sources.omniglot_splits(omniglot, split="subsets").test.class_names
    )
    with pytest.raises(ValueError, match="'Sanskrit' is not a training"):
        sources.omniglot_splits(omniglot, validation_alphabet="Sanskrit")
    names = [f"Alphabet{i // 40}/character{i % 40:02d}" for i in range(1623)]
    full = sources.from_arrays(np.zeros((1623, 2, 2, 1), np.uint8), names)
    with pytest.raises(ValueError, match="'maml' split draws"):
        sources.omniglot_splits(full, validation_alphabet="Alphabet0")


def test_joined_splits_keep_every_class_with_its_images(omniglot):
    splits = sources.omniglot_splits(omniglot, split="subsets")
    joined = join_classes(
        splits.train, splits.validation, name="train+validation"
    )
    assert joined.num_classes == 136
    assert len(joined.images) == len(splits.train.images) + len(
        splits.validation.images
    )
    # Each class, taken back out, is the same images and metadata.
    for part in (splits.train, splits.validation):
        again = sources.select_classes(joined, part.class_names, name="again")
        np.testing.assert_array_equal(again.images, part.images)
        np.testing.assert_array_equal(again.class_sizes, part.class_sizes)
        for field, values in part.metadata.items():
            np.testing.assert_array_equal(again.metadata[field], values)
    with pytest.raises(ValueError, match=r"share 27 classes"):
        join_classes(joined, splits.validation, name="twice")
    small = sources.from_arrays(np.zeros((2, 3, 3, 1), np.uint8), [0, 1])
    other = sources.from_arrays(
        np.zeros((2, 4, 4, 1), np.uint8), [0, 1], class_names=["a", "b"]
    )
    with pytest.raises(ValueError, match=r"shape \(3, 3, 1\).*\(4, 4, 1\)"):
        join_classes(small, other, name="shapes")
    drawn = sources.from_arrays(
        np.zeros((2, 3, 3, 1), np.uint8),
        ["c", "d"],
        metadata={"alphabet": ["x", "y"]},
    )
    with pytest.raises(ValueError, match=r"fields \[\], .* \['alphabet'\]"):
        join_classes(small, drawn, name="fields")


def test_the_maml_split_of_1623_characters():
    names = [f"Alphabet{i // 40}/character{i % 40:02d}" for i in range(1623)]
    images = np.zeros((1623, 2, 2, 1), np.uint8)
    source = sources.from_arrays(images, names, name="omniglot")
    splits = sources.omniglot_splits(source, split="maml", seed=1)
    sizes = [s.num_classes for s in splits]
    assert sizes == [1100, 100, 423]
    assert len(set().union(*(s.class_names for s in splits))) == 1623
    again = sources.omniglot_splits(source, split="maml", seed=1)
    other = sources.omniglot_splits(source, split="maml", seed=2)
    assert again.test.class_names == splits.test.class_names
    assert other.test.class_names != splits.test.class_names
    assert sources.omniglot_splits(source).train.class_names == (
        splits.train.class_names
    )  # "auto" picks the MAML split for the full set.
    with pytest.raises(ValueError, match="1623.*Received: 242"):
        sources.omniglot_splits(
            sources.from_arrays(images[:242], names[:242]), split="maml"
        )


def test_a_wrong_checksum_names_the_archive(tmp_path):
    archive = tmp_path / "images_background_small1.zip"
    shutil.copy(OMNIGLOT_DIR / archive.name, archive)
    with open(archive, "ab") as f:
        f.write(b"\0")
    with pytest.raises(
        ValueError, match="images_background_small1.zip.*SHA-256"
    ):
        sources.omniglot_from_archives(tmp_path)


def test_a_corrupt_image_names_its_file(tmp_path):
    good = _png(np.full((105, 105, 1), 255))
    sums = _write_zip(
        tmp_path / "images_background.zip",
        {
            "images_background/Greek/character01/0001_01.png": good,
            "images_background/Greek/character01/0002_02.png": b"not a png",
        },
    )
    with pytest.raises(ValueError, match="character01/0002_02.png"):
        sources.omniglot_from_archives(tmp_path, expected_sha256=sums)


def test_an_image_of_the_wrong_shape_names_its_file(tmp_path):
    sums = _write_zip(
        tmp_path / "images_evaluation.zip",
        {
            "images_evaluation/Greek/character01/0001_01.png": _png(
                np.zeros((28, 28, 1))
            )
        },
    )
    with pytest.raises(
        ValueError, match=r"0001_01.png has shape \(28, 28, 1\)"
    ):
        sources.omniglot_from_archives(tmp_path, expected_sha256=sums)


def test_an_empty_directory_is_refused(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="none of the Omniglot archives"
    ):
        sources.omniglot_from_archives(tmp_path)
    with pytest.raises(FileNotFoundError, match="No Omniglot directory"):
        sources.omniglot_from_archives(tmp_path / "missing")


def test_omniglot_from_tfds_names_classes_like_the_archives():
    with tfds.testing.mock_data(num_examples=30):
        source = sources.omniglot_from_tfds("small1")
    assert source.images.shape[1:] == (105, 105, 1)
    assert sum(source.class_sizes) == 30
    for name in source.class_names:
        alphabet, character = name.split("/")
        assert character.startswith("character")


def _cifar_source():
    names = [*sources.CIFAR_FS_VALIDATION, *sources.CIFAR_FS_TEST]
    names += [f"train_class_{i}" for i in range(64)]
    labels = np.repeat(np.arange(100), 3)
    images = np.arange(300, dtype=np.uint8).reshape(300, 1, 1, 1)
    return sources.from_arrays(images, labels, class_names=names)


def test_cifar_fs_splits_64_16_20_classes():
    splits = sources.cifar_fs_splits(_cifar_source())
    assert [s.num_classes for s in splits] == [64, 16, 20]
    assert set(splits.test.class_names) == set(sources.CIFAR_FS_TEST)
    assert all(n.startswith("train_class") for n in splits.train.class_names)
    assert splits.validation.images.shape == (48, 1, 1, 1)


def test_cifar_fs_refuses_other_class_names():
    source = sources.select_classes(
        _cifar_source(), _cifar_source().class_names[1:], name="cut"
    )
    with pytest.raises(ValueError, match=r"not in 'cut': \['beaver'\]"):
        sources.cifar_fs_splits(source)


def _mini_imagenet(tmp_path, broken=None):
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for split, classes in (("train", "ab"), ("val", "c"), ("test", "de")):
        rows = ["filename,label"]
        for label in classes:
            for i in range(3):
                name = f"n0{label}{i}.jpg"
                image = rng.integers(0, 255, (100, 90, 3), dtype=np.uint8)
                data = tf.io.encode_jpeg(image).numpy()
                if name == broken:
                    data = b"garbage"
                (tmp_path / "images" / name).write_bytes(data)
                rows.append(f"{name},n0{label}")
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")


def test_mini_imagenet_reads_the_ravi_larochelle_layout(tmp_path):
    _mini_imagenet(tmp_path)
    splits = sources.mini_imagenet_splits(tmp_path, image_size=16)
    assert [s.num_classes for s in splits] == [2, 1, 2]
    assert splits.train.images.shape == (6, 16, 16, 3)
    assert splits.test.class_names == ("n0d", "n0e")


def test_mini_imagenet_names_a_missing_or_broken_image(tmp_path):
    _mini_imagenet(tmp_path, broken="n0c1.jpg")
    with pytest.raises(ValueError, match="n0c1.jpg"):
        sources.mini_imagenet_splits(tmp_path)
    (tmp_path / "images" / "n0a0.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="n0a0.jpg.*train.csv"):
        sources.mini_imagenet_splits(tmp_path)
    (tmp_path / "val.csv").unlink()
    with pytest.raises(FileNotFoundError, match="val.csv"):
        sources.mini_imagenet_splits(tmp_path)


def test_from_arrays_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="`labels` has 3 entries for 4 images"):
        sources.from_arrays(np.zeros((4, 2)), [0, 1, 2], name="x")
