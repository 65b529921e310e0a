"""Simulators in worker processes, stepped in lockstep for a meta-batch.

A meta-batch of a simulated task family is hundreds of environments (tasks
x episodes), each with its own task. Gymnasium's `AsyncVectorEnv` runs one
environment per process; `EnvGroup` is one Gymnasium environment that
holds a group of them, so `EnvPool` runs `AsyncVectorEnv` over one group
per worker process: every `step` sends each worker its group's actions and
waits for all, while the workers step their groups side by side.

This module imports no TensorFlow: the workers are forked from the
training process (`fork` context) and run only Gymnasium and the
simulator; the TensorFlow side is `tfmaml.rl.simulators`.
"""

import atexit
import threading
from collections.abc import Hashable
from typing import Any
from typing import Protocol

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv


class EnvFactory(Protocol):
    """What a simulated task family tells its worker processes: how to
    make an environment that can take a task, and how to set the task.

    It is pickled into every worker, so it holds only plain data (names,
    numbers) and builds whatever it needs in the worker.

    Attributes:
        info_keys: Names of `info` entries recorded at every step (e.g.
            Meta-World's `"success"`), as floats.
    """

    info_keys: tuple[str, ...]

    def kind(self, task: np.ndarray) -> Hashable:
        """Which environments can take `task` (one kind: any)."""

    def make(self, kind: Hashable) -> gym.Env:
        """A new environment of that kind."""

    def set_task(self, env: gym.Env, task: np.ndarray) -> None:
        """Sets `env`'s task before it is reset."""


