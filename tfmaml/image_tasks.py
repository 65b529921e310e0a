"""The few-shot image data sets a config can name, and their task streams.

`IMAGE_SOURCES` maps a config's `task` to how its classes load; the streams
(training, validation, test, and the test's within-group variant) are
`tfmaml.data.episodes` over those classes, seeded per split.
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import keras
import ml_collections
import tensorflow as tf

from tfmaml import data
from tfmaml.data import Splits
from tfmaml.data.streams import SPLIT_SEED_OFFSETS


class ImageSource(NamedTuple):
    """A few-shot image data set a config can name as its `task`.

    Attributes:
        load: `load(config)` returns its class `Splits` of raw images
            (`ClassIndexedImages`).
        raw_shape: The shape of one image as the data set stores it (what
            the exported model takes).
    """

    load: Callable[[ml_collections.ConfigDict], Splits]
    raw_shape: tuple[int, ...]


def _omniglot(config):
    if config.data_dir:
        source = data.sources.omniglot_from_archives(config.data_dir)
    else:
        source = data.sources.omniglot_from_tfds()
    return data.sources.omniglot_splits(
        source,
        split=config.split,
        seed=config.seed + 1,
        validation_alphabet=config.validation_alphabet,
    )


def _cifar_fs(config):
    if config.data_dir:
        return data.sources.cifar_fs_from_archive(config.data_dir)
    return data.sources.cifar_fs_from_tfds()


def _mini_imagenet(config):
    if not config.data_dir:
        raise ValueError(
            "mini-ImageNet has no download: set `data_dir` to a directory "
            "with images/ and the Ravi and Larochelle train.csv, val.csv "
            "and test.csv. Received: data_dir=''"
        )
    return data.sources.mini_imagenet_splits(config.data_dir)


IMAGE_SOURCES: dict[str, ImageSource] = {
    "omniglot": ImageSource(_omniglot, data.sources.OMNIGLOT_IMAGE_SHAPE),
    "cifar_fs": ImageSource(_cifar_fs, data.sources.CIFAR100_IMAGE_SHAPE),
    "mini_imagenet": ImageSource(
        _mini_imagenet, data.sources.MINI_IMAGENET_IMAGE_SHAPE
    ),
}


def preprocessing(config: ml_collections.ConfigDict) -> keras.Model:
    """The image preprocessing of an image config (resize, scale, invert).

    Args:
        config: An image config.
    """
    return data.preprocessing(
        tuple(config.image_size),
        invert=config.invert,
        centre_ink=config.get("centre_ink", False),
        ink_radius=config.get("ink_radius", 0.0) or None,
        deslant_ink=config.get("deslant_ink", False),
    )


def grouped_test(
    config: ml_collections.ConfigDict,
) -> tuple[tf.data.Dataset, tuple[str, ...]] | None:
    """The test stream of within-group episodes (every task's classes
    share `config.eval_group_by`, e.g. one Omniglot alphabet), and the
    groups it draws from; `None` when the config has no `eval_group_by`.
    The same number of tasks and queries as `build_splits`' test stream.

    Args:
        config: An image config.
    """
    if not config.get("eval_group_by"):
        return None
    classes = _load_classes(config)
    groups = data.grouped_classes(
        classes.test, config.eval_group_by, config.num_ways
    )
    stream = _test_stream(config, classes, group_by=config.eval_group_by)
    return stream, tuple(groups)


# The config fields that decide a source's class splits (what `load` reads),
# with the value a config without the field means (`None`: it must have it).
_SPLIT_FIELDS = {
    "task": None,
    "data_dir": None,
    "split": "auto",
    "seed": None,
    "validation_alphabet": "",
}


@functools.lru_cache(maxsize=1)
def _load_cached(fields):
    config = ml_collections.ConfigDict(dict(fields))
    return IMAGE_SOURCES[config.task].load(config)


def _load_classes(config):
    """The config's class splits, loaded once for both test streams (the
    last config's are kept in memory)."""
    return _load_cached(
        tuple(
            (
                name,
                config[name] if default is None else config.get(name, default),
            )
            for name, default in _SPLIT_FIELDS.items()
        )
    )


