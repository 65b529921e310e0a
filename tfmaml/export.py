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

Inputs take the base network's dtypes and shapes. A network with several
named inputs gets one signature argument per input: `support_x_<name>`,
`query_x_<name>` (and `<name>` for `serving_default`).
"""

import inspect
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
    served = _served_inputs(model.base_model, example_shape, dtype)
    kind = model.label_kind

    def prepare(x):
        return x if preprocessing is None else preprocessing(x)

    output_spec = model.base_model.compute_output_spec(prepare(served))
    output_shape = output_spec.shape[1:]
    label_shape = output_shape[:-1] if kind.sparse else output_shape
    # A ProtoNet's network is an embedding: any number of ways per request,
    # one class index per example, and `serving_default` gives embeddings.
    embeds = getattr(model, "serves_embeddings", False)
    if embeds:
        label_shape = ()
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

    # One signature argument per input tensor: `x`, `support_x`, `query_x`
    # for a network with one input; `ids`, `support_x_ids`, `query_x_ids`,
    # ... for named inputs (signatures take flat, named tensors).
    leaves = keras.tree.flatten(served)

    def specs(prefix):
        names = _leaf_names(served, prefix)
        return [
            tf.TensorSpec(leaf.shape, tf.as_dtype(leaf.dtype), name)
            for leaf, name in zip(leaves, names, strict=True)
        ]

    def nest(flat):
        return keras.tree.pack_sequence_as(served, list(flat))

    def serve(*x):
        served = model.base_model(prepare(nest(x)), training=False)
        return {"embeddings": served} if embeds else outputs(served)

    support_names = _leaf_names(served, "support_x")
    query_names = _leaf_names(served, "query_x")

    def adapt_and_predict(*args):
        support_x = args[: len(leaves)]
        support_y = args[len(leaves)]
        query_x = args[len(leaves) + 1 :]
        first = support_x[0]
        checks = [
            tf.debugging.assert_positive(
                tf.shape(first)[0],
                message=f"{support_names[0]} needs at least one example",
            ),
            tf.debugging.assert_equal(
                tf.shape(first)[0],
                tf.shape(support_y)[0],
                message=f"{support_names[0]} and support_y need the same "
                "number of examples (axis 0)",
            ),
        ]
        for tensors, names in (
            (support_x, support_names),
            (query_x, query_names),
        ):
            checks += [
                tf.debugging.assert_equal(
                    tf.shape(t)[0],
                    tf.shape(tensors[0])[0],
                    message=f"{name} and {names[0]} need the same number "
                    "of examples (axis 0)",
                )
                for t, name in zip(tensors[1:], names[1:], strict=True)
            ]
        if kind.sparse and not embeds:
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
            support_x = [
                check_finite_input(name, t)
                for name, t in zip(support_names, support_x, strict=True)
            ]
        support_y = check_finite_input("support_y", support_y)
        query_x = [
            check_finite_input(name, t)
            for name, t in zip(query_names, query_x, strict=True)
        ]
        fast = model.adapted_weights(prepare(nest(support_x)), support_y, steps)
        result = outputs(
            model.predict_with_weights(fast, prepare(nest(query_x)), steps)
        )
        result["inner_steps"] = tf.constant(steps, tf.int32)
        return result

    archive = keras.export.ExportArchive()
    archive.track(model)
    if preprocessing is not None:
        archive.track(preprocessing)
    serve_specs = specs("x")
    adapt_specs = [
        *specs("support_x"),
        tf.TensorSpec((None, *label_shape), label_dtype, "support_y"),
        *specs("query_x"),
    ]
    archive.add_endpoint(
        "serve", _named(serve, serve_specs), input_signature=serve_specs
    )
    archive.add_endpoint(
        "adapt_and_predict",
        _named(adapt_and_predict, adapt_specs),
        input_signature=adapt_specs,
    )
    archive.write_out(os.fspath(filepath), verbose=verbose)


def _named(function, specs):
    """`function(*tensors)`, callable with the specs' names as keywords
    too (`served.adapt_and_predict(support_x=..., ...)`), as the
    signatures are: `tf.function` binds arguments by this signature."""

    def named(*tensors):
        return function(*tensors)

    named.__signature__ = inspect.Signature(
        [
            inspect.Parameter(
                spec.name, inspect.Parameter.POSITIONAL_OR_KEYWORD
            )
            for spec in specs
        ]
    )
    return named


def _leaf_names(structure, prefix):
    """Signature names of `structure`'s tensors: `prefix` for one tensor,
    else `prefix_<input name>` (`x` alone is dropped: `ids`, not `x_ids`)."""
    if not keras.tree.is_nested(structure):
        return [prefix]
    names = []
    for path, _ in keras.tree.flatten_with_path(structure):
        name = "_".join(str(p) for p in path)
        names.append(name if prefix == "x" else f"{prefix}_{name}")
    return names


def _served_inputs(base_model, example_shape, dtype):
    """`keras.KerasTensor`s of a served batch (`[None, ...]`), nested as
    the base network's inputs: from `example_shape` and `dtype` if given,
    else the network's own inputs (with `dtype` overriding a single
    input's)."""
    if example_shape is not None:
        return keras.KerasTensor(
            (None, *example_shape), dtype=tf.as_dtype(dtype or "float32").name
        )
    try:
        structure = base_model.input  # Nested as the Functional's inputs.
    except (AttributeError, ValueError):
        inputs = getattr(base_model, "inputs", None)
        structure = inputs[0] if inputs and len(inputs) == 1 else None
    if structure is None:
        raise ValueError(
            f"The base network {base_model.name!r} does not record its "
            "inputs (a subclassed model?): pass `example_shape`, the shape "
            "of one input example (`input_signature` to `MAML.export`)."
        )
    if dtype is not None and not keras.tree.is_nested(structure):
        return keras.KerasTensor(structure.shape, dtype=tf.as_dtype(dtype).name)
    return keras.tree.map_structure(
        lambda t: keras.KerasTensor(t.shape, dtype=t.dtype), structure
    )