class EnvGroup(gym.Env):
    """Up to `capacity` environments with their own tasks, stepped together.

    `assignment` (set through `AsyncVectorEnv.set_attr`) is the group's
    `(tasks [n, task_size], seeds [n])` for the next `reset`, `n <=
    capacity`; rows past `n` are padding. An environment that terminated
    is not stepped again: it repeats its last observation with reward 0.
    Each answer carries the request's sequence number and the actions
    that were applied, which `EnvPool` checks.

    Environments are made on demand and kept per kind, so a group whose
    tasks change between episodes reuses them.

    Raises:
        ValueError: If an environment truncates its episode before
            `horizon` (its own time limit is shorter than the family's).
    """

    def __init__(
        self,
        factory: EnvFactory,
        capacity: int,
        observation_size: int,
        action_size: int,
        horizon: int,
    ):
        self.factory = factory
        self.capacity = capacity
        self.horizon = horizon
        unbounded = dict(low=-np.inf, high=np.inf, dtype=np.float64)
        sequence = gym.spaces.Box(0, np.iinfo(np.int64).max, (), np.int64)
        infos = len(factory.info_keys)
        self.observation_space = gym.spaces.Dict(
            {
                "observations": gym.spaces.Box(
                    shape=(capacity, observation_size), **unbounded
                ),
                "rewards": gym.spaces.Box(shape=(capacity,), **unbounded),
                "terminated": gym.spaces.Box(shape=(capacity,), **unbounded),
                "infos": gym.spaces.Box(shape=(capacity, infos), **unbounded),
                "applied": gym.spaces.Box(
                    shape=(capacity, action_size), **unbounded
                ),
                "sequence": sequence,
            }
        )
        self.action_space = gym.spaces.Dict(
            {
                "actions": gym.spaces.Box(
                    shape=(capacity, action_size), **unbounded
                ),
                "sequence": sequence,
            }
        )
        self.assignment = (np.zeros((0, 1)), np.zeros((0,), np.int64))
        self._free: dict[Hashable, list[gym.Env]] = {}
        self._active: list[tuple[Hashable, gym.Env]] = []
        self._answer = {
            key: np.zeros(space.shape, space.dtype)
            for key, space in self.observation_space.items()
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        tasks, seeds = self.assignment
        for kind, env in self._active:  # Back to the free lists.
            self._free.setdefault(kind, []).append(env)
        self._active = []
        answer = {key: np.zeros_like(v) for key, v in self._answer.items()}
        for i, (task, env_seed) in enumerate(zip(tasks, seeds, strict=True)):
            kind = self.factory.kind(task)
            free = self._free.get(kind)
            env = free.pop() if free else self.factory.make(kind)
            self.factory.set_task(env, task)
            observation, _ = env.reset(seed=int(env_seed))
            answer["observations"][i] = observation
            self._active.append((kind, env))
        self._steps = 0
        self._answer = answer
        return answer, {}

    def step(self, action):
        answer = self._answer
        actions = action["actions"]
        answer["sequence"] = np.asarray(action["sequence"], np.int64)
        answer["applied"][:] = 0.0
        answer["rewards"][:] = 0.0
        self._steps += 1
        for i, (_, env) in enumerate(self._active):
            if answer["terminated"][i]:
                continue
            observation, reward, terminated, truncated, info = env.step(
                actions[i]
            )
            if truncated and not terminated and self._steps < self.horizon:
                raise ValueError(
                    f"{type(env.unwrapped).__name__} truncated its episode "
                    f"after {self._steps} steps, before the family's horizon "
                    f"of {self.horizon}: lower `horizon`."
                )
            answer["observations"][i] = observation
            answer["rewards"][i] = reward
            answer["terminated"][i] = float(terminated)
            answer["applied"][i] = actions[i]
            for j, key in enumerate(self.factory.info_keys):
                answer["infos"][i, j] = float(info.get(key, 0.0))
        return answer, 0.0, False, False, {}

    def close(self):
        for _, env in self._active:
            env.close()
        for free in self._free.values():
            for env in free:
                env.close()


class EnvPool:
    """Runs a task family's environments in `num_workers` processes.

    `reset(tasks, seeds)` starts one episode per row (each with its task
    and reset seed) and returns the first observations; `step(actions)`
    steps every environment and returns observations, rewards, terminated
    flags and info values, all in the rows' order. The workers hold no
    policy: they apply the actions they are sent, and every answer is
    checked against the request it answers (sequence number and applied
    actions), so an answer from an earlier request can never pass as this
    one's.

    Args:
        factory: Makes the environments (see `EnvFactory`).
        num_workers: Worker processes.
        observation_size: Length of an observation.
        action_size: Length of an action.
        horizon: Steps per episode.
    """

    def __init__(
        self,
        factory: EnvFactory,
        num_workers: int,
        observation_size: int,
        action_size: int,
        horizon: int,
    ):
        self.factory = factory
        self.num_workers = num_workers
        self.observation_size = observation_size
        self.action_size = action_size
        self.horizon = horizon
        self._vector = None
        self._capacity = 0
        self._counts = [0] * num_workers
        self._done = np.zeros((0,), bool)
        self._sequence = 0
        self._lock = threading.Lock()
        atexit.register(self.close)

    def reset(self, tasks: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """First observations `[n, obs]` of n episodes with `tasks [n,
        task_size]` and integer reset `seeds [n]`."""
        with self._lock:
            n = len(tasks)
            base, extra = divmod(n, self.num_workers)
            counts = [base + (w < extra) for w in range(self.num_workers)]
            if max(counts) > self._capacity:
                self._start(max(counts))
            bounds = np.cumsum([0, *counts])
            self._vector.set_attr(
                "assignment",
                [
                    (
                        tasks[bounds[w] : bounds[w + 1]],
                        seeds[bounds[w] : bounds[w + 1]],
                    )
                    for w in range(self.num_workers)
                ],
            )
            self._counts = counts
            self._done = np.zeros((n,), bool)
            answer, _ = self._vector.reset()
            return self._rows(answer["observations"])

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Observations `[n, obs]`, rewards `[n]`, terminated `[n]` (0/1)
        and infos `[n, len(info_keys)]` after applying `actions [n, act]`.

        Raises:
            RuntimeError: If a worker's answer is not this request's.
        """
        with self._lock:
            self._sequence += 1
            padded = np.zeros(
                (self.num_workers, self._capacity, self.action_size)
            )
            bounds = np.cumsum([0, *self._counts])
            for w, count in enumerate(self._counts):
                padded[w, :count] = actions[bounds[w] : bounds[w + 1]]
            sequence = np.full((self.num_workers,), self._sequence, np.int64)
            answer, _, _, _, _ = self._vector.step(
                {"actions": padded, "sequence": sequence}
            )
            applied = self._rows(answer["applied"])
            stale = answer["sequence"] != self._sequence
            live = ~self._done  # Those that were stepped.
            if stale.any() or not np.array_equal(
                applied[live], np.asarray(actions, np.float64)[live]
            ):
                raise RuntimeError(
                    f"Worker(s) {np.flatnonzero(stale).tolist()} answered "
                    f"step request {answer['sequence'].tolist()} to request "
                    f"{self._sequence}, or applied other actions than were "
                    "sent: these samples would not come from the policy "
                    "that chose the actions."
                )
            terminated = self._rows(answer["terminated"])
            self._done = terminated > 0.0
            return (
                self._rows(answer["observations"]),
                self._rows(answer["rewards"]),
                terminated,
                self._rows(answer["infos"]),
            )

    def close(self) -> None:
        """Stops the worker processes."""
        if self._vector is not None:
            self._vector.close()
            self._vector = None
            self._capacity = 0

    def _start(self, capacity):
        self.close()
        factory, sizes = (
            self.factory,
            (
                self.observation_size,
                self.action_size,
                self.horizon,
            ),
        )
        self._vector = AsyncVectorEnv(
            [
                lambda: EnvGroup(factory, capacity, *sizes)
                for _ in range(self.num_workers)
            ],
            # The workers need only what the parent has already imported;
            # `spawn` would re-import TensorFlow in each of them.
            context="fork",
            autoreset_mode=gym.vector.AutoresetMode.DISABLED,
        )
        self._capacity = capacity

    def _rows(self, batched: Any) -> np.ndarray:
        """The active rows of a `[workers, capacity, ...]` answer."""
        return np.concatenate(
            [batched[w, :count] for w, count in enumerate(self._counts)]
        )
