"""Gaussian policies as Keras models, and the distribution maths on them.

A policy network maps observations `[N, obs]` to `[N, 2 * actions]`: the
mean action and the log standard deviation of a diagonal Gaussian. It is a
plain Keras model, so tfmaml's inner loop adapts it in a
`keras.StatelessScope` like any base network; `split_outputs`,
`log_prob`, `kl` and `sample` read its outputs.
"""

import math
from collections.abc import Sequence

import keras
import tensorflow as tf

from tfmaml.checks import check_int


@keras.saving.register_keras_serializable(package="tfmaml")
class StateIndependentLogStd(keras.layers.Layer):
    """Appends a learned log standard deviation, the same for every state,
    to the mean actions: `[N, actions] -> [N, 2 * actions]`.

    Args:
        initial_log_std: The starting value (0: standard deviation 1, as
            rllab's Gaussian MLP policy). Defaults to `0.0`.
        **kwargs: Base layer arguments.
    """

    def __init__(self, initial_log_std: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_log_std = float(initial_log_std)

    def build(self, input_shape):
        self.log_std = self.add_weight(
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.initial_log_std),
            name="log_std",
        )

    def call(self, mean):
        log_std = keras.ops.broadcast_to(
            keras.ops.cast(self.log_std, mean.dtype), keras.ops.shape(mean)
        )
        return keras.ops.concatenate([mean, log_std], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2 * input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "initial_log_std": self.initial_log_std}


def gaussian_mlp(
    observation_size: int,
    action_size: int,
    *,
    hidden_units: Sequence[int] = (100, 100),
    activation: str = "relu",
    initial_log_std: float = 0.0,
    name: str = "gaussian_mlp_policy",
) -> keras.Model:
    """The Gaussian MLP policy of the MAML paper's RL experiments.

    Args:
        observation_size: Length of an observation.
        action_size: Length of an action.
        hidden_units: Hidden layer widths. Defaults to `(100, 100)`.
        activation: Hidden activation. Defaults to `"relu"`.
        initial_log_std: Starting log standard deviation. Defaults to `0`.
        name: The model name.

    Returns:
        A built `keras.Sequential` from observations to `[mean, log_std]`.

    Raises:
        ValueError: If a size is not a positive int.
    """
    check_int("observation_size", observation_size, minimum=1)
    check_int("action_size", action_size, minimum=1)
    layers = [keras.Input((observation_size,))]
    for i, units in enumerate(hidden_units):
        layers.append(
            keras.layers.Dense(units, activation=activation, name=f"hidden_{i}")
        )
    layers += [
        keras.layers.Dense(action_size, name="mean"),
        StateIndependentLogStd(initial_log_std, name="log_std"),
    ]
    return keras.Sequential(layers, name=name)


def split_outputs(outputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`[..., 2 * actions]` policy outputs -> `(mean, log_std)`.

    Args:
        outputs: Policy outputs `[..., 2 * actions]`.
    """
    mean, log_std = tf.split(outputs, 2, axis=-1)
    return mean, log_std


def log_prob(outputs: tf.Tensor, actions: tf.Tensor) -> tf.Tensor:
    """The log-density of `actions [..., actions]` under the policy's
    diagonal Gaussian, summed over action dimensions: `[...]`.

    Args:
        outputs: Policy outputs `[..., 2 * actions]`.
        actions: `[..., actions]`.
    """
    mean, log_std = split_outputs(outputs)
    z = (tf.cast(actions, mean.dtype) - mean) * tf.exp(-log_std)
    per_dim = -0.5 * tf.square(z) - log_std - 0.5 * math.log(2.0 * math.pi)
    return tf.reduce_sum(per_dim, axis=-1)


def kl(old_outputs: tf.Tensor, new_outputs: tf.Tensor) -> tf.Tensor:
    """`KL(old || new)` between diagonal Gaussians, summed over action
    dimensions: `[...]`.

    Args:
        old_outputs: The first policy's outputs.
        new_outputs: The second policy's outputs.
    """
    old_mean, old_log_std = split_outputs(old_outputs)
    new_mean, new_log_std = split_outputs(new_outputs)
    ratio = tf.exp(2.0 * (old_log_std - new_log_std))
    gap = tf.square(old_mean - new_mean) * tf.exp(-2.0 * new_log_std)
    per_dim = new_log_std - old_log_std + 0.5 * (ratio + gap - 1.0)
    return tf.reduce_sum(per_dim, axis=-1)


def sample(outputs: tf.Tensor, noise: tf.Tensor) -> tf.Tensor:
    """Actions `mean + std * noise` for standard normal `noise`.

    Args:
        outputs: Policy outputs `[..., 2 * actions]`.
        noise: Standard normal `[..., actions]`.
    """
    mean, log_std = split_outputs(outputs)
    return mean + tf.exp(log_std) * tf.cast(noise, mean.dtype)
