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
itself passes over those: meta-steps 1.09x-1.18x faster on W1-W3.

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
call does (`BatchNormalization.affine_from_statistics`). If a max-pooling
layer alone reads the batch norm's output, the folded offset is added
after it (`Fold`): the offset's gradient then sums a quarter of the
values. Other threads, and calls outside the block, run the layers as they
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
_MAX_POOLS = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
)
_FLOATS = ("float32", "float64")

_active = threading.local()  # `.plans`: this thread's open blocks.
_lock = threading.Lock()
_installed: dict[int, list] = {}  # id(layer) -> [layer, blocks using it]


class Fold(NamedTuple):
    """A convolution whose batch norm `folding` folds into it; with `pool`
    (the max-pooling layer that alone reads the batch norm's output), the
    folded offset is added after pooling, on a quarter of the values for
    2x2 pools: max-pooling commutes with adding a per-channel constant, to
    the last bit (rounding is monotone), and the offset's gradient then
    sums the pooled gradient instead of the full-size one."""

    convolution: keras.layers.Layer
    norm: BatchNormalization
    pool: keras.layers.Layer | None


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
    for layer, norm, _, reader in normalised_outputs(network, training):
        if not _foldable(layer, norm):
            continue
        if any(layer is fold.convolution for fold in folds):
            continue
        pool = reader if _pools_channels_last(reader) else None
        folds.append(Fold(layer, norm, pool))
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
    # What this block's layers do, by `id`: each convolution's fold, the
    # batch norms to pass through, each pool's fold, and the offsets a
    # convolution leaves for its pool to add.
    plan = {
        "training": training,
        "convolutions": {id(f.convolution): f for f in folds},
        "norms": {id(f.norm) for f in folds},
        "pools": {id(f.pool): f for f in folds if f.pool is not None},
        "offsets": {},
    }
    layers = [layer for fold in folds for layer in fold if layer is not None]
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
    outputs, offset = folded_parts(convolution, norm, inputs, training)
    return tf.nn.bias_add(outputs, offset)


def folded_parts(convolution, norm, inputs, training):
    """`(outputs, offset)`: `folded_call`'s result is `outputs + offset`
    (`offset` per channel)."""
    kernel = tf.convert_to_tensor(convolution.kernel)
    entries = math.prod(kernel.shape[:-1])
    # The convolution with an identity kernel lists each output position's
    # patch, in the order of the kernel's entries, whatever the strides,
    # padding and dilation.
    identity = tf.reshape(
        tf.eye(entries, dtype=kernel.dtype), [*kernel.shape[:-1], entries]
    )
    patches = tf.reshape(
        convolution.convolution_op(inputs, identity), [-1, entries]
    )
    count = tf.cast(tf.shape(patches)[0], patches.dtype)
    patch_mean = tf.reduce_mean(patches, axis=0)
    centred = patches - patch_mean
    covariance = tf.matmul(centred, centred, transpose_a=True) / count
    matrix = tf.reshape(kernel, [entries, -1])
    mean = tf.linalg.matvec(matrix, patch_mean, transpose_a=True)
    variance = tf.reduce_sum(tf.matmul(covariance, matrix) * matrix, axis=0)
    bias = None
    if convolution.bias is not None:
        bias = tf.convert_to_tensor(convolution.bias)
        mean = mean + bias
    multiplier, offset = norm.affine_from_statistics(mean, variance, training)
    if bias is not None:  # Cancelled by the mean: gradients of 0 exactly.
        offset = offset + bias * multiplier
    return convolution.convolution_op(inputs, kernel * multiplier), offset


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


def _pools_channels_last(layer) -> bool:
    return (
        type(layer) in _MAX_POOLS
        and layer.data_format == "channels_last"
        and len(layer._inbound_nodes) == 1
    )


def _plans() -> list:
    if not hasattr(_active, "plans"):
        _active.plans = []
    return _active.plans


def _current(key, layer):
    """This thread's innermost open block that folds `layer` (as a
    convolution, a batch norm or a pool, by `key`), or `None`."""
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

    elif type(layer) in _MAX_POOLS:

        def call(inputs):
            plan = _current("pools", layer)
            if plan is None:
                return original(inputs)
            norm = plan["pools"][id(layer)].norm
            offset = plan["offsets"].pop(id(norm))
            return tf.nn.bias_add(original(inputs), offset)

    else:

        def call(inputs):
            plan = _current("convolutions", layer)
            if plan is None:
                return original(inputs)
            fold = plan["convolutions"][id(layer)]
            if fold.pool is None:
                return folded_call(layer, fold.norm, inputs, plan["training"])
            outputs, offset = folded_parts(
                layer, fold.norm, inputs, plan["training"]
            )
            plan["offsets"][id(fold.norm)] = offset  # For the pool to add.
            return outputs

    # Past Keras' attribute tracking: a function is not state to track.
    object.__setattr__(layer, "call", call)
    _installed[id(layer)] = [layer, 1]


def _uninstall(layer) -> None:
    entry = _installed[id(layer)]
    entry[1] -= 1
    if entry[1] == 0:
        object.__delattr__(layer, "call")
        del _installed[id(layer)]
