"""Image preprocessing as Keras layers, and applying it once to a source.

Why a Keras model: the same layers run in the `tf.data` pipeline (once,
over a whole split, by `prepare`) and inside the exported SavedModel, so a
served raw image goes through exactly what training saw.
"""

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfmaml.data.ink_centring import InkCentring
from tfmaml.data.sources import ClassIndexedImages


def preprocessing(
    image_size: Sequence[int] | None = None,
    *,
    invert: bool = False,
    scale: float = 1.0 / 255.0,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    centre_ink: bool = False,
    ink_radius: float | None = None,
    deslant_ink: bool = False,
) -> keras.Sequential:
    """The image preprocessing of a few-shot pipeline, as Keras layers.

    Raw images (uint8 or float in [0, 255]) are resized, scaled to [0, 1]
    and, with `invert`, inverted (Omniglot: ink becomes 1 on a 0
    background). Being a Keras model, it can run inside an exported
    SavedModel so that served images need no preprocessing by the caller.

    Args:
        image_size: `(height, width)` to resize to, with area interpolation.
            Defaults to no resizing.
        invert: Whether to map `x` to `1 - x` after scaling.
            Defaults to `False`.
        scale: Multiplies raw values. Defaults to `1/255`.
        mean: Per-channel mean subtracted after scaling (and inversion),
            e.g. a data set's channel means. Defaults to none.
        std: Per-channel standard deviation divided by, with `mean`.
        centre_ink: Whether to move each image's centre of mass (of the
            scaled, inverted values: the ink) to the centre of the frame,
            at the raw size, before resizing (`InkCentring`). Defaults to
            `False`.
        ink_radius: With `centre_ink`, also scale each image so its ink's
            radius of gyration is this fraction of the side. Defaults to
            `None` (translation only).
        deslant_ink: With `centre_ink`, also shear each image's ink
            upright (`InkCentring(deslant=True)`). Defaults to `False`.

    Returns:
        A `keras.Sequential` (unbuilt; it builds on its first input).
    """
    if ink_radius is not None and not centre_ink:
        raise ValueError(
            "`ink_radius` scales the ink about its centre: it needs "
            f"`centre_ink=True`. Received: ink_radius={ink_radius}"
        )
    if deslant_ink and not centre_ink:
        raise ValueError(
            "`deslant_ink` shears the ink about its centre: it needs "
            f"`centre_ink=True`. Received: deslant_ink={deslant_ink}"
        )
    resizing = []
    if image_size is not None:
        height, width = image_size
        resizing.append(
            keras.layers.Resizing(height, width, interpolation="area")
        )
    if invert:
        rescaling = [keras.layers.Rescaling(-scale, offset=1.0)]
    else:
        rescaling = [keras.layers.Rescaling(scale)]
    if centre_ink:
        # Centred at the raw size, where the ink's moments are sharpest;
        # resizing and rescaling commute, so the order only matters here.
        layers = [
            *rescaling,
            InkCentring(ink_radius, deslant=deslant_ink),
            *resizing,
        ]
    else:
        layers = [*resizing, *rescaling]
    if (mean is None) != (std is None):
        raise ValueError(
            "Give both `mean` and `std` to normalise, or neither. "
            f"Received: mean={mean}, std={std}"
        )
    if mean is not None:
        layers.append(
            keras.layers.Normalization(
                mean=mean, variance=np.square(np.asarray(std, "float32"))
            )
        )
    return keras.Sequential(layers, name="preprocessing")


def prepare(
    source: ClassIndexedImages,
    preprocess: keras.Model | None = None,
    *,
    batch_size: int = 1024,
) -> ClassIndexedImages:
    """Applies `preprocess` once to every image of `source` (float32).

    Args:
        source: The split's raw images.
        preprocess: A Keras model applied to them; `None` returns `source`.
        batch_size: Images per call. Defaults to `1024`.
    """
    if preprocess is None:
        return source
    images = np.concatenate(
        [
            keras.ops.convert_to_numpy(
                preprocess(
                    tf.cast(source.images[i : i + batch_size], tf.float32)
                )
            )
            for i in range(0, len(source.images), batch_size)
        ]
    ).astype("float32")
    return source._replace(images=images)
