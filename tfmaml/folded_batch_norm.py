"""Batch norm folded into the convolution before it, statistics from patches.

Why. Conv4's first layer turns each image into 64 channels from one: its
batch norm then reads and writes the largest activations of the network
(75 query images x 28 x 28 x 64 in the speed issue's W1), forward, backward
and, in second-order MAML, backward again, for 3% of the FLOPs and 9% of
W3's op time (`benchmarks/RESULTS.md`). Yet a convolution is a linear
map of its input patches, `z = P w + b`, so the batch statistics batch norm
needs follow from the patches' own mean `m` and covariance `C` (over
batch and positions): `mean(z) = m w + b`, `var(z) = w^T C w`, and
normalising is an affine map per channel that folds into the convolution:
`conv(x, w * a) + offset`. With `kh * kw * in_channels` patch entries no
more than the filters (9 against 64 on Conv4's first layer), the
patches are smaller than the activations, and nothing but the convolution
itself passes over those: meta-steps 1.13x-1.19x faster on W1-W3.

How. `folded_convolutions` reads the network's Keras graph
(`tfmaml.keras_graph`) for a first layer that qualifies: a Keras
`Conv1D`/`Conv2D`/`Conv3D` of exact type that reads an input of its graph,
is called once, has channels last, `"valid"` or `"same"` padding, no
groups, activation, activity regulariser or quantisation, runs in float32
or float64, has no more patch entries than filters, and whose output goes
only to a `tfmaml.BatchNormalization` (called once) that normalises it
with the batch's statistics. Inside `folding(...)` (`tasks.run_network`
opens it around every pass of tfmaml's inner loop, its query passes,
predictions and the export) the convolution's call computes the folded
convolution and the batch norm's passes it through: the same function,
rounded in another order, with gradients of any order by autodiff; the
batch norm's parameter rows and moving statistics are updated as its own
call does (`BatchNormalization.affine_from_statistics`). The patches are
listed once, by the convolution with an identity kernel, with a column of
ones beside them and each input channel's mean taken off (a bias, which
oneDNN fuses into that convolution): one product of the patches with
themselves then gives their mean and covariance, with little cancellation,
and the folded convolution is the product of the patches with the scaled
filters and, against the ones, the offset. oneDNN's filter gradient of a
convolution with so few input channels runs far below the FLOP peak; the
product's gradient is one more product, and the offset's gradient comes
with it. Other threads, and calls outside the block, run the layers as they
are. `TFMAML_FOLDED_BATCH_NORM=0` in the environment runs every batch norm
on its own (read at each block).
"""

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import NamedTuple

import keras
import tensorflow as tf

from tfmaml.batch_norm import BatchNormalization
from tfmaml.checks import environment_switch
from tfmaml.keras_graph import normalised_outputs

ENVIRONMENT_VARIABLE = "TFMAML_FOLDED_BATCH_NORM"
_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_FLOATS = ("float32", "float64")

_active = threading.local()  # `.plans`: this thread's open blocks.
_lock = threading.Lock()
_installed: dict[int, list] = {}  # id(layer) -> [layer, blocks using it]


class Fold(NamedTuple):
    """A convolution whose batch norm `folding` folds into it."""

    convolution: keras.layers.Layer
    norm: BatchNormalization


def folded_convolutions(
    network: keras.layers.Layer, training: bool
) -> list[Fold]:
    """The convolutions of `network` whose batch norms `folding` folds
    into them when it runs with `training` (see the module docstring).

    Args:
        network: A built Keras network (or a part of one sharing its
            layers).
        training: The `training` flag it runs with: batch norm layers with
            `use_moving_statistics` use batch statistics only in training.
    """
    folds = []
    for layer, norm, _ in normalised_outputs(network, training):
        if not _foldable(layer, norm):
            continue
        if any(layer is fold.convolution for fold in folds):
            continue
        folds.append(Fold(layer, norm))
    return folds


@contextlib.contextmanager
def folding(
    network: keras.layers.Layer,
    training: bool,
    part: keras.layers.Layer | None = None,
) -> Iterator[None]:
    """A block in which calls of `network` (or of `part`, a part of it
    sharing its layers) in this thread fold its foldable batch norms
    (`folded_convolutions`) into their convolutions; nothing is folded if
    `TFMAML_FOLDED_BATCH_NORM=0`.

    Args:
        network: The network.
        training: The `training` flag it is called with in the block.
        part: What is called instead of `network`. Defaults to `network`.

    Raises:
        ValueError: If `TFMAML_FOLDED_BATCH_NORM` is set to anything but
            `0` or `1`.
    """
    folds = (
        folded_convolutions(network if part is None else part, training)
        if environment_switch(
            ENVIRONMENT_VARIABLE,
            off="run every batch norm on its own",
            on="fold batch norm into a first convolution",
        )
        else []
    )
    if not folds:
        yield
        return
    # What this block's layers do, by `id`: each convolution's fold, and
    # the batch norms to pass through.
    plan = {
        "training": training,
        "convolutions": {id(f.convolution): f for f in folds},
        "norms": {id(f.norm) for f in folds},
    }
    layers = [layer for fold in folds for layer in fold]
    plans = _plans()
    with _lock:
        for layer in layers:
            _install(layer)
    plans.append(plan)
    try:
        yield
    finally:
        plans.remove(plan)
        with _lock:
            for layer in layers:
                _uninstall(layer)


