"""Random affine distortions of episode images (Omniglot practice).

With five training alphabets, a network sees about a hundred characters;
the Omniglot literature (Lake et al. 2015's deep convnet, Koch et al.
2015's siamese nets) widens them with small random affine distortions of
every drawing: rotation, shear, scale and shift. Each image gets its own
draw; the class stays the same (unlike `episodes(rotations=True)`, whose
quarter turns make new classes).

The parameters are drawn statelessly from `(seed, batch index)`, as the
episodes are, so a resumed run sees exactly the images of an uninterrupted
one; Keras' `keras.ops.image.affine_transform` resamples the image.
"""

import math
from typing import NamedTuple

import keras
import tensorflow as tf

from tfmaml.batches import QUERY_X
from tfmaml.batches import SUPPORT_X


class AffineAugmentation(NamedTuple):
    """Ranges of the random affine distortion of every image: each
    parameter is uniform in `[-range, range]`, independently per image.

    Attributes:
        rotation: Degrees.
        shear: Shear factor (the tangent of the shear angle).
        scale: Relative change of size (0.1: 90% to 110%).
        shift: Fraction of the image's height and width.
    """

    rotation: float = 10.0
    shear: float = 0.2
    scale: float = 0.1
    shift: float = 0.1

    def check(self) -> None:
        """Raises `ValueError` naming a range that is negative, not finite
        or a rotation past 180 degrees."""
        for name, value in self._asdict().items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"AffineAugmentation.{name} must be a finite number >= 0; "
                    f"received {name}={value!r}."
                )
        if self.rotation > 180:
            raise ValueError(
                "AffineAugmentation.rotation is in degrees, at most 180; "
                f"received rotation={self.rotation!r}."
            )
        if self.scale >= 1:
            raise ValueError(
                "AffineAugmentation.scale must be below 1 (a size of "
                f"1 - scale must stay positive); received scale={self.scale!r}."
            )

    def transforms(self, count: tf.Tensor, size, seed: tf.Tensor) -> tf.Tensor:
        """`[count, 8]` projective transforms (Keras' convention: each maps
        an output pixel to the input point it samples) about the centre of
        images of `size` `(height, width)`."""
        uniform = tf.random.stateless_uniform(
            [count, 5], seed, minval=-1.0, maxval=1.0
        )
        angle = uniform[:, 0] * (self.rotation * math.pi / 180.0)
        shear = uniform[:, 1] * self.shear
        scale = 1.0 + uniform[:, 2] * self.scale
        height, width = float(size[0]), float(size[1])
        shift_y = uniform[:, 3] * self.shift * height
        shift_x = uniform[:, 4] * self.shift * width
        cos, sin = tf.cos(angle), tf.sin(angle)
        # The inverse map, sampled directly (the ranges are symmetric):
        # rotation x shear x scale about the centre, then a shift.
        a0, a1 = cos / scale, (cos * shear - sin) / scale
        b0, b1 = sin / scale, (sin * shear + cos) / scale
        cx, cy = (width - 1) / 2, (height - 1) / 2
        a2 = cx - a0 * cx - a1 * cy + shift_x
        b2 = cy - b0 * cx - b1 * cy + shift_y
        zeros = tf.zeros_like(a0)
        return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)

    def __call__(
        self, images: tf.Tensor, seed: tf.Tensor, *, one_draw: bool = False
    ) -> tf.Tensor:
        """Distorts `images [..., H, W, C]`, each its own draw (or, with
        `one_draw`, all by the same draw: what an image becomes then does
        not depend on its place in the batch); points from outside the
        image are 0 (the background of preprocessed Omniglot, whose ink
        is 1)."""
        shape = tf.shape(images)
        flat = tf.reshape(images, tf.concat([[-1], shape[-3:]], 0))
        size = images.shape[-3:-1]
        count = tf.shape(flat)[0]
        if one_draw:
            transforms = tf.tile(self.transforms(1, size, seed), [count, 1])
        else:
            transforms = self.transforms(count, size, seed)
        moved = keras.ops.image.affine_transform(
            flat,
            transforms,
            interpolation="bilinear",
            fill_mode="constant",
            fill_value=0,
        )
        return tf.reshape(tf.cast(moved, images.dtype), shape)

    def apply_to_episodes(self, x: dict, seed: tf.Tensor) -> dict:
        """Distorts the support and query images of a batch `x` in the
        `tfmaml.MAML` layout (two independent seeds from `seed`)."""
        seeds = tf.random.experimental.stateless_split(seed, num=2)
        x = dict(x)
        x[SUPPORT_X] = self(x[SUPPORT_X], seeds[0])
        x[QUERY_X] = self(x[QUERY_X], seeds[1])
        return x


def check_augment(augment, images: tf.Tensor, split_name: str) -> None:
    """Raises if `augment` is neither `None` nor a valid
    `AffineAugmentation` (`TypeError`, `ValueError` naming the range), or
    if it would distort `images` that are not (height, width, channels)
    images of split `split_name` (`ValueError` naming the shape)."""
    if augment is None:
        return
    if not isinstance(augment, AffineAugmentation):
        raise TypeError(
            "`augment` must be a tfmaml.data.AffineAugmentation or None; "
            f"received {type(augment).__name__}."
        )
    augment.check()
    if images.shape.rank != 4:
        raise ValueError(
            "`augment` distorts images of shape (height, width, "
            f"channels); split {split_name!r} has examples of "
            f"shape {tuple(images.shape[1:])}."
        )
