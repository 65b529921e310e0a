"""Drawings moved so that their ink's centre of mass is the image's centre.

Why: an Omniglot character's drawings sit anywhere near the middle of the
105x105 frame; within one character the ink's centre of mass wanders by
5.6 pixels (standard deviation, the subsets' 4840 drawings), 1.5 pixels
of a 28x28 input. A Conv4's embedding is not invariant to that, and in
one-shot matching the one support drawing is all there is to compare
with. Centring every drawing (in the pipeline and in the exported model,
as part of `tfmaml.data.preprocessing`) takes that nuisance out before
the network sees it; it is the first step of moment normalisation in
handwriting recognition. Optionally the ink's spread (its radius of
gyration) is scaled to a fixed fraction of the side too, and the ink's
slant (the regression of its column on its row) is sheared away: the
deskewing of moment normalisation, since drawers of one character lean
their strokes differently.

A Keras layer, so it is serialised with the model and runs in the
SavedModel. It resamples with `keras.ops.image.affine_transform`
(bilinear, zero outside): the foreground must be the bright part, so it
comes after `invert` for Omniglot's dark ink.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfmaml")
class InkCentring(keras.layers.Layer):
    """Translates each image so the centre of mass of its intensity is the
    centre of the frame, and with `radius` scales it about that point so
    the intensity's radius of gyration is `radius` times the side; with
    `deslant`, shears rows sideways so the intensity's column no longer
    depends linearly on its row (the slant is the covariance of column and
    row over the variance of row, clipped to [-1, 1]).

    Images with no intensity at all are left as they are.

    Args:
        radius: The radius of gyration, as a fraction of the image's
            (smaller) side, to scale each image to; `None` (default) only
            translates. Omniglot's drawings have a median of 0.23.
        deslant: Whether to shear the slant away too (about the centre of
            mass, before scaling; the radius is then the sheared ink's).
            Defaults to `False`.
    """

    def __init__(
        self, radius: float | None = None, deslant: bool = False, **kwargs
    ):
        super().__init__(**kwargs)
        if not isinstance(deslant, bool):
            raise TypeError(
                "InkCentring's `deslant` must be a bool. "
                f"Received: deslant={deslant!r}"
            )
        if radius is not None and not 0.0 < radius < 1.0:
            raise ValueError(
                "InkCentring's `radius` is a fraction of the image's side, "
                f"in (0, 1), or None. Received: radius={radius}"
            )
        self.radius = radius
        self.deslant = deslant

    def build(self, input_shape):
        if len(input_shape) != 4 or None in input_shape[1:3]:
            raise ValueError(
                "InkCentring expects images [batch, height, width, channels] "
                f"of a known size. Received: shape={input_shape}"
            )

    def call(self, images):
        images = ops.convert_to_tensor(images)
        height, width = images.shape[1], images.shape[2]
        dtype = images.dtype
        mass = ops.sum(images, axis=-1)  # [batch, height, width]
        total = ops.sum(mass, axis=(1, 2))
        present = total > 0
        safe_total = ops.where(present, total, ops.ones_like(total))
        rows = ops.cast(ops.arange(height), dtype)[None, :, None]
        columns = ops.cast(ops.arange(width), dtype)[None, None, :]
        centre_row = (height - 1) / 2.0
        centre_column = (width - 1) / 2.0
        # A blank image's "mean" is the centre and its spread 0 (a step of
        # 1): its transform is the identity.
        row_mean = ops.where(
            present,
            ops.sum(mass * rows, axis=(1, 2)) / safe_total,
            centre_row,
        )
        column_mean = ops.where(
            present,
            ops.sum(mass * columns, axis=(1, 2)) / safe_total,
            centre_column,
        )
        if self.radius is None and not self.deslant:
            # Centring alone (and every served call of its export) needs no
            # second moments.
            slant, step = ops.zeros_like(total), ops.ones_like(total)
        else:
            slant, step = self._slant_and_step(
                mass,
                rows - row_mean[:, None, None],
                columns - column_mean[:, None, None],
                safe_total,
                min(height, width),
            )
        # With the shear, output (r, c) samples the input's column at
        # column_mean + step * ((c - centre) + slant * (r - centre)).
        shear = step * slant
        row_offset = row_mean - step * centre_row
        column_offset = column_mean - step * centre_column - shear * centre_row
        zeros = ops.zeros_like(step)
        # keras' projective transform: input (x, y) = (a0 x + a1 y + a2,
        # b0 x + b1 y + b2) for output column x and row y.
        transform = ops.stack(
            [step, shear, column_offset, zeros, step, row_offset, zeros, zeros],
            axis=1,
        )
        return ops.image.affine_transform(
            images,
            transform,
            interpolation="bilinear",
            fill_mode="constant",
            fill_value=0,
        )

    def _slant_and_step(
        self, mass, row_deviation, column_deviation, safe_total, side
    ):
        """The shear that stands the ink upright (0 without `deslant`) and
        the input pixels per output pixel that give it the radius (1
        without one), from the ink's second moments about its centre."""
        # Second moments, summed (divided by the mass only at the end, in
        # the order that the shipped export was trained with).
        row_moment = ops.sum(mass * row_deviation**2, (1, 2))
        column_moment = ops.sum(mass * column_deviation**2, (1, 2))
        slant = ops.zeros_like(safe_total)
        if self.deslant:
            cross_moment = ops.sum(
                mass * row_deviation * column_deviation, (1, 2)
            )
            upright = row_moment > 0
            slant = ops.clip(
                ops.where(
                    upright,
                    cross_moment
                    / ops.where(upright, row_moment, ops.ones_like(slant)),
                    ops.zeros_like(slant),
                ),
                -1.0,
                1.0,
            )
            # The sheared ink's column moment: the part of the column that
            # the row does not explain (more, for a clipped slant).
            column_moment = (
                column_moment
                - 2.0 * slant * cross_moment
                + slant**2 * row_moment
            )
        step = ops.ones_like(safe_total)
        if self.radius is not None:
            gyration = ops.sqrt(
                ops.maximum((row_moment + column_moment) / safe_total, 0.0)
            )
            # Output pixel (r, c) samples the input at
            # mean + step * ((r, c) - centre): a step of gyration / target
            # input pixels per output pixel.
            step = ops.where(
                gyration > 0,
                gyration / (self.radius * side),
                ops.ones_like(gyration),
            )
        return slant, step

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "radius": self.radius,
            "deslant": self.deslant,
        }
