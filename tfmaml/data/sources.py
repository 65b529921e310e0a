"""Labelled image sources, indexed by class, and their standard class splits.

A `ClassIndexedImages` keeps every image of a split in one array, grouped by
class, so episodes can be gathered with vectorised ops (`tfmaml.data.episodes`).
Sources: arrays, any `tf.data.Dataset` of `(image, label)` (TFDS splits
included), the official Omniglot archives in a directory (checked against
their published SHA-256 sums), TFDS Omniglot and CIFAR-100 (CIFAR-FS), and a
mini-ImageNet directory with the Ravi and Larochelle split CSVs.
"""

import csv
import os
import tarfile
import zipfile
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfmaml.data.files import check_sha256
from tfmaml.data.files import decode_image

# The official archives' SHA-256 sums, as TFDS registers them for its
# `omniglot` builder (tensorflow_datasets/url_checksums/omniglot.txt).
OMNIGLOT_SHA256 = {
    "images_background.zip": (
        "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640"
    ),
    "images_evaluation.zip": (
        "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee"
    ),
    "images_background_small1.zip": (
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"
    ),
    "images_background_small2.zip": (
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f"
    ),
}
OMNIGLOT_IMAGE_SHAPE = (105, 105, 1)
# The alphabets of small2 that small1 lacks: the test split of the subsets.
OMNIGLOT_SUBSET_TEST_ALPHABETS = ("Japanese_(katakana)", "Sanskrit", "Tagalog")
# MAML's split of the 1623 Omniglot characters (Finn et al. 2017).
OMNIGLOT_MAML_SPLIT_SIZES = {"train": 1100, "validation": 100}

# The CIFAR-100 binary archive (the one TFDS's `cifar100` builder reads):
# records of a coarse label byte, a fine label byte and 32x32x3 pixels in
# channel-major order, in `train.bin` and `test.bin`.
CIFAR100_ARCHIVE = "cifar-100-binary.tar.gz"
CIFAR100_IMAGE_SHAPE = (32, 32, 3)
MINI_IMAGENET_IMAGE_SHAPE = (84, 84, 3)

# CIFAR-FS (Bertinetto et al. 2019): 64 / 16 / 20 CIFAR-100 classes. The
# training classes are the 64 not listed here.
CIFAR_FS_VALIDATION = (
    "beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle",
    "butterfly", "sea", "camel", "cattle", "crab", "crocodile", "maple_tree",
    "motorcycle", "tractor",
)  # fmt: skip
CIFAR_FS_TEST = (
    "whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table",
    "wardrobe", "leopard", "plain", "chimpanzee", "fox", "snail", "worm",
    "baby", "man", "woman", "bicycle", "pickup_truck", "rocket",
)  # fmt: skip


class ClassIndexedImages(NamedTuple):
    """The images of one split, grouped by class.

    Class `c` owns `images[class_starts[c] : class_starts[c] + class_sizes[c]]`.
    `metadata` maps a field name (e.g. `"alphabet"`, `"drawer"`) to one
    value per image.
    """

    name: str
    images: np.ndarray
    class_starts: np.ndarray
    class_sizes: np.ndarray
    class_names: tuple[str, ...]
    metadata: Mapping[str, np.ndarray]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class Splits(NamedTuple):
    """A (train, validation, test) triple: the disjoint class splits of one
    data set (`ClassIndexedImages`, from the functions here), or the task
    streams built from them (`tf.data.Dataset`s, from
    `tfmaml.experiment.build_splits`)."""

    train: Any
    validation: Any
    test: Any


