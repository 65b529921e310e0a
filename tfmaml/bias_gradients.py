"""A bias's gradient as a plain sum while tfmaml differentiates a network.

Why. Keras adds a convolution's bias with `BiasAdd`, whose registered
gradient is `BiasAddGrad` of the upstream gradient. TensorFlow's oneDNN
graph pass then merges that `BiasAddGrad` with the `Conv2DBackpropFilter`
reading the same upstream gradient into one kernel
(`_MklNativeConv2DBackpropFilterWithBias`), and on MAML's shapes the merged
kernel is the slow one: for Conv4's first layer (75 query images, one input
channel) it took 13.2 ms at AVX-512 and 4.7 ms under an AVX2 cap, against
2.3 and 2.0 ms for the filter gradient and a separate sum; 2 ms more on the
second layer at AVX-512 (a 2-core Zen 5, one thread per op). With the sum,
`benchmarks/throughput.py`'s W1-W3 meta-steps ran 1.11x to 1.25x faster
at AVX-512 and 1.07x to 1.10x under an AVX2 cap (RESULTS.md). The sum is
the same number, rounded in another order.

How. TensorFlow looks gradients up by op type in a process-wide registry
and has no public way to replace a registered one (a second
`tf.RegisterGradient("BiasAdd")` raises), so `summed_bias_gradients()`
swaps the registry's entry for `BiasAdd` inside a `with` block and puts
TensorFlow's back on exit. Gradient functions run when a tape's
`gradient` is called, so the block goes around those calls (tfmaml's inner
steps and its per-task meta-gradients); a graph traced there keeps the sum.
Only float32 bias additions change, the dtype oneDNN's merge handles; any
other dtype gets TensorFlow's gradient. If TensorFlow's registry is not
shaped as expected, nothing is swapped. `TFMAML_SUMMED_BIAS_GRADIENTS=0` in
the environment keeps TensorFlow's gradient (read at each block).
"""

import contextlib
import threading
from collections.abc import Iterator

import tensorflow as tf

from tfmaml.checks import environment_switch

ENVIRONMENT_VARIABLE = "TFMAML_SUMMED_BIAS_GRADIENTS"
_lock = threading.Lock()
_depth = 0
_original = None


def _registry_entry() -> dict | None:
    """TensorFlow's registry entry for `BiasAdd` (a dict whose `"type"` is
    the gradient function), or `None` if the registry is not as expected."""
    from tensorflow.python.framework import ops

    registry = getattr(
        getattr(ops, "_gradient_registry", None), "_registry", None
    )
    entry = registry.get("BiasAdd") if isinstance(registry, dict) else None
    if isinstance(entry, dict) and callable(entry.get("type")):
        return entry
    return None


def _summed(original):
    """`BiasAdd`'s gradient with the bias's part as `tf.reduce_sum` over
    every axis but the channels', for float32; `original` otherwise."""

    def gradient(op, upstream):
        rank = upstream.shape.rank
        if upstream.dtype != tf.float32 or rank is None:
            return original(op, upstream)
        try:
            data_format = op.get_attr("data_format")
        except ValueError:
            data_format = b"NHWC"
        channels = 1 if data_format in (b"NCHW", "NCHW") else rank - 1
        axes = [axis for axis in range(rank) if axis != channels]
        return upstream, tf.reduce_sum(upstream, axes)

    return gradient


@contextlib.contextmanager
def summed_bias_gradients() -> Iterator[None]:
    """Within the block, tapes differentiate float32 `BiasAdd` with a
    summed bias gradient (see the module docstring). Nests; restores
    TensorFlow's gradient when the outermost block exits, also on error.

    Raises:
        ValueError: If `TFMAML_SUMMED_BIAS_GRADIENTS` is set to anything
            but `0` or `1`.
    """
    global _depth, _original
    summed = environment_switch(
        ENVIRONMENT_VARIABLE,
        off="TensorFlow's BiasAddGrad",
        on="a summed bias gradient",
    )
    entry = _registry_entry() if summed else None
    if entry is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _original = entry["type"]
            entry["type"] = _summed(_original)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                entry["type"] = _original
                _original = None
