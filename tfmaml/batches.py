"""The batch layout `tfmaml.MAML` trains on, and its checks.

A batch is a meta-batch of tasks: `x = {"support_x": [B, S, ...],
"support_y": [B, S, ...], "query_x": [B, Q, ...]}`, `y = query_y [B, Q, ...]`
and an optional `sample_weight [B, Q]`. The checks run on static shapes while
the step is traced, so a bad batch fails before any computation, with an
error that names the key and the shapes received.
"""

from collections.abc import Mapping
from typing import NamedTuple

import keras
import tensorflow as tf

SUPPORT_X = "support_x"
SUPPORT_Y = "support_y"
QUERY_X = "query_x"
EPISODE_KEYS = (SUPPORT_X, SUPPORT_Y, QUERY_X)


class Episode(NamedTuple):
    """A validated meta-batch: tensors with a leading task axis."""

    support_x: tf.Tensor
    support_y: tf.Tensor
    query_x: tf.Tensor
    query_y: tf.Tensor | None
    sample_weight: tf.Tensor | None


def check_episode(x, y, sample_weight, *, require_labels=True) -> Episode:
    """Validates a meta-batch's structure and static shapes."""
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
    tensors = {k: tf.convert_to_tensor(x[k]) for k in EPISODE_KEYS}
    if y is not None:
        tensors["query_y"] = tf.convert_to_tensor(y)
    if sample_weight is not None:
        tensors["sample_weight"] = tf.convert_to_tensor(sample_weight)
    for key, tensor in tensors.items():
        if tensor.shape.rank is None or tensor.shape.rank < 2:
            raise ValueError(
                f"`{key}` must have a task and an example axis, "
                f"[tasks, examples, ...]. Received: {key}.shape={tensor.shape}"
            )
    _check_same_dim(tensors, list(tensors), axis=0, what="task count")
    _check_same_dim(
        tensors, [SUPPORT_X, SUPPORT_Y], axis=1, what="support size"
    )
    query_keys = [
        k for k in ("query_x", "query_y", "sample_weight") if k in tensors
    ]
    _check_same_dim(tensors, query_keys, axis=1, what="query size")
    if tensors[SUPPORT_X].shape[2:] != tensors[QUERY_X].shape[2:]:
        raise ValueError(
            "`support_x` and `query_x` must have the same example shape. "
            f"Received: support_x.shape={tensors[SUPPORT_X].shape}, "
            f"query_x.shape={tensors[QUERY_X].shape}"
        )
    if "query_y" in tensors and (
        tensors[SUPPORT_Y].shape.rank != tensors["query_y"].shape.rank
    ):
        raise ValueError(
            "`support_y` and the query labels `y` must have the same rank. "
            f"Received: support_y.shape={tensors[SUPPORT_Y].shape}, "
            f"y.shape={tensors['query_y'].shape}"
        )
    if "sample_weight" in tensors and tensors["sample_weight"].shape.rank != 2:
        raise ValueError(
            "`sample_weight` must weigh each query example: shape "
            "[tasks, queries]. Received: "
            f"sample_weight.shape={tensors['sample_weight'].shape}"
        )
    return Episode(
        support_x=tensors[SUPPORT_X],
        support_y=tensors[SUPPORT_Y],
        query_x=tensors[QUERY_X],
        query_y=tensors.get("query_y"),
        sample_weight=tensors.get("sample_weight"),
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


def check_label_rank(base_model, episode):
    """Labels have the prediction's rank, or one less (class indices)."""
    spec = base_model.compute_output_spec(
        keras.KerasTensor(
            episode.support_x.shape[1:], dtype=episode.support_x.dtype.name
        )
    )
    rank = len(spec.shape)
    for key, labels in ((SUPPORT_Y, episode.support_y), ("y", episode.query_y)):
        if labels is None:
            continue
        label_rank = labels.shape.rank - 1  # Without the task axis.
        if label_rank not in (rank, rank - 1):
            raise ValueError(
                f"`{key}` has the wrong rank for the base network's output "
                f"of shape {tuple(spec.shape)} per task: a task's labels "
                f"need rank {rank} (values, one-hot) or {rank - 1} (class "
                f"indices). Received: {key}.shape={labels.shape}"
            )


def merge_task_axis(tensor):
    """`[tasks, examples, ...]` -> `[tasks * examples, ...]`."""
    return tf.reshape(tensor, tf.concat([[-1], tf.shape(tensor)[2:]], axis=0))
