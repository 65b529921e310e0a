"""Exports a MAML model as a SavedModel that adapts itself when served.

The SavedModel holds only TensorFlow ops and the meta-learned variables, so
`tf.saved_model.load` reads it in a process without tfmaml (or Keras), and
`saved_model_cli` and TF Serving see its signatures:

- `serving_default` (also `serve`): `x [N, ...]` -> the unadapted network's
  `predictions` (plus `probabilities` for classification).
- `adapt_and_predict`: one task's `support_x [S, ...]`, `support_y [S, ...]`
  and `query_x [Q, ...]`, any S and Q -> `predictions` for the queries after
  the model's `eval_inner_steps` inner SGD steps on the support set, run
  inside the graph (plus `probabilities` for classification), and
  `inner_steps`, the number of steps taken.
"""

import os
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tfmaml.divergence import check_finite_input


def export_model(
    model: Any,
    filepath: str | os.PathLike,
    *,
    format: str = "tf_saved_model",
    verbose: bool | None = None,
    input_signature: tf.TensorSpec | None = None,
    preprocessing: keras.Model | None = None,
    **kwargs,
) -> None:
    """`export_saved_model` with the arguments of `keras.Model.export`
    (what `MAML.export` takes).

    Args:
        model: A compiled `tfmaml.MAML`.
        filepath: The SavedModel directory.
        format: Only `"tf_saved_model"`.
        verbose: Whether to print the signatures.
        input_signature: Optional `tf.TensorSpec` of a batch of served
            inputs.
        preprocessing: Optional Keras model applied to served inputs.
        **kwargs: Not supported; named in the error.

    Raises:
        ValueError: For another `format` or unknown arguments.
    """
    if format != "tf_saved_model" or kwargs:
        raise ValueError(
            "`MAML.export` writes TensorFlow SavedModels only and takes "
            f"no other arguments. Received: format={format!r}, "
            f"{sorted(kwargs)}"
        )
    spec = input_signature
    export_saved_model(
        model,
        filepath,
        example_shape=None if spec is None else tuple(spec.shape[1:]),
        dtype=None if spec is None else tf.as_dtype(spec.dtype).name,
        preprocessing=preprocessing,
        verbose=bool(verbose),
    )


