"""The batch layout `tfmaml.MAML` trains on: its keys and its checks.

A batch is a meta-batch of tasks: `x = {"support_x": [B, S, ...],
"support_y": [B, S, ...], "query_x": [B, Q, ...]}`, `y = query_y [B, Q, ...]`
and an optional `sample_weight [B, Q]`. For a network with several inputs,
`support_x` and `query_x` are nested as its inputs are (a dict of named
inputs, each `[B, S, ...]`). Every module that builds or reads
such batches (the data pipelines, the model, the export) takes the keys from
here. The checks run on static shapes while the step is traced, so a bad
batch fails before any computation, with an error that names the key and
the shapes received.
"""

from collections.abc import Mapping
from typing import Any
from typing import NamedTuple

import keras
import tensorflow as tf

from tfmaml.labels import LabelKind

SUPPORT_X = "support_x"
SUPPORT_Y = "support_y"
QUERY_X = "query_x"
QUERY_Y = "query_y"
SAMPLE_WEIGHT = "sample_weight"
EPISODE_KEYS = (SUPPORT_X, SUPPORT_Y, QUERY_X)
# The keys of a batch of sampled indices (`tfmaml.data.DeviceEpisodes`),
# which the model turns into episodes on the device.
EPISODE_ROWS = "episode_rows"
EPISODE_TURNS = "episode_turns"


class Episode(NamedTuple):
    """A validated meta-batch: tensors with a leading task axis."""

    support_x: tf.Tensor
    support_y: tf.Tensor
    query_x: tf.Tensor
    query_y: tf.Tensor | None
    sample_weight: tf.Tensor | None


def check_episode(
    x: Mapping, y, sample_weight, *, require_labels: bool = True
) -> Episode:
    """Validates a meta-batch's structure and static shapes.

    Args:
        x: The dict of `EPISODE_KEYS`.
        y: The query labels `[tasks, queries, ...]`, or `None`.
        sample_weight: Optional `[tasks, queries]` weights.
        require_labels: Whether `y` must be given. Defaults to `True`.

    Returns:
        An `Episode` of tensors.

    Raises:
        ValueError: Naming the key whose structure or shape is wrong.
    """
    if not isinstance(x, Mapping):
        raise ValueError(
            f"A MAML batch `x` must be a dict with keys {list(EPISODE_KEYS)}"
            f". Received: x of type {type(x).__name__}"
        )
    missing = [k for k in EPISODE_KEYS if k not in x]
    unknown = sorted(set(x) - set(EPISODE_KEYS))
    if missing or unknown:
        raise ValueError(
            f"A MAML batch `x` must have exactly the keys "
            f"{list(EPISODE_KEYS)}; missing: {missing}, unknown: {unknown}. "
            f"Received keys: {sorted(x)}"
        )
    if y is None and require_labels:
        raise ValueError(
            "A MAML batch needs `y`, the query labels `[tasks, queries, ...]`"
            ". Received: y=None"
        )
    inputs = {
        k: keras.tree.map_structure(tf.convert_to_tensor, x[k])
        for k in (SUPPORT_X, QUERY_X)
    }
    try:
        keras.tree.assert_same_structure(inputs[SUPPORT_X], inputs[QUERY_X])
    except (TypeError, ValueError) as error:
        raise ValueError(
            "`support_x` and `query_x` must hold the same inputs (the base "
            "network's). Received: support_x="
            f"{keras.tree.map_structure(lambda t: t.shape, inputs[SUPPORT_X])}"
            ", query_x="
            f"{keras.tree.map_structure(lambda t: t.shape, inputs[QUERY_X])}"
        ) from error
    # One entry per tensor: `support_x['ids']` for a network's named input.
    tensors = {
        **input_leaves(SUPPORT_X, inputs[SUPPORT_X]),
        SUPPORT_Y: tf.convert_to_tensor(x[SUPPORT_Y]),
        **input_leaves(QUERY_X, inputs[QUERY_X]),
    }
    if y is not None:
        tensors[QUERY_Y] = tf.convert_to_tensor(y)
    if sample_weight is not None:
        tensors[SAMPLE_WEIGHT] = tf.convert_to_tensor(sample_weight)
    for key, tensor in tensors.items():
        if tensor.shape.rank is None or tensor.shape.rank < 2:
            raise ValueError(
                f"`{key}` must have a task and an example axis, "
                f"[tasks, examples, ...]. Received: {key}.shape={tensor.shape}"
            )
    supports = list(input_leaves(SUPPORT_X, inputs[SUPPORT_X]))
    queries = list(input_leaves(QUERY_X, inputs[QUERY_X]))
    _check_same_dim(tensors, list(tensors), axis=0, what="task count")
    _check_same_dim(
        tensors, [*supports, SUPPORT_Y], axis=1, what="support size"
    )
    query_keys = queries + [k for k in (QUERY_Y, SAMPLE_WEIGHT) if k in tensors]
    _check_same_dim(tensors, query_keys, axis=1, what="query size")
    for support, query in zip(supports, queries, strict=True):
        if tensors[support].shape[2:] != tensors[query].shape[2:]:
            raise ValueError(
                f"`{support}` and `{query}` must have the same example "
                f"shape. Received: {support}.shape={tensors[support].shape},"
                f" {query}.shape={tensors[query].shape}"
            )
    if QUERY_Y in tensors and (
        tensors[SUPPORT_Y].shape.rank != tensors[QUERY_Y].shape.rank
    ):
        raise ValueError(
            "`support_y` and the query labels `y` must have the same rank. "
            f"Received: support_y.shape={tensors[SUPPORT_Y].shape}, "
            f"y.shape={tensors[QUERY_Y].shape}"
        )
    if SAMPLE_WEIGHT in tensors and tensors[SAMPLE_WEIGHT].shape.rank != 2:
        raise ValueError(
            "`sample_weight` must weigh each query example: shape "
            "[tasks, queries]. Received: "
            f"sample_weight.shape={tensors[SAMPLE_WEIGHT].shape}"
        )
    return Episode(
        support_x=inputs[SUPPORT_X],
        support_y=tensors[SUPPORT_Y],
        query_x=inputs[QUERY_X],
        query_y=tensors.get(QUERY_Y),
        sample_weight=tensors.get(SAMPLE_WEIGHT),
    )


