"""Turns `compile`'s loss and metrics into per-task ones.

`tfmaml.MAML` applies the compiled loss to each task separately (its
per-example values averaged over the task's examples) and keeps two copies
of every metric: after adaptation and, prefixed `pre_`, before it. What the
labels are comes from `tfmaml.labels`, read off the loss.
"""

from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import keras
import tensorflow as tf

from tfmaml import batches
from tfmaml import labels
from tfmaml.labels import LabelKind


class TaskMetrics(NamedTuple):
    """The compiled objective of a MAML model, applied per task.

    A tuple, so Keras does not track it as state of the (already built)
    model.

    Attributes:
        label_kind: What the labels are (`tfmaml.labels`).
        example_loss: `fn(y_true, y_pred)` returning per-example values.
        post: `(metric, weighted)` pairs after adaptation.
        pre: The same metrics, prefixed `pre_`, before adaptation.
    """

    label_kind: LabelKind | None
    example_loss: Callable | None
    post: tuple
    pre: tuple


UNCOMPILED = TaskMetrics(None, None, (), ())


def compile_task_metrics(loss, metrics, weighted_metrics) -> TaskMetrics:
    """The per-task loss and metrics of `compile`'s arguments.

    Args:
        loss: `compile`'s loss.
        metrics: `compile`'s metrics.
        weighted_metrics: `compile`'s weighted metrics.

    Raises:
        ValueError: If the loss cannot be interpreted, or `metrics` is not
            a list.
    """
    kind = labels.label_kind(loss)
    return TaskMetrics(
        label_kind=kind,
        example_loss=per_example_loss(loss),
        post=build_metrics(metrics, weighted_metrics, kind, prefix=""),
        pre=build_metrics(metrics, weighted_metrics, kind, prefix="pre_"),
    )


def task_loss(
    example_loss: Callable, y_true, y_pred, sample_weight=None
) -> tf.Tensor:
    """One task's loss: the mean of `example_loss`'s per-example values,
    weighted by `sample_weight` (`sum(weight * loss) / examples`, as Keras
    reduces).

    Args:
        example_loss: `fn(y_true, y_pred)` per-example values.
        y_true: One task's labels.
        y_pred: The predictions.
        sample_weight: Optional `[examples]` weights.
    """
    values = tf.convert_to_tensor(example_loss(y_true, y_pred))
    values = tf.cast(values, y_pred.dtype)
    if sample_weight is not None:
        weight = tf.cast(sample_weight, values.dtype)
        weight = tf.reshape(weight, [-1] + [1] * (values.shape.rank - 1))
        values = values * weight
    return tf.reduce_mean(values)


def per_example_loss(loss) -> Callable:
    """Resolves a Keras loss identifier to `fn(y_true, y_pred)` returning
    per-example (unreduced) values.

    Args:
        loss: A Keras loss name, `keras.losses.Loss` or function.
    """
    resolved = keras.losses.get(loss)
    if isinstance(resolved, keras.losses.Loss):
        return resolved.call
    if callable(resolved):
        return lambda y_true, y_pred: resolved(*_align_ranks(y_true, y_pred))
    raise ValueError(
        f"Could not interpret the loss {loss!r}: pass a Keras loss name, "
        "a `keras.losses.Loss` or a function `fn(y_true, y_pred)`."
    )


