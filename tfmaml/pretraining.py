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

import collections
import math
import time
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
    seconds: float | None = None,
    label_smoothing: float = 0.0,
) -> keras.callbacks.History:
    """Trains `embedding` in place as the body of a `num_classes`-way
    classifier for `steps` batches of `batches` (`(images, labels)`, e.g.
    `tfmaml.data.labelled_batches`), or for as many as fit in `seconds`;
    returns `fit`'s history (its `history["steps"]`: the batches trained).

    Why a time budget: a batch costs six times as long on some CPUs as on
    others (benchmarks/RESULTS.md), so a step count that fits a wall-time
    budget on one overruns it on another. With `seconds`, the batches
    after the first `BUDGET_PROBE` are timed, and from the
    `BUDGET_TIMED`th on the run ends at the step count that fits at the
    rate of the last ones (at most `steps`), with the cosine decay reaching
    zero there: a shorter schedule rather than a cut one.

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
        seconds: The wall-time budget, from the call to the last batch
            (the first `BUDGET_PROBE + BUDGET_TIMED` batches run whatever
            it is, even 0). Defaults to none: `steps` batches.
        label_smoothing: Keras' label smoothing of the cross-entropy (the
            labels go one-hot for it): a share of each target spread over
            all classes. Defaults to 0.

    Raises:
        ValueError: For a count that is not a positive int, a budget that
            is not a number >= 0, or as `classifier`.
    """
    check_int("steps", steps, minimum=1)
    check_int("steps_per_epoch", steps_per_epoch, minimum=1)
    if seconds is not None and not (
        isinstance(seconds, int | float) and 0 <= seconds < math.inf
    ):
        raise ValueError(
            "`seconds` must be a number of seconds >= 0 (or None). "
            f"Received: seconds={seconds!r}"
        )
    if not (
        isinstance(label_smoothing, int | float) and 0 <= label_smoothing < 1
    ):
        raise ValueError(
            "`label_smoothing` must be a number in [0, 1). Received: "
            f"label_smoothing={label_smoothing!r}"
        )
    stop = _StopAt(steps, seconds)
    model = classifier(embedding, num_classes, head, seed)
    if label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=label_smoothing
        )
        batches = batches.map(
            lambda x, y: (x, tf.one_hot(y, num_classes)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(
        optimizer=keras.optimizers.Adam(
            CosineToHorizon(learning_rate, stop.horizon)
        ),
        loss=loss,
        metrics=["accuracy"],
        jit_compile=False,  # Set explicitly: XLA is slower on CPU here.
    )
    per_epoch = min(steps_per_epoch, steps)
    history = model.fit(
        batches,
        epochs=-(-steps // per_epoch),
        steps_per_epoch=per_epoch,
        callbacks=[*callbacks, stop],
        verbose=verbose,
    )
    history.history["steps"] = stop.seen
    return history


# Batches run before a budget's rate is measured (the first includes
# tracing, and the next few settle), and the window it is measured over.
BUDGET_PROBE = 5
BUDGET_TIMED = 20


class CosineToHorizon(keras.optimizers.schedules.LearningRateSchedule):
    """Keras' `CosineDecay` to zero, over a horizon held in a variable, so
    that a time budget can shorten it once the batches' rate is known,
    without tracing the training step again (`CosineDecay`'s horizon is a
    Python number, fixed when traced).

    Args:
        learning_rate: The rate at step 0.
        horizon: A scalar float32 variable: the step at which the rate
            reaches zero (and stays).
    """

    def __init__(self, learning_rate: float, horizon: keras.Variable):
        super().__init__()
        self.learning_rate = learning_rate
        self.horizon = horizon

    def __call__(self, step):
        horizon = tf.convert_to_tensor(self.horizon)
        done = tf.minimum(tf.cast(step, horizon.dtype), horizon) / horizon
        return self.learning_rate * 0.5 * (1.0 + tf.cos(math.pi * done))

    def get_config(self):
        return {"learning_rate": self.learning_rate}


class _StopAt(keras.callbacks.Callback):
    """Ends `fit` after `steps` batches, inside a last, shorter epoch
    (counted here: reading the optimizer's step would copy it from the
    device every batch), or, with a budget of `seconds`, after the batches
    that fit it (`horizon`, which the learning rate's schedule reads) at
    the rate of the last `BUDGET_TIMED`, estimated again at every batch:
    a CPU shared with other work slows down and speeds up."""

    def __init__(self, steps: int, seconds: float | None = None):
        super().__init__()
        self.most = self.steps = steps
        self.seconds = seconds
        self.seen = 0
        self.horizon = keras.Variable(
            float(steps), dtype="float32", trainable=False, name="horizon"
        )
        self.start = time.perf_counter()
        self.ends = collections.deque(maxlen=BUDGET_TIMED + 1)

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seconds is not None and self.seen >= BUDGET_PROBE:
            self.ends.append(time.perf_counter())
        if len(self.ends) > BUDGET_TIMED:
            rate = (self.ends[-1] - self.ends[0]) / BUDGET_TIMED
            left = self.start + self.seconds - self.ends[-1]
            steps = min(self.most, self.seen + max(0, int(left / rate)))
            if steps != self.steps:
                self.steps = steps
                self.horizon.assign(float(steps))
        if self.seen >= self.steps:
            self.model.stop_training = True
