"""A linear head fitted to a support set from its prototypes: a ProtoNet's
test-time adaptation (`tfmaml.ProtoNet(head_steps=...)`).

A ProtoNet's logits are already a linear head on the embedding: with the
squared Euclidean distance, `-|f(x) - c_k|^2 = f(x) . 2 c_k - |c_k|^2 -
|f(x)|^2`, so kernel `2 c_k`, bias `-|c_k|^2` and a last term that is the
same for every class; with the cosine, kernel `c_k / |c_k|` on the unit
embedding. The prototypes only average the support embeddings. A few steps
of gradient descent on the support set's cross-entropy, from that head and
with the embedding fixed, also move the boundaries where support examples
(and, with `support_views`, their distorted copies) fall on the wrong
side of them: +0.9 points on Omniglot's held-out alphabet with 8 support
views, though not on the test alphabets (-0.1 on random and within-alphabet
episodes over 3 seeds: benchmarks/RESULTS.md), so the 20-way recipe
leaves it off. It is Proto-MAML's inner loop on the head alone, at test
time, and it runs through the one inner loop (`tfmaml.inner_loop.adapt`),
first order: nothing differentiates through it.
"""

import keras
import tensorflow as tf

from tfmaml import inner_loop

DISTANCES = ("squared_euclidean", "cosine")


def check_distance(distance: str) -> str:
    """Returns `distance` if it is one of `DISTANCES`, else raises
    `ValueError` naming it."""
    if distance not in DISTANCES:
        raise ValueError(
            f"`distance` must be one of {list(DISTANCES)}. Received: "
            f"distance={distance!r}"
        )
    return distance


def initial_head(prototypes: tf.Tensor, distance: str) -> list[tf.Tensor]:
    """`[kernel [dim, ways], bias [ways]]` whose `head_logits` equal the
    prototype logits (`tfmaml.prototypes.prototype_logits`)."""
    prototypes = tf.reshape(prototypes, [tf.shape(prototypes)[0], -1])
    if distance == "cosine":
        kernel = tf.math.l2_normalize(prototypes, axis=-1)
        return [tf.transpose(kernel), tf.zeros_like(prototypes[:, 0])]
    bias = -tf.reduce_sum(prototypes**2, -1)
    return [tf.transpose(2.0 * prototypes), bias]


def head_logits(
    embeddings: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor, distance: str
) -> tf.Tensor:
    """`[N, ways]` logits of `embeddings [N, ...]` under the head: for the
    squared Euclidean distance `f . kernel + bias - |f|^2` (so the initial
    head gives minus the squared distances exactly), for the cosine the
    unit embedding's `f . kernel + bias`."""
    embeddings = tf.reshape(embeddings, [tf.shape(embeddings)[0], -1])
    if distance == "cosine":
        return (
            tf.matmul(tf.math.l2_normalize(embeddings, axis=-1), kernel) + bias
        )
    squares = tf.reduce_sum(embeddings**2, -1, keepdims=True)
    return tf.matmul(embeddings, kernel) + bias - squares


def fit_head(
    prototypes: tf.Tensor,
    embeddings: tf.Tensor,
    labels: tf.Tensor,
    *,
    steps: int,
    learning_rate: float,
    distance: str,
) -> list[tf.Tensor]:
    """The head after `steps` steps of gradient descent (rate
    `learning_rate`) on the mean cross-entropy of the support `embeddings`
    `[copies, S, ...]` (each image and its views; all copies of image `s`
    have class `labels[s]`), from `initial_head(prototypes)`.

    Returns:
        `[kernel, bias]`, constants for any enclosing tape.
    """
    copies = tf.shape(embeddings)[0]
    flat = tf.reshape(embeddings, [copies * tf.shape(embeddings)[1], -1])
    flat = tf.stop_gradient(flat)
    targets = tf.tile(tf.cast(labels, tf.int32), [copies])

    def support_loss(head, x, y):
        logits = head_logits(x, *head, distance)
        return tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(
                y, logits, from_logits=True
            )
        )

    return inner_loop.adapt(
        support_loss,
        initial_head(tf.stop_gradient(prototypes), distance),
        flat,
        targets,
        steps=steps,
        learning_rate=learning_rate,
        first_order=True,
    )


@keras.saving.register_keras_serializable(package="tfmaml")
class HeadLogits(keras.layers.Layer):
    """Logits of embeddings under a fixed fitted head (what
    `ProtoNet.adapt` puts on top of the embedding network when it has
    `head_steps`).

    Args:
        kernel: `[dim, ways]`.
        bias: `[ways]`.
        distance: `"squared_euclidean"` or `"cosine"` (see `head_logits`).
        **kwargs: Base layer arguments.
    """

    def __init__(self, kernel, bias, distance="squared_euclidean", **kwargs):
        super().__init__(**kwargs)
        self.distance = check_distance(distance)
        self.kernel = self._constant(kernel, "kernel")
        self.bias = self._constant(bias, "bias")

    def _constant(self, value, name):
        value = keras.ops.convert_to_numpy(value)
        return self.add_weight(
            shape=value.shape,
            initializer=keras.initializers.Constant(value),
            trainable=False,
            name=name,
        )

    def call(self, embeddings):
        return head_logits(
            embeddings,
            tf.convert_to_tensor(self.kernel),
            tf.convert_to_tensor(self.bias),
            self.distance,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "kernel": keras.ops.convert_to_numpy(self.kernel).tolist(),
            "bias": keras.ops.convert_to_numpy(self.bias).tolist(),
            "distance": self.distance,
        }
