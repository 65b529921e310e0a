"""The MAML family as recipes over `tfmaml.MAML` and its one inner loop.

Each class only fixes options of `MAML` (which variables adapt, which
inner-loop hyperparameters are learned) or, for Reptile, the outer update.
First-order MAML is `MAML(first_order=True)`; the MAML++ fixes are `MAML`
options (`multi_step_loss_steps`, `learn_inner_lr="per_layer_per_step"`,
`first_order_steps`) plus a Keras `CosineDecay` schedule for the meta
learning rate.
"""

import keras
import tensorflow as tf

from tfmaml.model import MAML


@keras.saving.register_keras_serializable(package="tfmaml")
class MetaSGD(MAML):
    """Meta-SGD: a learned inner learning rate for every weight element.

    The rates start at `inner_lr` and are meta-trained with the initial
    weights; the inner step is `w - rate * grad` elementwise.

    Args:
        base_model: A built Keras network.
        inner_lr: The rates' initial value. Defaults to `0.01`.
        inner_steps: Inner steps in training. Defaults to `1`.
        **kwargs: Other `MAML` options.

    References:
        Li, Zhou, Chen and Li. Meta-SGD: Learning to Learn Quickly for
        Few-Shot Learning. 2017.
    """

    def __init__(self, base_model, inner_lr=0.01, inner_steps=1, **kwargs):
        kwargs.setdefault("learn_inner_lr", "per_parameter")
        if kwargs["learn_inner_lr"] != "per_parameter":
            raise ValueError(
                "MetaSGD learns a rate per parameter. Received: "
                f"learn_inner_lr={kwargs['learn_inner_lr']!r}"
            )
        super().__init__(base_model, inner_lr, inner_steps, **kwargs)


@keras.saving.register_keras_serializable(package="tfmaml")
class ANIL(MAML):
    """ANIL (almost no inner loop): adapt only the head.

    The inner loop adapts the variables of the layers in `inner_variables`,
    by default the last layer of `base_model` that has trainable weights;
    the body is meta-learned by the outer loop only.

    Args:
        base_model: A built Keras network.
        inner_lr: Defaults to `0.01`.
        inner_steps: Defaults to `1`.
        **kwargs: Other `MAML` options.

    References:
        Raghu, Raghu, Bengio and Vinyals. Rapid Learning or Feature Reuse?
        Towards Understanding the Effectiveness of MAML. ICLR 2020.
    """

    def __init__(self, base_model, inner_lr=0.01, inner_steps=1, **kwargs):
        if kwargs.get("inner_variables") is None:
            kwargs["inner_variables"] = [_head_name(base_model)]
        super().__init__(base_model, inner_lr, inner_steps, **kwargs)


@keras.saving.register_keras_serializable(package="tfmaml")
class Reptile(MAML):
    """Reptile: move the initial weights towards each task's adapted ones.

    Each task runs `inner_steps` SGD steps on its support set; the
    "gradient" given to the compiled optimizer is the mean over tasks of
    `initial - adapted` weights (with `keras.optimizers.SGD(epsilon)` this
    is Reptile's `w += epsilon * mean(adapted - w)`). No second derivative
    and no query loss are involved; query metrics are still logged.

    Args:
        base_model: A built Keras network.
        inner_lr: Inner SGD step. Defaults to `0.01`.
        inner_steps: Inner steps per task. Defaults to `5`.
        **kwargs: Other `MAML` options, except learned inner
            hyperparameters and MAML++ loss options, which need a
            meta-gradient.

    References:
        Nichol, Achiam and Schulman. On First-Order Meta-Learning
        Algorithms. 2018.
    """

    def __init__(self, base_model, inner_lr=0.01, inner_steps=5, **kwargs):
        for name in (
            "learn_inner_lr",
            "learn_inner_momentum",
            "multi_step_loss_steps",
            "first_order_steps",
        ):
            if kwargs.get(name):
                raise ValueError(
                    f"Reptile has no meta-gradient to learn `{name}` with. "
                    f"Received: {name}={kwargs[name]!r}"
                )
        kwargs["first_order"] = True
        super().__init__(base_model, inner_lr, inner_steps, **kwargs)

    def train_step(self, data):
        episode = self.episode_from_batch(data)
        variables = self.base_model.trainable_variables
        results = self.solve_tasks(
            episode,
            steps=self.inner_steps,
            first_order=True,
            training=True,
            with_fast_weights=True,
            with_pre_predictions=self.pre_metrics_in_training,
        )
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        directions = [
            (tf.convert_to_tensor(v) - tf.reduce_mean(fast, axis=0))
            / tf.cast(replicas, fast.dtype)
            for v, fast in zip(variables, results.fast_weights, strict=True)
        ]
        self.optimizer.apply_gradients(zip(directions, variables, strict=True))
        self._write_back_state(results)
        return self._update_metrics(episode, results)


def _head_name(base_model):
    """The last layer of `base_model` with trainable weights."""
    layers = [
        layer
        for layer in base_model._flatten_layers(include_self=False)
        if layer.trainable_weights
        and not layer._flatten_layers(include_self=False)
    ]
    if not layers:
        raise ValueError(
            f"`base_model` {base_model.name!r} has no layer with trainable "
            "weights to adapt."
        )
    return layers[-1].name
