"""Test-time views: an image's embedding averaged with those of fixed
distorted copies of it.

A one-shot prototype is the embedding of one drawing; averaging it with
the embeddings of a few distorted copies makes it stand for more than one
drawing of its class, and doing the same to a query makes its embedding
less sensitive to how that one drawing sits on the canvas. Copy `i` of
every image, support or query, is distorted by the same fixed draw
(seeded by `VIEW_SEED` and `i`), so an image's copies do not depend on
its place in the batch or on the other images, and the export computes
exactly what evaluation does. (A network that normalises with batch
statistics, as `tfmaml.BatchNormalization` does by default, still sees
the batch: the copies of a batch are embedded together.)
`ProtoNet(support_views=..., query_views=...)` uses them outside
training.
"""

from collections.abc import Callable

import keras
import tensorflow as tf

from tfmaml.checks import check_int
from tfmaml.data.augmentation import AffineAugmentation

# Seeds the views' distortions: fixed, so an image always gets the same
# copies, in evaluation, `adapt` and the export alike.
VIEW_SEED = 4_201_301


def average_views(
    embed: Callable[[tf.Tensor], tf.Tensor],
    images: tf.Tensor,
    embeddings: tf.Tensor,
    views: int,
    augmentation: AffineAugmentation | None,
    argument: str,
) -> tf.Tensor:
    """`embeddings` (`embed(images)`, passed in because callers have it),
    averaged with the embeddings of `views` distorted copies of `images`
    (embedded as one batch). `argument` names the option in errors."""
    if not views:
        return embeddings
    return mean_of_views(
        view_embeddings(
            embed, images, embeddings, views, augmentation, argument
        )
    )


def mean_of_views(stack: tf.Tensor) -> tf.Tensor:
    """The mean over the leading axis of `view_embeddings`' `stack`: the
    image's own embedding plus the sum of its copies', over their count."""
    if stack.shape[0] == 1:
        return stack[0]
    count = tf.cast(tf.shape(stack)[0], stack.dtype)
    return (stack[0] + tf.reduce_sum(stack[1:], 0)) / count


def view_embeddings(
    embed: Callable[[tf.Tensor], tf.Tensor],
    images: tf.Tensor,
    embeddings: tf.Tensor,
    views: int,
    augmentation: AffineAugmentation | None,
    argument: str,
) -> tf.Tensor:
    """`[1 + views, N, ...]`: `embeddings` of the `N` `images`, then those
    of each of their `views` distorted copies (`mean_of_views` averages
    them; `ProtoNet(head_steps=...)` fits its head on each)."""
    if not views:
        return embeddings[None]
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(
            f"{argument} distorts images [height, width, channels]; "
            f"received a batch of shape {images.shape}."
        )
    copies = [
        augmentation(
            images, tf.constant([VIEW_SEED, i], tf.int64), one_draw=True
        )
        for i in range(views)
    ]
    viewed = embed(tf.concat(copies, 0))
    viewed = tf.reshape(viewed, tf.concat([[views], tf.shape(embeddings)], 0))
    return tf.concat([embeddings[None], viewed], 0)


def check_augmentation(augmentation, any_views: bool):
    """The views' distortion checked: an `AffineAugmentation` (from a dict
    of its fields; the default one where there are views and none is
    given), or `None` where there are no views."""
    if isinstance(augmentation, dict):
        augmentation = AffineAugmentation(**augmentation)
    if augmentation is None:
        augmentation = AffineAugmentation() if any_views else None
    elif not isinstance(augmentation, AffineAugmentation):
        raise TypeError(
            "view_augmentation must be a tfmaml.data.AffineAugmentation, a "
            "dict of its fields or None. Received: "
            f"{type(augmentation).__name__}"
        )
    if augmentation is not None:
        augmentation.check()
    return augmentation


@keras.saving.register_keras_serializable(package="tfmaml")
class ViewAveraged(keras.layers.Layer):
    """A network whose output for each image is averaged with its outputs
    for `views` fixed distorted copies of the image (`average_views`):
    what `ProtoNet.adapt` embeds queries with when it has `query_views`.

    Args:
        network: The embedding network (shares its weights).
        views: Distorted copies per image, an int >= 0 (0: the network's
            own outputs).
        augmentation: Their distortion, an `AffineAugmentation` or a dict
            of its fields.
    """

    def __init__(self, network, views, augmentation, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.views = check_int("views", views, minimum=0)
        self.augmentation = check_augmentation(augmentation, True)

    def call(self, images):
        return average_views(
            self.network,
            images,
            self.network(images),
            self.views,
            self.augmentation,
            "views",
        )

    def get_config(self):
        return {
            **super().get_config(),
            "network": keras.saving.serialize_keras_object(self.network),
            "views": self.views,
            "augmentation": self.augmentation._asdict(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(
            config["network"]
        )
        return cls(**config)