def from_arrays(
    images,
    labels,
    *,
    class_names: Sequence[str] | None = None,
    metadata: Mapping[str, Sequence] | None = None,
    name: str = "arrays",
) -> ClassIndexedImages:
    """Groups `images` by `labels` (integer class ids or class names).

    Args:
        images: `[N, ...]` images.
        labels: `[N]` class ids or names.
        class_names: Names of integer class ids. Defaults to the ids.
        metadata: Per-image fields kept alongside. Defaults to none.
        name: The split's name, used in error messages.

    Returns:
        A `ClassIndexedImages` with the classes in sorted order.

    Raises:
        ValueError: If the lengths differ or there are no images.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    metadata = {k: np.asarray(v) for k, v in (metadata or {}).items()}
    if len(images) == 0:
        raise ValueError(f"Split {name!r} has no images.")
    for field, values in {"labels": labels, **metadata}.items():
        if len(values) != len(images):
            raise ValueError(
                f"Split {name!r}: `{field}` has {len(values)} entries for "
                f"{len(images)} images."
            )
    classes, inverse, sizes = np.unique(
        labels, return_inverse=True, return_counts=True
    )
    order = np.argsort(inverse, kind="stable")
    if class_names is not None and classes.dtype.kind in "iu":
        names = tuple(str(class_names[c]) for c in classes)
    else:
        names = tuple(str(c) for c in classes)
    return ClassIndexedImages(
        name=name,
        images=images[order],
        class_starts=np.concatenate([[0], np.cumsum(sizes)[:-1]]),
        class_sizes=sizes,
        class_names=names,
        metadata={k: v[order] for k, v in metadata.items()},
    )


def from_dataset(
    dataset: tf.data.Dataset,
    *,
    class_names: Sequence[str] | None = None,
    name: str = "dataset",
) -> ClassIndexedImages:
    """Reads a finite `tf.data.Dataset` of `(image, label)` into memory.
    Works for a TFDS split loaded with `as_supervised=True`.

    Args:
        dataset: A finite dataset of `(image, label)`.
        class_names: Names of integer labels. Defaults to the ids.
        name: The split's name, for error messages.
    """
    images, labels = [], []
    for image, label in dataset.batch(1024).as_numpy_iterator():
        images.append(image)
        labels.append(label)
    if not images:
        raise ValueError(f"Split {name!r}: the dataset is empty.")
    return from_arrays(
        np.concatenate(images),
        np.concatenate(labels),
        class_names=class_names,
        name=name,
    )


def select_classes(
    source: ClassIndexedImages, names: Sequence[str], *, name: str
) -> ClassIndexedImages:
    """The subset of `source` made of the classes `names`, in that order.

    Args:
        source: The images of several classes.
        names: The classes to keep, by name.
        name: The new split's name.

    Raises:
        ValueError: Naming the classes that `source` lacks.
    """
    index = {n: i for i, n in enumerate(source.class_names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise ValueError(
            f"Split {name!r}: {len(missing)} classes are not in "
            f"{source.name!r}: {missing[:10]}"
        )
    chosen = [index[n] for n in names]
    rows = np.concatenate(
        [
            np.arange(
                source.class_starts[c],
                source.class_starts[c] + source.class_sizes[c],
            )
            for c in chosen
        ]
    )
    sizes = source.class_sizes[chosen]
    return ClassIndexedImages(
        name=name,
        images=source.images[rows],
        class_starts=np.concatenate([[0], np.cumsum(sizes)[:-1]]),
        class_sizes=sizes,
        class_names=tuple(names),
        metadata={k: v[rows] for k, v in source.metadata.items()},
    )


# Omniglot.


def omniglot_from_archives(
    directory: str | os.PathLike,
    *,
    expected_sha256: Mapping[str, str] = OMNIGLOT_SHA256,
) -> ClassIndexedImages:
    """Reads the official Omniglot archives found in `directory`.

    Any subset of `images_background.zip`, `images_evaluation.zip`,
    `images_background_small1.zip` and `images_background_small2.zip` may
    be present; each is checked against its published SHA-256 sum before it
    is read. A character (class, named `Alphabet/characterNN`) present in
    several archives (Greek and Latin are in both small subsets) is read
    once. Every image keeps its `alphabet`, `character`, `drawer` and
    `file` in `metadata`.

    Args:
        directory: The directory holding the archives.
        expected_sha256: Archive name -> SHA-256. Defaults to the official
            sums.

    Returns:
        A `ClassIndexedImages` of uint8 images `[N, 105, 105, 1]`, ink dark
        (0) on white (255).

    Raises:
        FileNotFoundError: If `directory` holds none of the archives.
        ValueError: Naming the archive with a wrong checksum, or the file
            of an unreadable image or one of another shape.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No Omniglot directory at {directory!r}.")
    present = [
        a for a in expected_sha256 if os.path.exists(os.path.join(directory, a))
    ]
    if not present:
        raise FileNotFoundError(
            f"{directory!r} holds none of the Omniglot archives "
            f"{sorted(expected_sha256)}."
        )
    images, fields = (
        [],
        {k: [] for k in ("alphabet", "character", "drawer", "file")},
    )
    seen = set()
    for archive in present:
        path = os.path.join(directory, archive)
        check_sha256(path, expected_sha256[archive])
        with zipfile.ZipFile(path) as zipped:
            for member in sorted(zipped.namelist()):
                parts = member.split("/")
                if len(parts) != 4 or not parts[3].endswith(".png"):
                    continue
                _, alphabet, character, filename = parts
                key = (alphabet, character, filename)
                if key in seen:
                    continue
                seen.add(key)
                images.append(
                    _decode_png(zipped.read(member), f"{path}:{member}")
                )
                fields["alphabet"].append(alphabet)
                fields["character"].append(character)
                fields["drawer"].append(filename[:-4].rsplit("_", 1)[-1])
                fields["file"].append(f"{archive}:{member}")
    if not images:
        raise ValueError(
            f"The archives {present} in {directory!r} hold no PNG images."
        )
    labels = [
        f"{a}/{c}"
        for a, c in zip(fields["alphabet"], fields["character"], strict=True)
    ]
    return from_arrays(
        np.stack(images), labels, metadata=fields, name="omniglot"
    )


