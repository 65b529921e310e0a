"""Whole-class pretraining of a ProtoNet's embedding.

Why. An episode shows the embedding 20 classes; a classifier over all of
the training split's classes shows it every class at every step, and its
features transfer to new classes at least as well (Chen et al., "A Closer
Look at Few-shot Classification", 2019; Tian et al., "Rethinking Few-Shot
Image Classification", 2020; Chen et al.'s Meta-Baseline, 2021, then
fine-tunes on episodes). On Omniglot's five training alphabets, 3.3
minutes of it scored 83.2% on random and 72.2% on within-alphabet 20-way
1-shot episodes of the unseen alphabets, where the 26-minute episodic
recipe had 82.5% and 71.6% (benchmarks/RESULTS.md).

How. `pretrain_embedding` puts a linear head on the embedding, trains the
pair with Keras' `fit` on `tfmaml.data.labelled_batches` (Adam, cosine
decay to zero over `steps`), and drops the head: the embedding's weights
are then the pretrained ones, wherever it is used (a `tfmaml.ProtoNet`
built around it shares it). `head="cosine"` puts `CosineLogits` there
instead: a learned scale times the cosine of the feature vector and each
class's weight vector (Chen et al.'s Baseline++, with Meta-Baseline's
learned temperature), which trains the embedding to separate classes by
direction, as a prototype classifier compares them.
"""

import math
from collections.abc import Sequence

import keras
import tensorflow as tf

from tfmaml.checks import check_int
from tfmaml.prototypes import prototype_logits

HEAD_NAME = "pretraining_head"
HEADS = ("linear", "cosine")


@keras.saving.register_keras_serializable(package="tfmaml")
class CosineLogits(keras.layers.Layer):
    """`units` logits: `scale` times the cosine similarity of the input
    vector and each unit's weight vector (a row of `kernel`, like a
    prototype; the cosine is `ProtoNet(distance="cosine")`'s), with `scale`
    learned (as its logarithm, so it stays positive).

    Why the scale: cosines lie in [-1, 1], so without it a softmax over
    hundreds of classes stays nearly uniform and the loss cannot fall.

    Args:
        units: The number of logits (classes).
        scale: The scale's initial value. Defaults to 10.
        kernel_initializer: The weight vectors' initializer. Defaults to
            `"glorot_uniform"`.
    """

    def __init__(
        self,
        units: int,
        scale: float = 10.0,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = check_int("units", units, minimum=1)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        if not scale > 0:
            raise ValueError(
                f"CosineLogits' `scale` must be > 0. Received: scale={scale!r}"
            )
        self.scale = float(scale)

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(self.units, input_shape[-1]),
            initializer=self.kernel_initializer,
            name="kernel",
        )
        self.log_scale = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(math.log(self.scale)),
            name="log_scale",
        )

    def call(self, inputs):
        cosines = prototype_logits(inputs, self.kernel, "cosine")
        return tf.exp(self.log_scale) * cosines

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "scale": self.scale,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
        }


def check_head(head: str, argument: str = "head") -> str:
    """Returns `head` if it is one of `HEADS`, else `ValueError` naming
    `argument` (a config says `pretrain_head`)."""
    if head not in HEADS:
        raise ValueError(
            f"`{argument}` must be one of {list(HEADS)}. Received: "
            f"{argument}={head!r}"
        )
    return head


def classifier(
    embedding: keras.Model,
    num_classes: int,
    head: str = "linear",
    seed: int | None = None,
) -> keras.Model:
    """`embedding` followed by a head of `num_classes` logits: `"linear"`
    (a `Dense` layer) or `"cosine"` (`CosineLogits`), its kernel drawn
    from Glorot's uniform distribution with `seed` (default: Keras' global
    seed, i.e. whatever was drawn before it).

    Raises:
        ValueError: If `num_classes` is not an int >= 2, `head` is not one
            of `HEADS`, or the embedding's output is not flat
            (`[batch, features]`).
    """
    check_int("num_classes", num_classes, minimum=2)
    check_head(head)
    try:
        shape = embedding.compute_output_shape(embedding.input_shape)
    except (AttributeError, NotImplementedError, ValueError):
        shape = None  # A model that cannot say: its first batch will.
    if shape is not None and len(shape) != 2:
        raise ValueError(
            "Pretraining puts a linear head on a flat embedding "
            f"`[batch, features]`; embedding {embedding.name!r} outputs "
            f"shape {tuple(shape)}."
        )
    kernel = keras.initializers.GlorotUniform(seed)
    layer = (
        CosineLogits(num_classes, kernel_initializer=kernel, name=HEAD_NAME)
        if head == "cosine"
        else keras.layers.Dense(
            num_classes, kernel_initializer=kernel, name=HEAD_NAME
        )
    )
    return keras.Sequential(
        [embedding, layer],
        name=f"{embedding.name}_classifier",
    )


def pretrain_embedding(
    embedding: keras.Model,
    batches: tf.data.Dataset,
    num_classes: int,
    *,
    steps: int,
    learning_rate: float = 1e-3,
    head: str = "linear",
    steps_per_epoch: int = 100,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    seed: int | None = None,
) -> keras.callbacks.History:
    """Trains `embedding` in place as the body of a `num_classes`-way
    classifier for `steps` batches of `batches` (`(images, labels)`, e.g.
    `tfmaml.data.labelled_batches`); returns `fit`'s history.

    Args:
        embedding: A built Keras model with a flat output.
        batches: An endless dataset of `(images, labels)` batches.
        num_classes: Labels run over `0..num_classes-1`.
        steps: Optimizer steps.
        learning_rate: Adam's rate before its cosine decay. Defaults to
            `1e-3`.
        head: The classifier's head, `"linear"` or `"cosine"` (see
            `classifier`). Defaults to `"linear"`.
        steps_per_epoch: Steps between `fit`'s epoch ends (logs,
            callbacks); the last epoch takes what remains. Defaults to 100.
        callbacks: Keras callbacks for `fit`. Defaults to none.
        verbose: `fit`'s verbosity. Defaults to 0.
        seed: The head's initial weights' seed (`classifier`). Defaults
            to Keras' global seed.

    Raises:
        ValueError: For a count that is not a positive int, or as
            `classifier`.
    """
    check_int("steps", steps, minimum=1)
    check_int("steps_per_epoch", steps_per_epoch, minimum=1)
    model = classifier(embedding, num_classes, head, seed)
    model.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(learning_rate, steps)
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False,  # Set explicitly: XLA is slower on CPU here.
    )
    per_epoch = min(steps_per_epoch, steps)
    return model.fit(
        batches,
        epochs=-(-steps // per_epoch),
        steps_per_epoch=per_epoch,
        callbacks=[*callbacks, _StopAt(steps)],
        verbose=verbose,
    )


class _StopAt(keras.callbacks.Callback):
    """Ends `fit` after `steps` batches, inside a last, shorter epoch
    (counted here: reading the optimizer's step would copy it from the
    device every batch)."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen >= self.steps:
            self.model.stop_training = True