def input_leaves(key: str, inputs: Any) -> dict[str, tf.Tensor]:
    """The tensors of a network's (possibly nested) inputs by name:
    `{key: inputs}` for one tensor, `{"support_x['ids']": ...}` for a dict
    of named inputs, `{"support_x[0]": ...}` for a list.

    Args:
        key: The batch key (`"support_x"`).
        inputs: A tensor, or a dict / list / tuple of them.
    """
    if not keras.tree.is_nested(inputs):
        return {key: inputs}
    return {
        key + "".join(f"[{p!r}]" for p in path): tensor
        for path, tensor in keras.tree.flatten_with_path(inputs)
    }


def example_spec(inputs: Any, leading: int = 1) -> Any:
    """`keras.KerasTensor`s of `inputs` without its `leading` axes (one
    example's shape, nested as `inputs`), to trace a network with."""
    return keras.tree.map_structure(
        lambda t: keras.KerasTensor(
            t.shape[leading:], dtype=tf.as_dtype(t.dtype).name
        ),
        inputs,
    )


def _check_same_dim(tensors, keys, *, axis, what):
    sizes = {k: tensors[k].shape[axis] for k in keys}
    known = {s for s in sizes.values() if s is not None}
    if len(known) > 1:
        shapes = ", ".join(f"{k}.shape={tensors[k].shape}" for k in keys)
        raise ValueError(
            f"{', '.join(f'`{k}`' for k in keys)} must have the same {what} "
            f"(axis {axis}). Received: {shapes}"
        )


def check_label_rank(
    base_model: keras.layers.Layer, episode: Episode, kind: LabelKind
) -> None:
    """Labels have the rank `kind` asks for: the output's rank less one for
    class indices, else the output's rank (or one less when the output has
    one value per example, as Keras' losses align them).

    Args:
        base_model: The base network.
        episode: The validated meta-batch.
        kind: What the labels are (`tfmaml.labels.label_kind`).

    Raises:
        ValueError: Naming the labels, their shape and the rank needed.
    """
    spec = base_model.compute_output_spec(example_spec(episode.support_x))
    rank = len(spec.shape)
    allowed = {kind.label_rank(rank)}
    if not kind.sparse and spec.shape[-1] == 1:
        allowed.add(rank - 1)
    for key, labels in ((SUPPORT_Y, episode.support_y), ("y", episode.query_y)):
        if labels is None:
            continue
        label_rank = labels.shape.rank - 1  # Without the task axis.
        if label_rank not in allowed:
            what = "class indices" if kind.sparse else "values or one-hot"
            raise ValueError(
                f"`{key}` has the wrong rank for the base network's output "
                f"of shape {tuple(spec.shape)} per task: the loss takes "
                f"{what}, so a task's labels need rank "
                f"{' or '.join(map(str, sorted(allowed)))}. Received: "
                f"{key}.shape={labels.shape}"
            )


def merge_task_axis(tensor: tf.Tensor) -> tf.Tensor:
    """`[tasks, examples, ...]` -> `[tasks * examples, ...]`.

    Args:
        tensor: `[tasks, examples, ...]`.
    """
    return tf.reshape(tensor, tf.concat([[-1], tf.shape(tensor)[2:]], axis=0))
