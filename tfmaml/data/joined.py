"""One split made of two: the classes of both, for a final training run.

Why: once a recipe's choices are made on the validation classes, its final
training can use them too (config field `pretrain_on_validation`).
"""

import numpy as np

from tfmaml.data.sources import ClassIndexedImages


def join_classes(
    first: ClassIndexedImages, second: ClassIndexedImages, *, name: str
) -> ClassIndexedImages:
    """The classes of `first` followed by those of `second`, as one split.

    Omniglot's subsets split: 109 training and 27 validation characters
    make 136.

    Args:
        first: The images of some classes.
        second: The images of other classes, of the same image shape and
            metadata fields.
        name: The joined split's name.

    Raises:
        ValueError: Naming the classes both hold, or the image shapes or
            metadata fields that differ.
    """
    shared = sorted(set(first.class_names) & set(second.class_names))
    if shared:
        raise ValueError(
            f"Split {name!r}: {first.name!r} and {second.name!r} share "
            f"{len(shared)} classes: {shared[:10]}"
        )
    if first.images.shape[1:] != second.images.shape[1:]:
        raise ValueError(
            f"Split {name!r}: {first.name!r} has images of shape "
            f"{first.images.shape[1:]}, {second.name!r} of shape "
            f"{second.images.shape[1:]}."
        )
    if set(first.metadata) != set(second.metadata):
        raise ValueError(
            f"Split {name!r}: {first.name!r} has metadata fields "
            f"{sorted(first.metadata)}, {second.name!r} has "
            f"{sorted(second.metadata)}."
        )
    return ClassIndexedImages(
        name=name,
        images=np.concatenate([first.images, second.images]),
        class_starts=np.concatenate(
            [first.class_starts, second.class_starts + len(first.images)]
        ),
        class_sizes=np.concatenate([first.class_sizes, second.class_sizes]),
        class_names=first.class_names + second.class_names,
        metadata={
            k: np.concatenate([v, second.metadata[k]])
            for k, v in first.metadata.items()
        },
    )