def update_task_metrics(
    model: Any, episode: batches.Episode, results: Any
) -> dict:
    """Updates `model`'s loss trackers and per-task metrics from a
    meta-batch's `TaskResults` and returns the logs (without the `pre_`
    ones when the results have no pre-adaptation predictions).

    Args:
        model: A compiled `tfmaml.MAML`.
        episode: The meta-batch.
        results: Its `TaskResults`.
    """
    tasks = tf.shape(results.loss)[0]
    model._loss_tracker.update_state(
        tf.reduce_mean(results.loss), sample_weight=tasks
    )
    with_pre = results.pre_predictions is not None
    if with_pre:
        model._pre_loss_tracker.update_state(
            tf.reduce_mean(results.pre_loss), sample_weight=tasks
        )
    y_true = batches.merge_task_axis(episode.query_y)
    weight = (
        None
        if episode.sample_weight is None
        else batches.merge_task_axis(episode.sample_weight)
    )
    compiled = model.task_metrics
    for metrics, predictions in (
        (compiled.post, results.predictions),
        (compiled.pre, results.pre_predictions),
    ):
        if predictions is None:
            continue
        y_pred = batches.merge_task_axis(predictions)
        for metric, weighted in metrics:
            metric.update_state(
                y_true, y_pred, sample_weight=weight if weighted else None
            )
    logs = model.get_metrics_result()
    if not with_pre:
        # Keras then reports these logs rather than every metric's.
        pre = {model._pre_loss_tracker.name}
        pre.update(m.name for m, _ in compiled.pre)
        logs = {k: v for k, v in logs.items() if k not in pre}
    if isinstance(
        tf.distribute.get_strategy(),
        tf.distribute.MultiWorkerMirroredStrategy,
    ):
        # Keras reduces step logs across workers with
        # `strategy.reduce("MEAN", log, axis=0)`, which fails for scalars
        # (tensorflow#72388); as 1-vectors they reduce to the mean.
        logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs


def _align_ranks(y_true, y_pred):
    """Gives labels `[n]` and predictions `[n, 1]` (or the reverse) the same
    rank, as Keras' loss classes do before calling a loss function."""
    if y_true.shape.rank + 1 == y_pred.shape.rank and y_pred.shape[-1] == 1:
        y_true = y_true[..., None]
    elif y_pred.shape.rank + 1 == y_true.shape.rank and y_true.shape[-1] == 1:
        y_pred = y_pred[..., None]
    return y_true, y_pred


def _accuracy_for(kind: LabelKind) -> Callable:
    """`"accuracy"` for the labels the loss takes: class indices, one-hot
    vectors, or one binary output (Keras resolves it the same way)."""

    def accuracy(y_true, y_pred):
        if kind.sparse:
            return keras.metrics.sparse_categorical_accuracy(y_true, y_pred)
        if y_pred.shape[-1] == 1:
            return keras.metrics.binary_accuracy(y_true, y_pred)
        return keras.metrics.categorical_accuracy(y_true, y_pred)

    return accuracy


def _build_metric(identifier, kind, prefix):
    if identifier in ("accuracy", "acc"):
        return keras.metrics.MeanMetricWrapper(
            _accuracy_for(kind), name=f"{prefix}{identifier}"
        )
    metric = keras.metrics.get(identifier)
    if isinstance(metric, keras.metrics.Metric):
        if not prefix:
            return metric
        config = metric.get_config()
        config["name"] = prefix + metric.name
        return type(metric).from_config(config)
    name = getattr(metric, "__name__", str(identifier))
    return keras.metrics.MeanMetricWrapper(metric, name=prefix + name)


def build_metrics(
    metrics, weighted_metrics, kind: LabelKind, *, prefix: str
) -> tuple:
    """`(metric, weighted)` pairs for `compile`'s `metrics` (unweighted)
    and `weighted_metrics`, named with `prefix`.

    Args:
        metrics: `compile`'s metrics.
        weighted_metrics: `compile`'s weighted metrics.
        kind: What the labels are.
        prefix: Prefixes the metric names (`"pre_"`).

    Raises:
        ValueError: If `metrics` or `weighted_metrics` is not a list.
    """
    pairs = []
    for argument, values, weighted in (
        ("metrics", metrics, False),
        ("weighted_metrics", weighted_metrics, True),
    ):
        if values is None:
            continue
        if not isinstance(values, (list, tuple)):
            raise ValueError(
                f"`{argument}` must be a list for `MAML` (the base network "
                f"has one output). Received: {argument}={values!r}"
            )
        pairs += [(_build_metric(m, kind, prefix), weighted) for m in values]
    return tuple(pairs)
