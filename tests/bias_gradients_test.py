"""`tfmaml.bias_gradients`: a float32 bias's gradient as a plain sum inside
the block (no `BiasAddGrad` for oneDNN to merge into the filter gradient),
the same values as TensorFlow's, and TensorFlow's gradient back outside."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import ops

from tfmaml import bias_gradients
from tfmaml.bias_gradients import summed_bias_gradients


def _conv_gradients(dtype, data_format="NHWC", summed=True):
    """The gradients of a conv + bias loss for fixed inputs, and the op
    types of the traced gradient graph."""
    rng = np.random.default_rng(0)
    shape = (2, 6, 6, 3) if data_format == "NHWC" else (2, 3, 6, 6)
    x = tf.constant(rng.normal(size=shape), dtype)
    kernel = tf.constant(rng.normal(size=(3, 3, 3, 4)), dtype)
    bias = tf.constant(rng.normal(size=(4,)), dtype)
    channels = 3 if data_format == "NHWC" else 1

    @tf.function
    def gradients(kernel, bias):
        with tf.GradientTape() as tape:
            tape.watch([kernel, bias])
            if data_format == "NHWC":
                y = tf.nn.conv2d(x, kernel, 1, "SAME")
            else:  # TensorFlow's CPU convolution is NHWC-only.
                y = tf.transpose(
                    tf.nn.conv2d(
                        tf.transpose(x, [0, 2, 3, 1]), kernel, 1, "SAME"
                    ),
                    [0, 3, 1, 2],
                )
            y = tf.nn.bias_add(y, bias, data_format=data_format)
            weights = tf.cast(tf.range(4) + 1, dtype)
            weights = tf.reshape(
                weights, [-1 if i == channels else 1 for i in (0, 1, 2, 3)]
            )
            loss = tf.reduce_sum(tf.sin(y) * weights)
        if summed:
            with summed_bias_gradients():
                return tape.gradient(loss, [kernel, bias])
        return tape.gradient(loss, [kernel, bias])

    graph = gradients.get_concrete_function(kernel, bias).graph
    kinds = {op.type for op in graph.get_operations()}
    return [g.numpy() for g in gradients(kernel, bias)], kinds


def test_float32_bias_gradient_is_a_sum_with_tensorflows_values():
    summed, kinds = _conv_gradients(tf.float32)
    assert "BiasAddGrad" not in kinds and "Sum" in kinds
    reference, reference_kinds = _conv_gradients(tf.float32, summed=False)
    assert "BiasAddGrad" in reference_kinds
    exact, _ = _conv_gradients(tf.float64, summed=False)
    for ours, theirs, truth in zip(summed, reference, exact, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours, truth, rtol=1e-4, atol=1e-4)


def test_channels_first_sums_over_every_axis_but_the_second():
    summed, kinds = _conv_gradients(tf.float32, data_format="NCHW")
    assert "BiasAddGrad" not in kinds
    exact, _ = _conv_gradients(tf.float64, data_format="NCHW", summed=False)
    for ours, truth in zip(summed, exact, strict=True):
        np.testing.assert_allclose(ours, truth, rtol=1e-4, atol=1e-4)


def test_other_dtypes_keep_tensorflows_gradient():
    _, kinds = _conv_gradients(tf.float64)
    assert "BiasAddGrad" in kinds


def test_second_derivative_through_the_summed_gradient():
    # d/dbias of |d loss / d x|^2, where the bias gradient's own gradient
    # is taken: against float64 without the swap.
    def hessian_term(dtype, summed):
        x = tf.constant(np.linspace(-1, 1, 24).reshape(2, 3, 4), dtype)
        bias = tf.constant([0.3, -0.2, 0.1, 0.5], dtype)
        with tf.GradientTape() as outer:
            outer.watch(bias)
            with tf.GradientTape() as inner:
                inner.watch([x, bias])
                loss = tf.reduce_sum(tf.tanh(tf.nn.bias_add(x, bias)) ** 3)
            if summed:
                with summed_bias_gradients():
                    grads = inner.gradient(loss, [x, bias])
            else:
                grads = inner.gradient(loss, [x, bias])
            penalty = tf.reduce_sum(grads[0] ** 2) + tf.reduce_sum(
                grads[1] ** 2
            )
        return outer.gradient(penalty, bias).numpy()

    np.testing.assert_allclose(
        hessian_term(tf.float32, True),
        hessian_term(tf.float64, False),
        rtol=1e-4,
        atol=1e-5,
    )


def _registered():
    return ops._gradient_registry.lookup("BiasAdd")


def test_tensorflows_gradient_is_back_after_the_block_even_on_error():
    original = _registered()
    with summed_bias_gradients():
        inside = _registered()
        with summed_bias_gradients():
            assert _registered() is inside
        assert _registered() is inside  # The outer block still holds.
    assert inside is not original
    assert _registered() is original
    with pytest.raises(RuntimeError, match="boom"):
        with summed_bias_gradients():
            raise RuntimeError("boom")
    assert _registered() is original


def test_the_environment_variable_turns_it_off_and_bad_values_are_named(
    monkeypatch,
):
    original = _registered()
    monkeypatch.setenv(bias_gradients.ENVIRONMENT_VARIABLE, "0")
    with summed_bias_gradients():
        assert _registered() is original
    monkeypatch.setenv(bias_gradients.ENVIRONMENT_VARIABLE, "yes")
    with pytest.raises(ValueError, match="TFMAML_SUMMED_BIAS_GRADIENTS"):
        with summed_bias_gradients():
            pass
    assert _registered() is original