def folded_call(convolution, norm, inputs, training):
    """`norm(convolution(inputs), training=training)` with the batch
    statistics of the convolution's outputs read from its input patches
    and the normalisation folded into the convolution (see the module
    docstring)."""
    kernel = tf.convert_to_tensor(convolution.kernel)
    entries = math.prod(kernel.shape[:-1])
    # Each input channel's mean, for each patch entry (the kernel's entries
    # run over input channels last). Patches shifted by a constant have the
    # same covariance, and the shift is added back through the offset, so
    # its derivative is 0 exactly.
    shift = tf.stop_gradient(
        tf.reduce_mean(inputs, axis=list(range(len(inputs.shape) - 1)))
    )
    shift = tf.tile(shift, [entries // shift.shape[0]])
    # The convolution with an identity kernel lists each output position's
    # patch, in the order of the kernel's entries, whatever the strides,
    # padding and dilation; the bias takes the shift off and adds a column
    # of ones.
    identity = tf.reshape(
        tf.eye(entries, entries + 1, dtype=kernel.dtype),
        [*kernel.shape[:-1], entries + 1],
    )
    listed = tf.nn.bias_add(
        convolution.convolution_op(inputs, identity),
        tf.concat([-shift, tf.ones([1], kernel.dtype)], 0),
    )
    patches = tf.reshape(listed, [-1, entries + 1])
    count = tf.cast(tf.shape(patches)[0], patches.dtype)
    moments = tf.matmul(patches, patches, transpose_a=True) / count
    shifted_mean = moments[-1, :-1]
    covariance = moments[:-1, :-1] - (
        shifted_mean[:, None] * shifted_mean[None, :]
    )
    matrix = tf.reshape(kernel, [entries, -1])
    mean = tf.linalg.matvec(matrix, shifted_mean + shift, transpose_a=True)
    variance = tf.reduce_sum(tf.matmul(covariance, matrix) * matrix, axis=0)
    bias = None
    if convolution.bias is not None:
        bias = tf.convert_to_tensor(convolution.bias)
        mean = mean + bias
    multiplier, offset = norm.affine_from_statistics(mean, variance, training)
    if bias is not None:  # Cancelled by the mean: gradients of 0 exactly.
        offset = offset + bias * multiplier
    scaled = matrix * multiplier
    offset = offset + tf.linalg.matvec(scaled, shift, transpose_a=True)
    outputs = tf.matmul(patches, tf.concat([scaled, offset[None]], 0))
    shape = tf.concat([tf.shape(listed)[:-1], tf.shape(outputs)[-1:]], 0)
    outputs = tf.reshape(outputs, shape)
    outputs.set_shape(listed.shape[:-1].concatenate(kernel.shape[-1:]))
    return outputs


def _foldable(layer, norm) -> bool:
    if type(layer) not in _CONVOLUTIONS or len(norm._inbound_nodes) != 1:
        return False
    if not _reads_an_input(layer):
        return False
    kernel = getattr(layer, "kernel", None)
    return (
        layer.data_format == "channels_last"
        and layer.padding in ("valid", "same")  # Not "causal".
        and getattr(layer, "groups", 1) == 1
        and layer.activation is keras.activations.linear
        and layer.activity_regularizer is None
        and getattr(layer, "quantization_mode", None) is None
        and layer.compute_dtype in _FLOATS
        and layer.variable_dtype == layer.compute_dtype
        and norm.compute_dtype == layer.compute_dtype
        and kernel is not None
        and math.prod(kernel.shape[:-1]) <= layer.filters
    )


def _reads_an_input(layer) -> bool:
    """Whether `layer` (called once) reads an input of its graph: the
    patches are then data, and no gradient passes back through them (the
    case measured; a deeper layer would fold too, but pay a pass over its
    patches for its input's gradient)."""
    tensors = layer._inbound_nodes[0].arguments.keras_tensors
    history = getattr(tensors[0], "_keras_history", None) if tensors else None
    return len(tensors) == 1 and isinstance(
        getattr(history, "operation", None), keras.layers.InputLayer
    )


def _plans() -> list:
    if not hasattr(_active, "plans"):
        _active.plans = []
    return _active.plans


def _current(key, layer):
    """This thread's innermost open block that folds `layer` (as a
    convolution or a batch norm, by `key`), or `None`."""
    for plan in reversed(_plans()):
        if id(layer) in plan[key]:
            return plan
    return None


def _install(layer) -> None:
    """Gives `layer` a `call` that folds inside a block of this thread and
    is the layer's own everywhere else (called with `_lock` held)."""
    entry = _installed.get(id(layer))
    if entry is not None:
        entry[1] += 1
        return
    original = layer.call
    if isinstance(layer, BatchNormalization):

        def call(inputs, training=None, mask=None):
            # Its only input is the folded convolution's output.
            if _current("norms", layer) is not None:
                return inputs
            return original(inputs, training=training, mask=mask)

    else:

        def call(inputs):
            plan = _current("convolutions", layer)
            if plan is None:
                return original(inputs)
            norm = plan["convolutions"][id(layer)].norm
            return folded_call(layer, norm, inputs, plan["training"])

    # Past Keras' attribute tracking: a function is not state to track.
    object.__setattr__(layer, "call", call)
    _installed[id(layer)] = [layer, 1]


def _uninstall(layer) -> None:
    entry = _installed[id(layer)]
    entry[1] -= 1
    if entry[1] == 0:
        object.__delattr__(layer, "call")
        del _installed[id(layer)]
