"""Biases that batch norm cancels: constants to tfmaml's gradients.

Why. Keras' `Conv2D` and `Dense` add a bias by default, and a network
often feeds such a layer straight into batch norm (Conv4 does, four
times). `tfmaml.BatchNormalization` normalises with the statistics of the
batch at hand, so it subtracts each channel's mean, bias included: the
network's outputs do not depend on that bias at all, and its gradient is
zero. Differentiated anyway, it costs a per-channel sum over the
activations in every backward pass, and more terms in second-order MAML's
backward pass through the inner steps, only to return rounding noise
(about 5% of W3's op time: `benchmarks/RESULTS.md`).

How. `cancelled_indices` reads the network's Keras graph: a bias of a
`Dense` or convolution layer of Keras' own (no activation, no bias or
activity regulariser, called once) whose output goes only to a
`tfmaml.BatchNormalization` that normalises it over the bias's channel
axis with batch statistics. `tasks.run_network` passes those weights
through an identity whose gradient is zeros: every value is unchanged
(predictions, adaptation, `.keras`, export), the inner steps leave the bias
where it is (its gradient is exactly zero instead of rounding noise), and
its meta-gradient is zero. Anything the graph does not show for certain (a
subclassed model's `call`, a subclass of a Keras layer, a tensor used
twice or returned, batch norm on moving statistics at inference) is left
differentiated. `TFMAML_CANCELLED_BIASES=0` in the environment
differentiates every bias (read at each trace).
"""

from collections.abc import Sequence

import keras
import tensorflow as tf

from tfmaml.checks import environment_switch
from tfmaml.keras_graph import normalised_outputs

ENVIRONMENT_VARIABLE = "TFMAML_CANCELLED_BIASES"

# Keras' layers that add one bias per output channel after a linear map.
_CONVOLUTIONS = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
)
_BIASED_LAYERS = (keras.layers.Dense, *_CONVOLUTIONS)


def cancelled_biases(
    network: keras.layers.Layer, training: bool
) -> list[keras.Variable]:
    """The bias variables in `network` that batch norm cancels when it runs
    with `training` (see the module docstring).

    Args:
        network: A built Keras network (or a part of one sharing its
            layers).
        training: The `training` flag it runs with: batch norm layers with
            `use_moving_statistics` use batch statistics only in training.
    """
    found = []
    for normalised in normalised_outputs(network, training):
        bias = _cancelled_bias(normalised)
        if bias is not None and all(bias is not b for b in found):
            found.append(bias)
    return found


def cancelled_indices(
    network: keras.layers.Layer,
    training: bool,
    part: keras.layers.Layer | None = None,
) -> list[int]:
    """Indices into `network.trainable_variables` of the biases batch norm
    cancels when `part` (a part of `network` sharing its layers; `network`
    itself by default) runs; none if `TFMAML_CANCELLED_BIASES=0`.

    Raises:
        ValueError: If that variable is set to anything but `0` or `1`.
    """
    if not environment_switch(
        ENVIRONMENT_VARIABLE,
        off="differentiate every bias",
        on="biases batch norm cancels are constants",
    ):
        return []
    biases = cancelled_biases(network if part is None else part, training)
    return [
        index
        for index, variable in enumerate(network.trainable_variables)
        if any(variable is bias for bias in biases)
    ]


def as_constants(
    network: keras.layers.Layer,
    weights: Sequence[tf.Tensor],
    training: bool,
    part: keras.layers.Layer | None = None,
) -> list[tf.Tensor]:
    """`weights` (one per trainable variable of `network`) with the biases
    batch norm cancels given a zero gradient (`_zero_gradient`)."""
    weights = list(weights)
    for index in cancelled_indices(network, training, part):
        weights[index] = _zero_gradient(weights[index])
    return weights


@tf.custom_gradient
def _zero_gradient(weight: tf.Tensor):
    """`weight`, whose gradient is zeros whatever flows back. Zeros rather
    than `tf.stop_gradient`'s `None`: a tape around tfmaml's passes gets a
    tensor for every variable, as before. In a `tf.function` nothing reads
    the upstream gradient, so TensorFlow prunes the ops that computed it."""
    return tf.identity(weight), lambda upstream: tf.zeros_like(weight)


def _cancelled_bias(normalised) -> keras.Variable | None:
    """The bias of `normalised.layer` that its batch norm cancels, if it is
    one this module handles (the norm's axis is the layer's channels:
    `keras_graph` checked)."""
    layer, norm, tensor = normalised.layer, normalised.norm, normalised.tensor
    if type(layer) not in _BIASED_LAYERS:
        return None
    bias = layer.bias  # `None` without one (`use_bias=False`).
    if (
        bias is None
        or not bias.trainable
        or len(bias.shape) != 1
        or layer.activation is not keras.activations.linear
        or layer.bias_regularizer is not None
        or layer.activity_regularizer is not None
    ):
        return None
    if tensor.shape[norm.axis] != bias.shape[0]:
        return None
    return bias