def export_saved_model(
    model: Any,
    filepath: str | os.PathLike,
    *,
    example_shape: Sequence[int] | None = None,
    dtype: str | None = None,
    preprocessing: keras.Model | None = None,
    verbose: bool = False,
) -> None:
    """Writes `model` as a SavedModel with an in-graph inner loop.

    Args:
        model: A compiled `tfmaml.MAML` (its `label_kind`, read off the
            loss, says whether the labels are class indices, values or
            one-hot vectors; its `adapted_weights` and
            `predict_with_weights` run in the graph).
        filepath: The SavedModel directory to write.
        example_shape: The shape of one input example as served. Defaults
            to the base network's input shape, which Sequential and
            Functional networks know; needed for a subclassed network or
            with `preprocessing`.
        dtype: The inputs' dtype. Defaults to the base network's input
            dtype (int32 token ids for an `Embedding`, float32 for most),
            or float32 if it records none.
        preprocessing: A Keras model applied to served inputs (support and
            query) before the network, e.g. `tfmaml.data.preprocessing`:
            the export then takes data as the data set stores it.
            Defaults to none.
        verbose: Whether to print the signatures. Defaults to `False`.

    Raises:
        ValueError: If the model is not compiled, or the example shape is
            unknown.
    """
    if not model.compiled:
        raise ValueError(
            "Compile the MAML model before exporting it: its loss tells "
            "whether `support_y` holds class indices, values or one-hot "
            "vectors."
        )
    if preprocessing is not None and example_shape is None:
        raise ValueError(
            "With `preprocessing`, pass `example_shape`: the shape of one "
            "example before preprocessing."
        )
    example_shape, dtype = _example_spec(model.base_model, example_shape, dtype)
    kind = model.label_kind

    def prepare(x):
        return x if preprocessing is None else preprocessing(x)

    output_spec = model.base_model.compute_output_spec(
        prepare(keras.KerasTensor((None, *example_shape), dtype=dtype))
    )
    output_shape = output_spec.shape[1:]
    label_shape = output_shape[:-1] if kind.sparse else output_shape
    # Class indices are int32; values and one-hot vectors are compared
    # with the network's outputs (float32 unless float64; never the
    # inputs' dtype: token ids are int32).
    label_dtype = (
        tf.int32
        if kind.sparse
        else tf.float64
        if output_spec.dtype == "float64"
        else tf.float32
    )
    steps = model.eval_inner_steps

    def outputs(predictions):
        result = {"predictions": predictions}
        if kind.activation == "softmax":
            result["probabilities"] = tf.nn.softmax(predictions, axis=-1)
        elif kind.activation == "sigmoid":
            result["probabilities"] = tf.sigmoid(predictions)
        elif kind.activation == "identity":
            result["probabilities"] = tf.identity(predictions)
        return result

    def serve(x):
        return outputs(model.base_model(prepare(x), training=False))

    def adapt_and_predict(support_x, support_y, query_x):
        checks = [
            tf.debugging.assert_positive(
                tf.shape(support_x)[0],
                message="support_x needs at least one example",
            ),
            tf.debugging.assert_equal(
                tf.shape(support_x)[0],
                tf.shape(support_y)[0],
                message="support_x and support_y need the same number of "
                "examples (axis 0)",
            ),
        ]
        if kind.sparse:
            classes = output_shape[-1]
            checks += [
                tf.debugging.assert_non_negative(
                    support_y, message="support_y holds a negative class"
                ),
                tf.debugging.assert_less(
                    support_y,
                    tf.constant(classes, support_y.dtype),
                    message=f"support_y holds a class >= {classes}, the "
                    "number of outputs",
                ),
            ]
        with tf.control_dependencies(checks):
            support_x = check_finite_input("support_x", support_x)
        support_y = check_finite_input("support_y", support_y)
        query_x = check_finite_input("query_x", query_x)
        fast = model.adapted_weights(prepare(support_x), support_y, steps)
        result = outputs(
            model.predict_with_weights(fast, prepare(query_x), steps)
        )
        result["inner_steps"] = tf.constant(steps, tf.int32)
        return result

    x_spec = tf.TensorSpec((None, *example_shape), tf.as_dtype(dtype))
    archive = keras.export.ExportArchive()
    archive.track(model)
    if preprocessing is not None:
        archive.track(preprocessing)
    archive.add_endpoint("serve", serve, input_signature=[x_spec])
    archive.add_endpoint(
        "adapt_and_predict",
        adapt_and_predict,
        input_signature=[
            tf.TensorSpec((None, *example_shape), x_spec.dtype, "support_x"),
            tf.TensorSpec((None, *label_shape), label_dtype, "support_y"),
            tf.TensorSpec((None, *example_shape), x_spec.dtype, "query_x"),
        ],
    )
    archive.write_out(os.fspath(filepath), verbose=verbose)


def _example_spec(base_model, example_shape, dtype):
    """The shape of one served example and its dtype: those given, else
    the base network's own input's."""
    inputs = getattr(base_model, "inputs", None)
    recorded = inputs[0] if inputs and len(inputs) == 1 else None
    if example_shape is None:
        if recorded is None:
            raise ValueError(
                f"The base network {base_model.name!r} does not record one "
                "input shape (a subclassed model?): pass `example_shape`, the "
                "shape of one input example (`input_signature` to "
                "`MAML.export`)."
            )
        example_shape = recorded.shape[1:]
    if dtype is None:
        dtype = "float32" if recorded is None else recorded.dtype
    return tuple(example_shape), tf.as_dtype(dtype).name