def image_splits(
    config: ml_collections.ConfigDict, train_start: int = 0
) -> Splits:
    """The train, validation and test streams of an image config.

    Args:
        config: An image config.
        train_start: The index of the first training meta-batch.
    """
    classes = _load_classes(config)
    return Splits(
        train=_episode_stream(
            config,
            classes,
            "train",
            num_ways=train_num_ways(config),
            rotations=config.rotations,
            reflections=config.get("reflections", False),
            augment=_augmentation(config),
            start=train_start,
        ),
        validation=_episode_stream(
            config,
            classes,
            "validation",
            num_batches=config.validation_batches,
        ),
        test=_test_stream(config, classes),
    )


def labelled_training_batches(
    config: ml_collections.ConfigDict, members: int = 1
) -> tuple[list[tf.data.Dataset], int]:
    """The training classes as labelled batches for whole-class
    pretraining (`tfmaml.data.labelled_batches`: the config's rotations,
    reflections and augmentation, `config.pretrain_batch_size` images a
    batch, grouped by `config.pretrain_group_by` if set), one stream per
    member of an embedding ensemble, each with its own draws and
    distortions (member 0's are a single embedding's), and how many
    classes they label. The split is preprocessed once for all.
    With `config.pretrain_on_validation` the validation classes are
    training classes too (`data.join_classes`).

    Args:
        config: An image config.
        members: How many streams. Defaults to 1.
    """
    source = labelled_training_source(config)
    orientations = {
        "rotations": config.rotations,
        "reflections": config.get("reflections", False),
    }
    streams = [
        data.labelled_batches(
            source,
            config.pretrain_batch_size,
            seed=pretraining_seed(config, member),
            augment=_augmentation(config),
            group_by=config.get("pretrain_group_by") or None,
            group_fraction=config.get("pretrain_group_fraction", 1.0),
            **orientations,
        )
        for member in range(members)
    ]
    return streams, data.labelled_classes(source, **orientations)


def labelled_training_source(
    config: ml_collections.ConfigDict,
) -> data.ClassIndexedImages:
    """The classes whole-class pretraining labels, preprocessed: the
    training split's, then with `config.pretrain_on_validation` the
    validation split's (`data.join_classes`)."""
    classes = _load_classes(config)
    source = classes.train
    if config.get("pretrain_on_validation", False):
        source = data.join_classes(
            source, classes.validation, name=f"{source.name}+validation"
        )
    return data.prepare(source, preprocessing(config))


def pretraining_seed(config: ml_collections.ConfigDict, member: int = 0) -> int:
    """The seed of an ensemble member's pretraining (its batches' draws and
    distortions, and its classifier head's initial weights): apart from
    the training episodes' and from the other members' (and other seeds'),
    and the same whichever members trained before it, so a member
    pretrained again after a stop trains as it would have."""
    return (
        config.seed
        + SPLIT_SEED_OFFSETS["train"]
        + PRETRAINING_SEED
        + member * MEMBER_SEED_STRIDE
    )


PRETRAINING_SEED = 7_000_003
MEMBER_SEED_STRIDE = 1_000_033


def train_num_ways(config: ml_collections.ConfigDict) -> int:
    """The ways of an image config's training episodes
    (`config.train_num_ways`, 0 meaning `config.num_ways`).

    Raises:
        ValueError: If they differ from `num_ways` for an algorithm whose
            network ends in a head of `num_ways` classes.
    """
    ways = config.get("train_num_ways", 0) or config.num_ways
    if ways != config.num_ways and config.algorithm != "protonet":
        raise ValueError(
            f"train_num_ways={ways} differs from num_ways={config.num_ways}: "
            "only algorithm='protonet' trains on wider episodes than it is "
            f"tested on (algorithm={config.algorithm!r} has a head of "
            "num_ways classes)."
        )
    return ways


def _augmentation(config):
    if not config.get("augment", False):
        return None
    return data.AffineAugmentation(
        **{k: float(v) for k, v in config.augmentation.items()}
    )


def _test_stream(config, classes, group_by=None):
    eval_batch = min(config.meta_batch_size, config.eval_tasks)
    return _episode_stream(
        config,
        classes,
        "test",
        num_queries=config.eval_num_queries,
        meta_batch_size=eval_batch,
        num_batches=-(-config.eval_tasks // eval_batch),
        group_by=group_by,
    )


def _episode_stream(config, classes, split, **kwargs):
    return data.episodes(
        data.prepare(getattr(classes, split), preprocessing(config)),
        kwargs.pop("num_ways", config.num_ways),
        config.num_shots,
        kwargs.pop("num_queries", config.num_queries),
        kwargs.pop("meta_batch_size", config.meta_batch_size),
        seed=config.seed + SPLIT_SEED_OFFSETS[split],
        **kwargs,
    )
