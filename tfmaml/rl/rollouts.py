"""Rollouts of a batch of environments inside the TensorFlow graph.

`rollout` runs `K` episodes of each of `B` tasks for the family's horizon in
one `tf.while_loop`: every step asks the policy for the action
distribution of all `B x K` agents at once and steps all environments
together. Each task's noise comes from stateless ops seeded by its own
seed, so a rollout is a pure function of the weights, tasks and seeds, and
a task's episodes are the same whatever else is in the batch.
"""

from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import tensorflow as tf

from tfmaml.checks import check_int
from tfmaml.rl import policies


class Trajectories(NamedTuple):
    """A batch of episodes, `[tasks, trajectories, time, ...]`.

    `masks` is 1 for the steps an episode took (up to and including the
    one that terminated it) and 0 after; rewards there are 0. `infos`
    holds the family's `info_keys` values at every step (`[..., 0]` for a
    family without any); `log_probs` the log-probability of each action
    under the policy that chose it, as computed when it was sampled (the
    on-policy check compares it with the weights being trained). Both are
    `None` for episodes that were not sampled here (e.g. served ones).
    """

    observations: tf.Tensor
    actions: tf.Tensor
    rewards: tf.Tensor
    masks: tf.Tensor
    infos: tf.Tensor | None = None
    log_probs: tf.Tensor | None = None

    def returns(self) -> tf.Tensor:
        """Undiscounted episode returns, `[tasks, trajectories]`."""
        return tf.reduce_sum(self.rewards * self.masks, axis=-1)


# `policy(observations [B, K, obs]) -> outputs [B, K, 2 * actions]`.
PolicyFn = Callable[[tf.Tensor], tf.Tensor]


def rollout(
    family,
    policy: PolicyFn,
    tasks: tf.Tensor,
    num_trajectories: int,
    seeds: tf.Tensor,
    *,
    deterministic: bool = False,
) -> Trajectories:
    """Samples `num_trajectories` episodes of every task with `policy`.

    Args:
        family: The task family (`tfmaml.rl.TaskFamily`).
        policy: Maps observations `[B, K, obs]` to Gaussian policy outputs
            `[B, K, 2 * actions]` (each task may use its own weights).
        tasks: `[B, task_size]`.
        num_trajectories: Episodes per task (K).
        seeds: Each task's stateless seed, `[B, 2]`.
        deterministic: Whether to take the mean actions (no noise).
            Defaults to `False`.

    Returns:
        `Trajectories` (constants: no gradient flows into the samples).
    """
    check_int("num_trajectories", num_trajectories, minimum=1)
    horizon = family.horizon
    tasks = tf.convert_to_tensor(tasks)
    num_tasks = tf.shape(tasks)[0]
    expanded = tf.repeat(tasks[:, None], num_trajectories, axis=1)
    flat_tasks = tf.reshape(expanded, [-1, family.task_size])
    # Each episode's reset seed, from a stream apart from the noise's.
    reset_seeds = tf.map_fn(
        lambda seed: tf.random.stateless_uniform(
            [num_trajectories],
            tf.random.experimental.stateless_fold_in(seed, 1),
            maxval=2**31 - 1,
            dtype=tf.int64,
        ),
        seeds,
        fn_output_signature=tf.TensorSpec([num_trajectories], tf.int64),
    )
    observations = family.reset(flat_tasks, tf.reshape(reset_seeds, [-1]))
    shape = [num_tasks, num_trajectories]
    dtype = observations.dtype
    info_size = len(getattr(family, "info_keys", ()))
    noise = tf.map_fn(
        lambda seed: tf.random.stateless_normal(
            [horizon, num_trajectories, family.action_size], seed, dtype=dtype
        ),
        seeds,
        fn_output_signature=tf.TensorSpec(
            [horizon, num_trajectories, family.action_size], dtype
        ),
    )  # [B, T, K, actions]

    def body(t, observations, alive, arrays):
        outputs = policy(tf.reshape(observations, [*shape, -1]))
        mean, _ = policies.split_outputs(outputs)
        if deterministic:
            actions = mean
        else:
            actions = policies.sample(outputs, noise[:, t])
        actions = tf.stop_gradient(actions)
        log_probs = tf.stop_gradient(policies.log_prob(outputs, actions))
        flat_actions = tf.reshape(actions, [-1, family.action_size])
        next_observations, rewards, terminated, *infos = family.step(
            flat_tasks, observations, flat_actions
        )
        infos = infos[0] if infos else tf.zeros([tf.shape(rewards)[0], 0])
        rewards = tf.debugging.assert_all_finite(
            rewards,
            f"{type(family).__name__}.step returned a NaN or infinite reward",
        )
        mask = tf.reshape(alive, shape)
        arrays = (
            arrays[0].write(t, tf.reshape(observations, [*shape, -1])),
            arrays[1].write(t, actions),
            arrays[2].write(t, tf.reshape(rewards, shape) * mask),
            arrays[3].write(t, mask),
            arrays[4].write(
                t,
                tf.reshape(tf.cast(infos, dtype), [*shape, info_size])
                * mask[..., None],
            ),
            arrays[5].write(t, log_probs),
        )
        alive = alive * (1.0 - tf.cast(terminated, alive.dtype))
        return t + 1, next_observations, alive, arrays

    k = num_trajectories
    arrays = tuple(
        tf.TensorArray(dtype, size=horizon, element_shape=shape)
        for shape in (
            [None, k, family.observation_size],
            [None, k, family.action_size],
            [None, k],
            [None, k],
            [None, k, info_size],
            [None, k],
        )
    )
    alive = tf.ones([num_tasks * num_trajectories], dtype)
    _, _, _, arrays = tf.while_loop(
        lambda t, *_: t < horizon,
        body,
        (tf.constant(0), observations, alive, arrays),
        parallel_iterations=1,
    )

    def time_third(array):
        stacked = array.stack()  # [T, B, K, ...]
        rank = stacked.shape.rank
        return tf.stop_gradient(
            tf.transpose(stacked, [1, 2, 0, *range(3, rank)])
        )

    return Trajectories(*(time_third(a) for a in arrays))


def success_rates(family: Any, episodes: Any) -> tf.Tensor:
    """Per task, the fraction of `episodes` that succeeded: the family's
    `success` flag set at some step (zeros for a family without it)."""
    keys = tuple(getattr(family, "info_keys", ()))
    if "success" not in keys:
        return tf.zeros(tf.shape(episodes.rewards)[:1], episodes.rewards.dtype)
    flags = episodes.infos[..., keys.index("success")] * episodes.masks
    succeeded = tf.cast(tf.reduce_max(flags, axis=-1) > 0.0, flags.dtype)
    return tf.reduce_mean(succeeded, axis=1)
