"""Task families whose environments are simulators (MuJoCo, Meta-World).

`SimulatorFamily` turns a Gymnasium environment plus a task distribution
into a `tfmaml.rl.TaskFamily`: `reset` and `step` are `tf.numpy_function`
calls into an `EnvPool` of worker processes, so `MetaRL.fit` trains on it
unchanged, and the rollout loop stays in the training step's graph.

On-policy by construction: the rollout that samples a meta-step's
episodes runs inside that step's `train_step`, and its actions are
computed in the graph from the weights that step reads and differentiates;
the workers receive only actions, never weights, so they cannot act with
stale ones, and `tf.data` prefetches only task parameters and seeds.
Every sampled episode also records the log-probability of its actions at
sampling time, and `MetaRL` checks it against the weights it trains
(`tfmaml.rl.episodes`); the pool checks every worker's answer against its
request (`tfmaml.rl.env_pool`).

`GymnasiumFamily` is the generic adapter: any registered Gymnasium
environment with a `set_task(task)` method and a uniform (box) or finite
task distribution. `tfmaml.rl.locomotion` and `tfmaml.rl.metaworld_tasks`
build the paper's half-cheetah and Meta-World's families on it.
"""

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfmaml import runtime
from tfmaml.checks import check_int
from tfmaml.checks import check_optional_int


class SimulatorFamily:
    """A task family stepped by simulators in worker processes.

    Subclasses set `observation_size`, `action_size`, `task_size`, give
    `env_factory()` (what the workers build: `tfmaml.rl.env_pool.
    EnvFactory`) and `sample_tasks`; they may set `info_keys` and
    `sample_held_out_tasks` (tasks never trained on, e.g. Meta-World's
    test tasks).

    Args:
        horizon: Steps per episode.
        num_workers: Worker processes; defaults to one per CPU core the
            process may use (`tfmaml.runtime.usable_cores`).

    Raises:
        ValueError: If a count is not a positive int.
    """

    observation_size: int
    action_size: int
    task_size: int
    info_keys: tuple[str, ...] = ()

    def __init__(self, *, horizon: int, num_workers: int | None = None):
        self.horizon = check_int("horizon", horizon, minimum=1)
        check_optional_int("num_workers", num_workers, minimum=1)
        self.num_workers = num_workers
        self._pool = None

    def env_factory(self) -> Any:
        """What the worker processes build (an `EnvFactory`)."""
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"horizon": self.horizon, "num_workers": self.num_workers}

    @classmethod
    def from_config(cls, config: dict) -> "SimulatorFamily":
        return cls(**config)

    @property
    def pool(self):
        """The `EnvPool`, started on first use."""
        if self._pool is None:
            from tfmaml.rl.env_pool import EnvPool

            self._pool = EnvPool(
                self.env_factory(),
                self.num_workers or runtime.usable_cores(),
                self.observation_size,
                self.action_size,
                self.horizon,
            )
        return self._pool

    def close(self) -> None:
        """Stops the worker processes (they also stop at exit)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def reset(self, tasks: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
        """Starts one episode per row in the workers; first observations."""
        _refuse_replicas(self)

        def reset(tasks, seeds):
            return self.pool.reset(tasks, seeds).astype(np.float32)

        observations = tf.numpy_function(
            reset, [tasks, seeds], tf.float32, name="simulator_reset"
        )
        return tf.ensure_shape(observations, [None, self.observation_size])

    def step(
        self, tasks: tf.Tensor, observations: tf.Tensor, actions: tf.Tensor
    ) -> tuple[tf.Tensor, ...]:
        """Steps every episode in the workers (`tasks` and `observations`
        are the workers' own: unused here)."""
        del tasks, observations

        def step(actions):
            observations, rewards, terminated, infos = self.pool.step(actions)
            return (
                observations.astype(np.float32),
                rewards.astype(np.float32),
                terminated > 0.0,
                infos.astype(np.float32),
            )

        observations, rewards, terminated, infos = tf.numpy_function(
            step,
            [actions],
            (tf.float32, tf.float32, tf.bool, tf.float32),
            name="simulator_step",
        )
        observations = tf.ensure_shape(
            observations, [None, self.observation_size]
        )
        rewards = tf.ensure_shape(rewards, [None])
        terminated = tf.ensure_shape(terminated, [None])
        if not self.info_keys:
            return observations, rewards, terminated
        infos = tf.ensure_shape(infos, [None, len(self.info_keys)])
        return observations, rewards, terminated, infos


def _refuse_replicas(family):
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas > 1:
        raise ValueError(
            f"{type(family).__name__} steps one pool of simulator processes, "
            f"which {replicas} replicas cannot share: train it without a "
            "multi-replica `tf.distribute` strategy (its workers already "
            "use every core)."
        )


class GymnasiumTaskFactory:
    """Builds a registered Gymnasium environment in a worker and sets its
    task with its `set_task(task)` method (found through wrappers)."""

    def __init__(self, env_id, env_kwargs, info_keys):
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs)
        self.info_keys = tuple(info_keys)

    def kind(self, task):
        return None

    def make(self, kind):
        import gymnasium as gym

        return gym.make(self.env_id, **self.env_kwargs)

    def set_task(self, env, task):
        env.get_wrapper_attr("set_task")(np.asarray(task))


