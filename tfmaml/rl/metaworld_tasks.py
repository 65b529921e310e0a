"""Meta-World's meta-learning benchmarks (Yu et al. 2019) as task families.

`MetaWorld("ML1", env_name="push-v3")`: one manipulation environment,
50 training goal positions and 50 held-out test positions;
`MetaWorld("ML10")`: 10 training environments and 5 held-out test
environments, 50 goal positions each. The goal is not in the observation
(Meta-World's meta-learning setting): the policy must find it from
rewards. Observations are 39 numbers, actions 4 in [-1, 1].

A task is `[split, index]`: split 0 draws from the benchmark's training
tasks (`sample_tasks`), 1 from its test tasks (`sample_held_out_tasks`),
so the same family serves meta-training and meta-testing. Each step
records Meta-World's `success` flag; an episode succeeds if the flag was
set at any of its steps (Meta-World's definition), which
`tfmaml.rl.evaluate_returns` reports as the success rate.

Needs the `rl` extra (`pip install "tfmaml[rl]"`: metaworld 3.1.1, MuJoCo
3.3.0); the benchmark's tasks are generated from its `seed` in each
worker process, nothing is downloaded.
"""

import keras
import tensorflow as tf

from tfmaml.rl.simulators import SimulatorFamily

BENCHMARKS = ("ML1", "ML10")
MAX_PATH_LENGTH = 500  # Meta-World truncates its episodes there.


def _metaworld():
    try:
        import metaworld
    except ImportError as error:
        raise ImportError(
            "Meta-World families need the `metaworld` package: "
            'pip install "tfmaml[rl]"'
        ) from error
    return metaworld


class MetaWorldFactory:
    """Builds the benchmark (once per worker) and its environments."""

    info_keys = ("success",)

    def __init__(self, benchmark, env_name, seed):
        self.benchmark_name = benchmark
        self.env_name = env_name
        self.seed = seed
        self._benchmark = None

    @property
    def benchmark(self):
        if self._benchmark is None:
            metaworld = _metaworld()
            if self.benchmark_name == "ML1":
                self._benchmark = metaworld.ML1(self.env_name, seed=self.seed)
            else:
                self._benchmark = metaworld.ML10(seed=self.seed)
        return self._benchmark

    def _task(self, task):
        split, index = int(task[0]), int(task[1])
        tasks = (
            self.benchmark.train_tasks
            if split == 0
            else self.benchmark.test_tasks
        )
        return tasks[index]

    def kind(self, task):
        return self._task(task).env_name

    def make(self, kind):
        classes = {
            **self.benchmark.train_classes,
            **self.benchmark.test_classes,
        }
        return classes[kind]()

    def set_task(self, env, task):
        env.set_task(self._task(task))


@keras.saving.register_keras_serializable(package="tfmaml")
class MetaWorld(SimulatorFamily):
    """A Meta-World ML1 or ML10 benchmark as a task family.

    Args:
        benchmark: `"ML1"` or `"ML10"`.
        env_name: ML1's environment (e.g. `"reach-v3"`, `"push-v3"`,
            `"pick-place-v3"`); not with ML10.
        horizon: Steps per episode, at most Meta-World's 500. Defaults to
            `150` (the Meta-World paper's first release used 150).
        seed: Seeds the benchmark's goal positions. Defaults to `0`.
        num_workers: Worker processes; defaults to one per CPU core.

    Raises:
        ValueError: Naming an unknown benchmark or environment, or a
            horizon over 500.
        ImportError: If `metaworld` is not installed.
    """

    observation_size = 39
    action_size = 4
    task_size = 2
    info_keys = ("success",)

    def __init__(
        self,
        benchmark: str = "ML1",
        *,
        env_name: str | None = "reach-v3",
        horizon: int = 150,
        seed: int = 0,
        num_workers: int | None = None,
    ):
        super().__init__(horizon=horizon, num_workers=num_workers)
        if benchmark not in BENCHMARKS:
            raise ValueError(
                f"`benchmark` must be one of {list(BENCHMARKS)}. "
                f"Received: benchmark={benchmark!r}"
            )
        if horizon > MAX_PATH_LENGTH:
            raise ValueError(
                f"`horizon` must be at most {MAX_PATH_LENGTH}, where "
                f"Meta-World ends its episodes. Received: horizon={horizon}"
            )
        metaworld = _metaworld()
        names = metaworld.env_dict
        if benchmark == "ML1":
            if env_name not in names.ALL_V3_ENVIRONMENTS:
                raise ValueError(
                    f"`env_name` must be a Meta-World V3 environment, e.g. "
                    f"'reach-v3', 'push-v3', 'pick-place-v3'. Received: "
                    f"env_name={env_name!r}"
                )
            counts = (1, 1)
        else:
            env_name = None
            counts = (len(names.ML10_V3["train"]), len(names.ML10_V3["test"]))
        self.benchmark = benchmark
        self.env_name = env_name
        self.seed = int(seed)
        # Meta-World draws 50 goal positions per environment and split.
        self.num_tasks = tuple(c * metaworld._N_GOALS for c in counts)

    def env_factory(self):
        return MetaWorldFactory(self.benchmark, self.env_name, self.seed)

    def sample_tasks(self, count: int, seed: tf.Tensor) -> tf.Tensor:
        """`[count, 2]` training tasks: `[0, index]`."""
        return self._sample(0, count, seed)

    def sample_held_out_tasks(self, count: int, seed: tf.Tensor) -> tf.Tensor:
        """`[count, 2]` test tasks, never trained on: `[1, index]`."""
        return self._sample(1, count, seed)

    def _sample(self, split, count, seed):
        index = tf.random.stateless_uniform(
            [count], seed, maxval=self.num_tasks[split], dtype=tf.int32
        )
        index = tf.cast(index, tf.float32)
        return tf.stack([tf.fill([count], float(split)), index], axis=1)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "benchmark": self.benchmark,
            "env_name": self.env_name,
            "seed": self.seed,
        }
