"""Task families for meta-RL: distributions of tasks whose dynamics run as
TensorFlow ops, so that rollouts run inside the training graph.

A family samples task parameters (a goal, a target velocity, ...) as a
`[tasks, task_size]` tensor, and steps a batch of environments, each with
its own task, as tensors: `reset(tasks, seeds) -> observations` and
`step(tasks, observations, actions) -> (observations, rewards,
terminated)` (plus the values of its `info_keys`, if it has any).
Episodes last `horizon` steps unless they terminate first. The families
here run as TensorFlow ops; `tfmaml.rl.simulators` runs simulators
(MuJoCo, Meta-World) in worker processes behind the same protocol.
`task_batches` is the dataset `MetaRL.fit` takes: meta-batches of tasks and
rollout seeds, drawn by batch index like every tfmaml stream.
"""

from typing import Protocol

import keras
import tensorflow as tf

from tfmaml.checks import check_int
from tfmaml.checks import check_optional_int
from tfmaml.data.streams import batch_seeds
from tfmaml.data.streams import indexed_stream

TASKS = "tasks"
SEEDS = "seeds"


class TaskFamily(Protocol):
    """The protocol of a task family whose environments are TensorFlow ops.

    Attributes:
        observation_size: Length of an observation vector.
        action_size: Length of an action vector (continuous actions).
        task_size: Length of a task's parameter vector.
        horizon: Steps per episode (unless it terminates).
    """

    observation_size: int
    action_size: int
    task_size: int
    horizon: int

    def sample_tasks(self, count: int, seed: tf.Tensor) -> tf.Tensor:
        """`[count, task_size]` task parameters from a stateless seed."""

    def reset(self, tasks: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
        """The first observations `[N, observation_size]` of N
        environments with tasks `[N, task_size]` and int64 reset seeds
        `[N]` (a family without random starts ignores them)."""

    def step(
        self, tasks: tf.Tensor, observations: tf.Tensor, actions: tf.Tensor
    ) -> tuple[tf.Tensor, ...]:
        """Next observations, rewards `[N]` and a boolean `terminated [N]`
        (the step reached a terminal state; later steps do not count); a
        family with `info_keys` (an optional attribute, e.g.
        `("success",)`) returns their values `[N, len(info_keys)]` fourth."""


@keras.saving.register_keras_serializable(package="tfmaml")
class Navigation2D:
    """2D navigation (Finn et al. 2017, section 5.3).

    A point agent starts at the origin; a task is a goal drawn uniformly in
    `[-goal_range, goal_range]^2`. Observations are the position. The
    policy's actions are clipped to [-1, 1] and scaled to velocities in
    `[-max_speed, max_speed]` per coordinate (the rllab `normalize` wrapper
    of the original code). The reward is minus the distance to the goal
    after the move; an episode ends after `horizon` steps, or when both
    coordinates are within `goal_tolerance` of the goal.

    Args:
        horizon: Steps per episode. Defaults to `100`.
        goal_range: Half-width of the square goals are drawn from.
            Defaults to `0.5`.
        max_speed: Largest velocity per coordinate. Defaults to `0.1`.
        goal_tolerance: Distance per coordinate that ends an episode.
            Defaults to `0.01`.

    Raises:
        ValueError: If `horizon` is not a positive int or a length is not
            positive.
    """

    observation_size = 2
    action_size = 2
    task_size = 2

    def __init__(
        self,
        *,
        horizon: int = 100,
        goal_range: float = 0.5,
        max_speed: float = 0.1,
        goal_tolerance: float = 0.01,
    ):
        self.horizon = check_int("horizon", horizon, minimum=1)
        for name, value in (
            ("goal_range", goal_range),
            ("max_speed", max_speed),
            ("goal_tolerance", goal_tolerance),
        ):
            if not value > 0:
                raise ValueError(
                    f"`{name}` must be > 0. Received: {name}={value!r}"
                )
        self.goal_range = float(goal_range)
        self.max_speed = float(max_speed)
        self.goal_tolerance = float(goal_tolerance)

    def get_config(self) -> dict:
        """The constructor arguments (a family is saved with the model)."""
        return {
            "horizon": self.horizon,
            "goal_range": self.goal_range,
            "max_speed": self.max_speed,
            "goal_tolerance": self.goal_tolerance,
        }

    @classmethod
    def from_config(cls, config: dict) -> "Navigation2D":
        """Rebuilds a family from `get_config`."""
        return cls(**config)

    def sample_tasks(self, count: int, seed: tf.Tensor) -> tf.Tensor:
        """Goals uniform in the square, `[count, 2]`."""
        return tf.random.stateless_uniform(
            [count, 2], seed, -self.goal_range, self.goal_range
        )

    def reset(self, tasks: tf.Tensor, seeds: tf.Tensor = None) -> tf.Tensor:
        """Every agent at the origin (`seeds` unused: no random start)."""
        return tf.zeros_like(tasks)

    def step(
        self, tasks: tf.Tensor, observations: tf.Tensor, actions: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Moves by the clipped, scaled action; rewards minus the distance."""
        velocity = self.max_speed * tf.clip_by_value(actions, -1.0, 1.0)
        position = observations + tf.cast(velocity, observations.dtype)
        offset = position - tasks
        reward = -tf.norm(offset, axis=-1)
        terminated = tf.reduce_all(tf.abs(offset) < self.goal_tolerance, -1)
        return position, reward, terminated


def task_batches(
    family: TaskFamily,
    meta_batch_size: int,
    *,
    seed: int = 0,
    num_batches: int | None = None,
    start: int = 0,
    held_out: bool = False,
) -> tf.data.Dataset:
    """The dataset `MetaRL.fit` takes: meta-batches of fresh tasks.

    Element `i` is `{"tasks": [meta_batch_size, task_size], "seeds":
    [meta_batch_size, 2]}` (each task's seed of its rollout noise), both
    drawn from `(seed, i)`: the stream is reproducible, a run resumed at
    step `i` sees the tasks and noise an uninterrupted one would, and a
    task's episodes do not depend on which replica samples them.

    Args:
        family: The task family.
        meta_batch_size: Tasks per meta-batch.
        seed: Seeds the stream. Defaults to `0`.
        num_batches: Number of elements; `None` (the default) repeats
            forever.
        start: The index of the first element. Defaults to `0`.
        held_out: Whether to draw the family's held-out (test) tasks,
            for a family that has them (`sample_held_out_tasks`, e.g.
            Meta-World's); other families' test tasks are fresh draws
            from another seed. Defaults to `False`.

    Returns:
        A `tf.data.Dataset`.

    Raises:
        ValueError: If a count is not a positive int.
    """
    check_int("meta_batch_size", meta_batch_size, minimum=1)
    check_optional_int("num_batches", num_batches, minimum=1)
    check_int("start", start, minimum=0)
    sample = family.sample_tasks
    if held_out:
        sample = getattr(family, "sample_held_out_tasks", sample)

    def make_batch(index):
        seeds = batch_seeds(seed, index, 2)
        tasks = sample(meta_batch_size, seeds[0])
        task_seeds = tf.random.experimental.stateless_split(
            seeds[1], meta_batch_size
        )
        return {TASKS: tasks, SEEDS: task_seeds}

    return indexed_stream(make_batch, num_batches, start)