def omniglot_from_tfds(
    split: str = "train+test", *, data_dir: str | None = None
) -> ClassIndexedImages:
    """Loads Omniglot through `tfds.load("omniglot")` (downloads if needed).
    The TFDS splits are `train` (background), `test` (evaluation), `small1`
    and `small2`. Classes are named `Alphabet/characterNN` as with
    `omniglot_from_archives`, so the same split functions apply.

    Args:
        split: The TFDS split(s) to load.
        data_dir: TFDS's data directory. Defaults to TFDS's own.
    """
    import tensorflow_datasets as tfds

    dataset, info = tfds.load(
        "omniglot", split=split, data_dir=data_dir, with_info=True
    )
    alphabets = info.features["alphabet"].names
    images, labels, fields = [], [], {"alphabet": [], "character": []}
    for example in dataset.as_numpy_iterator():
        alphabet = alphabets[example["alphabet"]]
        character = f"character{example['alphabet_char_id'] + 1:02d}"
        images.append(example["image"][..., :1])
        labels.append(f"{alphabet}/{character}")
        fields["alphabet"].append(alphabet)
        fields["character"].append(character)
    if not images:
        raise ValueError(f"TFDS omniglot split {split!r} is empty.")
    return from_arrays(
        np.stack(images), labels, metadata=fields, name="omniglot"
    )