@keras.saving.register_keras_serializable(package="tfmaml")
class GymnasiumFamily(SimulatorFamily):
    """Any Gymnasium environment with a `set_task(task)` method, as a task
    family: the adapter for your own simulated tasks.

    Tasks are vectors of `task_size` numbers, drawn uniformly from the box
    `[task_low, task_high]` or, with `task_choices`, uniformly from a
    finite list. Register the environment with `gymnasium.register` in a
    module imported before training (the workers are forked from the
    training process and see its registry), and register the family
    (this class is) for `.keras` saving.

    Args:
        env_id: The Gymnasium id (`gymnasium.make(env_id, **env_kwargs)`).
        observation_size: Length of its (flat) observations.
        action_size: Length of its (box) actions.
        horizon: Steps per episode (at most the environment's own limit).
        task_low: Lower corner of the task box (a sequence).
        task_high: Upper corner of the task box.
        task_choices: Instead of a box: the list of possible tasks.
        env_kwargs: Arguments of `gymnasium.make`.
        info_keys: `info` entries to record at every step.
        num_workers: Worker processes; defaults to one per CPU core.

    Raises:
        ValueError: Naming the argument whose shape or value is wrong.
    """

    def __init__(
        self,
        env_id: str,
        observation_size: int,
        action_size: int,
        *,
        horizon: int,
        task_low: Sequence[float] | None = None,
        task_high: Sequence[float] | None = None,
        task_choices: Sequence[Sequence[float]] | None = None,
        env_kwargs: dict | None = None,
        info_keys: Sequence[str] = (),
        num_workers: int | None = None,
    ):
        super().__init__(horizon=horizon, num_workers=num_workers)
        self.env_id = env_id
        self.observation_size = check_int(
            "observation_size", observation_size, minimum=1
        )
        self.action_size = check_int("action_size", action_size, minimum=1)
        if (task_choices is None) == (task_low is None or task_high is None):
            raise ValueError(
                "Give either `task_low` and `task_high` (a box of tasks) or "
                f"`task_choices`. Received: task_low={task_low!r}, "
                f"task_high={task_high!r}, task_choices={task_choices!r}"
            )
        if task_choices is not None:
            choices = np.asarray(task_choices, np.float32)
            if choices.ndim != 2 or not len(choices):
                raise ValueError(
                    "`task_choices` must be a non-empty list of task vectors. "
                    f"Received an array of shape {choices.shape}"
                )
            self.task_size = choices.shape[1]
            self.task_choices = choices.tolist()
            self.task_low = self.task_high = None
        else:
            low = np.asarray(task_low, np.float32).reshape(-1)
            high = np.asarray(task_high, np.float32).reshape(-1)
            if low.shape != high.shape or not np.all(low <= high):
                raise ValueError(
                    "`task_low` and `task_high` must have one shape and "
                    f"task_low <= task_high. Received: task_low={task_low!r},"
                    f" task_high={task_high!r}"
                )
            self.task_size = len(low)
            self.task_low, self.task_high = low.tolist(), high.tolist()
            self.task_choices = None
        self.env_kwargs = dict(env_kwargs or {})
        self.info_keys = tuple(info_keys)

    def env_factory(self):
        return GymnasiumTaskFactory(
            self.env_id, self.env_kwargs, self.info_keys
        )

    def sample_tasks(self, count: int, seed: tf.Tensor) -> tf.Tensor:
        """`[count, task_size]` tasks from the box or the choices."""
        if self.task_choices is not None:
            choices = tf.constant(self.task_choices, tf.float32)
            index = tf.random.stateless_uniform(
                [count], seed, maxval=len(self.task_choices), dtype=tf.int32
            )
            return tf.gather(choices, index)
        return tf.random.stateless_uniform(
            [count, self.task_size],
            seed,
            tf.constant(self.task_low),
            tf.constant(self.task_high),
        )

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "env_id": self.env_id,
            "observation_size": self.observation_size,
            "action_size": self.action_size,
            "task_low": self.task_low,
            "task_high": self.task_high,
            "task_choices": self.task_choices,
            "env_kwargs": self.env_kwargs,
            "info_keys": list(self.info_keys),
        }
