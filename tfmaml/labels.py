"""What a model's labels are: the one place that decides it.

A model's compiled loss says whether its labels are class indices (a
sparse cross-entropy), one-hot or multi-label vectors (another
cross-entropy), or values to regress (anything else), and how its outputs
turn into probabilities. The batch checks, the per-task metrics, the
evaluation and the export all read a `LabelKind` from here instead of
guessing from shapes, dtypes or names of their own.
"""

from typing import NamedTuple

import keras


class LabelKind(NamedTuple):
    """The labels a loss expects, and how outputs become probabilities.

    Attributes:
        sparse: Labels are class indices, of rank `output rank - 1` and
            an integer dtype.
        classification: The loss is a cross-entropy (sparse or not), so
            accuracy is meaningful.
        activation: How outputs become probabilities: `"softmax"`,
            `"sigmoid"`, `"identity"` (the outputs are probabilities) or
            `None` (regression).
    """

    sparse: bool
    classification: bool
    activation: str | None

    def label_rank(self, output_rank: int) -> int:
        """The rank of one example's labels for outputs of `output_rank`
        (both without the batch axis)."""
        return output_rank - 1 if self.sparse else output_rank


REGRESSION = LabelKind(sparse=False, classification=False, activation=None)


def label_kind(loss) -> LabelKind:
    """Reads the label format and output activation off a Keras loss.

    Args:
        loss: What `compile` was given: a Keras loss name, a
            `keras.losses.Loss`, or a function `fn(y_true, y_pred)`.
            Functions are read by their name like Keras' own
            (`sparse_categorical_crossentropy`); any other name is
            regression.

    Returns:
        A `LabelKind`.
    """
    resolved = keras.losses.get(loss)
    if isinstance(resolved, keras.losses.Loss):
        name = resolved.name
        from_logits = resolved.get_config().get("from_logits", False)
    else:
        name = getattr(resolved, "__name__", "")
        from_logits = False
    if "crossentropy" not in name:
        return REGRESSION
    if from_logits:
        activation = "sigmoid" if "binary" in name else "softmax"
    else:
        activation = "identity"
    return LabelKind(
        sparse="sparse" in name, classification=True, activation=activation
    )