def omniglot_splits(
    source: ClassIndexedImages,
    *,
    split: str = "auto",
    seed: int = 1,
    validation_alphabet: str = "",
) -> Splits:
    """Splits Omniglot characters into train, validation and test classes.
    - `"maml"`: the MAML paper's split of all 1623 characters, shuffled with
      `seed`: 1100 train, 100 validation, 423 test.
    - `"subsets"`: for the two small background subsets: test on the
      alphabets of small2 that small1 lacks (Japanese_(katakana), Sanskrit,
      Tagalog); the other alphabets (small1's five) train, with a fifth
      of their characters, picked with `seed`, held out for validation
      (enough for 20-way episodes), or `validation_alphabet` whole (the
      others train on all their characters): validation then scores an
      alphabet never trained on, as the test does.
    - `"auto"`: `"maml"` when all 1623 characters are there, else
      `"subsets"`.

    Args:
        source: Omniglot images with their alphabets.
        split: `"maml"`, `"subsets"` or `"auto"` (the MAML split when all
            1623 characters are there).
        seed: Seeds the MAML split's shuffle and the subsets split's
            validation fifth.
        validation_alphabet: The subsets split's validation alphabet;
            `""` for a fifth of the characters. Defaults to `""`.

    Raises:
        ValueError: If `split` is unknown, the characters do not fit it,
            or `validation_alphabet` is not a training alphabet of it.
    """
    names = np.array(source.class_names)
    rng = np.random.default_rng(seed)
    if split == "auto":
        split = "maml" if len(names) == 1623 else "subsets"
    if validation_alphabet and split != "subsets":
        raise ValueError(
            f"validation_alphabet={validation_alphabet!r} needs the subsets "
            f"split; the {split!r} split draws its validation characters."
        )
    if split == "maml":
        if len(names) != 1623:
            raise ValueError(
                "The MAML split needs all 1623 Omniglot characters "
                "(images_background.zip and images_evaluation.zip). "
                f"Received: {len(names)} characters"
            )
        order = names[rng.permutation(len(names))]
        train = OMNIGLOT_MAML_SPLIT_SIZES["train"]
        validation = train + OMNIGLOT_MAML_SPLIT_SIZES["validation"]
        parts = order[:train], order[train:validation], order[validation:]
    elif split == "subsets":
        alphabets = np.array([n.split("/")[0] for n in names])
        is_test = np.isin(alphabets, OMNIGLOT_SUBSET_TEST_ALPHABETS)
        if not is_test.any() or is_test.all():
            raise ValueError(
                "The subsets split tests on the alphabets "
                f"{list(OMNIGLOT_SUBSET_TEST_ALPHABETS)} and trains on the "
                "others; both must be present (images_background_small1.zip "
                f"and images_background_small2.zip). Received alphabets: "
                f"{sorted(set(alphabets))}"
            )
        rest = names[~is_test]
        if validation_alphabet:
            is_validation = alphabets[~is_test] == validation_alphabet
            if not is_validation.any():
                raise ValueError(
                    f"validation_alphabet={validation_alphabet!r} is not a "
                    "training alphabet of the subsets split; expected one "
                    f"of {sorted(set(alphabets[~is_test]))}."
                )
        else:
            held_out = rng.permutation(len(rest))[: max(1, len(rest) // 5)]
            is_validation = np.zeros(len(rest), bool)
            is_validation[held_out] = True
        parts = rest[~is_validation], rest[is_validation], names[is_test]
    else:
        raise ValueError(
            "`split` must be 'auto', 'maml' or 'subsets'. "
            f"Received: split={split!r}"
        )
    return Splits(
        *(
            select_classes(source, list(part), name=f"omniglot/{split_name}")
            for split_name, part in zip(Splits._fields, parts, strict=True)
        )
    )


# CIFAR-FS and mini-ImageNet.


def cifar_fs_splits(source: ClassIndexedImages) -> Splits:
    """The CIFAR-FS class split (64 / 16 / 20) of CIFAR-100 images.

    Args:
        source: All CIFAR-100 images with their fine label names, e.g.
            `from_dataset(tfds.load("cifar100", split="train+test",
            as_supervised=True), class_names=info.features["label"].names)`.
    """
    held_out = set(CIFAR_FS_VALIDATION) | set(CIFAR_FS_TEST)
    train = [n for n in source.class_names if n not in held_out]
    if len(train) != 64:
        raise ValueError(
            "CIFAR-FS needs the 100 CIFAR-100 classes by fine label name. "
            f"Received {source.num_classes} classes, {len(train)} of them "
            "outside the validation and test lists."
        )
    return Splits(
        train=select_classes(source, train, name="cifar_fs/train"),
        validation=select_classes(
            source, CIFAR_FS_VALIDATION, name="cifar_fs/validation"
        ),
        test=select_classes(source, CIFAR_FS_TEST, name="cifar_fs/test"),
    )


def cifar_fs_from_tfds(*, data_dir: str | None = None) -> Splits:
    """CIFAR-FS from TFDS `cifar100` (downloads if needed).

    Args:
        data_dir: TFDS's data directory. Defaults to TFDS's own.
    """
    import tensorflow_datasets as tfds

    dataset, info = tfds.load(
        "cifar100",
        split="train+test",
        as_supervised=True,
        data_dir=data_dir,
        with_info=True,
    )
    names = info.features["label"].names
    return cifar_fs_splits(
        from_dataset(dataset, class_names=names, name="cifar100")
    )


def cifar_fs_from_archive(directory: str | os.PathLike) -> Splits:
    """CIFAR-FS from the official CIFAR-100 binary archive in `directory`.
    Reads `cifar-100-binary.tar.gz` (train and test records together, as
    CIFAR-FS pools them; fine labels named by `fine_label_names.txt`)
    without unpacking it.

    Args:
        directory: Holds `cifar-100-binary.tar.gz`.

    Raises:
        FileNotFoundError: Naming the missing archive.
        ValueError: Naming the archive member that is missing or malformed.
    """
    path = os.path.join(os.fspath(directory), CIFAR100_ARCHIVE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"The CIFAR-100 archive {path!r} is missing (`data_dir` must "
            f"hold {CIFAR100_ARCHIVE})."
        )
    record = 2 + int(np.prod(CIFAR100_IMAGE_SHAPE))
    with tarfile.open(path) as archive:

        def read(member):
            try:
                return archive.extractfile(f"cifar-100-binary/{member}").read()
            except (KeyError, AttributeError):
                raise ValueError(
                    f"{path!r} has no member cifar-100-binary/{member}."
                ) from None

        names = read("fine_label_names.txt").decode().split()
        raw = np.frombuffer(read("train.bin") + read("test.bin"), np.uint8)
    if len(names) != 100 or raw.size % record:
        raise ValueError(
            f"{path!r} is not a CIFAR-100 binary archive: {len(names)} fine "
            f"label names (100 expected), {raw.size} bytes of records "
            f"(records are {record} bytes)."
        )
    raw = raw.reshape(-1, record)
    images = raw[:, 2:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return cifar_fs_splits(
        from_arrays(images, raw[:, 1], class_names=names, name="cifar100")
    )


def mini_imagenet_splits(
    directory: str | os.PathLike, *, image_size: int = 84
) -> Splits:
    """mini-ImageNet from a directory with the Ravi and Larochelle split.
    `directory` holds `train.csv`, `val.csv` and `test.csv` (header
    `filename,label`) and an `images/` folder with the files they name.
    Images are decoded and resized to `image_size` squared RGB.

    Args:
        directory: Holds `images/` and the split CSVs.
        image_size: The side images are resized to. Defaults to `84`.

    Raises:
        FileNotFoundError: Naming a missing CSV or image.
        ValueError: Naming an unreadable image or a malformed CSV.
    """
    directory = os.fspath(directory)
    files = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
    for csv_name in files.values():
        path = os.path.join(directory, csv_name)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"mini-ImageNet split file {path!r} is missing."
            )
    splits = []
    for split_name, csv_name in files.items():
        path = os.path.join(directory, csv_name)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or set(rows[0]) != {"filename", "label"}:
            raise ValueError(
                f"{path!r} must have the header 'filename,label' and at "
                "least one row."
            )
        images = []
        for row in rows:
            image_path = os.path.join(directory, "images", row["filename"])
            if not os.path.exists(image_path):
                raise FileNotFoundError(
                    f"mini-ImageNet image {image_path!r} (listed in "
                    f"{csv_name}) is missing."
                )
            with open(image_path, "rb") as f:
                image = decode_image(f.read(), image_path, channels=3)
            images.append(
                tf.cast(
                    tf.image.resize(
                        image, (image_size, image_size), antialias=True
                    ),
                    tf.uint8,
                ).numpy()
            )
        splits.append(
            from_arrays(
                np.stack(images),
                [r["label"] for r in rows],
                metadata={"file": [r["filename"] for r in rows]},
                name=f"mini_imagenet/{split_name}",
            )
        )
    return Splits(*splits)


def _decode_png(data, where):
    image = decode_image(data, where, channels=1).numpy()
    if image.shape != OMNIGLOT_IMAGE_SHAPE:
        raise ValueError(
            f"Omniglot image {where} has shape {image.shape}; expected "
            f"{OMNIGLOT_IMAGE_SHAPE}."
        )
    return image
