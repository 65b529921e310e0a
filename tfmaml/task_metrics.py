"""Turns `compile`'s loss and metrics into per-task ones.

`tfmaml.MAML` applies the compiled loss to each task separately (its
per-example values averaged over the task's examples) and keeps two copies
of every metric: after adaptation and, prefixed `pre_`, before it.
"""

from typing import NamedTuple

import keras


class TaskMetrics(NamedTuple):
    """Metrics after (`post`) and before (`pre`) adaptation, each a tuple
    of `(metric, weighted)` pairs. A tuple, so Keras does not track it as
    state of the (already built) model."""

    post: tuple
    pre: tuple


def per_example_loss(loss):
    """Resolves a Keras loss identifier to `fn(y_true, y_pred)` returning
    per-example (unreduced) values."""
    resolved = keras.losses.get(loss)
    if isinstance(resolved, keras.losses.Loss):
        return resolved.call
    if callable(resolved):
        return lambda y_true, y_pred: resolved(*_align_ranks(y_true, y_pred))
    raise ValueError(
        f"Could not interpret the loss {loss!r}: pass a Keras loss name, "
        "a `keras.losses.Loss` or a function `fn(y_true, y_pred)`."
    )


def _align_ranks(y_true, y_pred):
    """Gives labels `[n]` and predictions `[n, 1]` (or the reverse) the same
    rank, as Keras' loss classes do before calling a loss function."""
    if y_true.shape.rank + 1 == y_pred.shape.rank and y_pred.shape[-1] == 1:
        y_true = y_true[..., None]
    elif y_pred.shape.rank + 1 == y_true.shape.rank and y_true.shape[-1] == 1:
        y_pred = y_pred[..., None]
    return y_true, y_pred


def _accuracy(y_true, y_pred):
    """`"accuracy"` resolved as Keras resolves it, from static shapes."""
    if y_pred.shape[-1] == 1:
        return keras.metrics.binary_accuracy(y_true, y_pred)
    if y_true.shape.rank == y_pred.shape.rank and y_true.shape[-1] != 1:
        return keras.metrics.categorical_accuracy(y_true, y_pred)
    return keras.metrics.sparse_categorical_accuracy(y_true, y_pred)


def _build_metric(identifier, prefix):
    if identifier in ("accuracy", "acc"):
        return keras.metrics.MeanMetricWrapper(
            _accuracy, name=f"{prefix}{identifier}"
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


def build_metrics(metrics, weighted_metrics, prefix: str) -> tuple:
    """`(metric, weighted)` pairs for `compile`'s `metrics` (unweighted)
    and `weighted_metrics`, named with `prefix`."""
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
        pairs += [(_build_metric(m, prefix), weighted) for m in values]
    return tuple(pairs)
