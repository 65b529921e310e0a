"""The meta-RL task families a config can name, their task batches, and
the model and test-time rule a config describes (`tfmaml.experiment`
dispatches here for a config whose `task` is in `tfmaml.rl.FAMILIES`).
"""

import keras
import ml_collections
import tensorflow as tf

from tfmaml import inner_loop
from tfmaml import rl
from tfmaml.data import Splits
from tfmaml.data.streams import SPLIT_SEED_OFFSETS


def build_family(config: ml_collections.ConfigDict) -> rl.TaskFamily:
    """The config's meta-RL task family.

    Args:
        config: A meta-RL config (`config.task` names the family).
    """
    return rl.FAMILIES[config.task](
        horizon=config.horizon, **dict(config.get("family_args", {}))
    )


def test_time_inner_optimizer(
    config: ml_collections.ConfigDict,
) -> inner_loop.InnerOptimizer:
    """The rule a meta-RL config adapts with at test time: `inner_lr`, then
    `later_inner_lr` for each later step.

    Args:
        config: A meta-RL config.
    """
    return inner_loop.SGD((config.inner_lr, config.later_inner_lr))


def evaluate_rl_returns(
    model: keras.Model,
    config: ml_collections.ConfigDict,
    task_batch: tf.Tensor,
    *,
    inner_optimizer: inner_loop.InnerOptimizer | None = None,
) -> list:
    """A meta-RL model's returns after `config.eval_step_counts` inner
    steps on `task_batch`, with the config's episodes, seed and test-time
    inner optimiser (see `tfmaml.rl.evaluate_returns`).

    Args:
        model: A `tfmaml.rl.MetaRL`.
        config: Its config.
        task_batch: `[tasks, task_size]` test tasks.
        inner_optimizer: Another test-time rule. Defaults to the config's
            (`test_time_inner_optimizer`).
    """
    return rl.evaluate_returns(
        model,
        task_batch,
        step_counts=tuple(config.eval_step_counts),
        num_trajectories=config.eval_num_trajectories,
        seed=config.seed,
        inner_optimizer=inner_optimizer or test_time_inner_optimizer(config),
    )


def rl_splits(
    config: ml_collections.ConfigDict, train_start: int = 0
) -> Splits:
    """The train, validation and test task batches of a meta-RL config.

    Args:
        config: A meta-RL config.
        train_start: The index of the first training meta-batch.
    """
    family = build_family(config)

    def stream(split, meta_batch_size, **kwargs):
        return rl.task_batches(
            family,
            meta_batch_size,
            seed=config.seed + SPLIT_SEED_OFFSETS[split],
            **kwargs,
        )

    return Splits(
        train=stream("train", config.meta_batch_size, start=train_start),
        validation=stream(
            "validation",
            config.meta_batch_size,
            num_batches=config.validation_batches,
        ),
        # A family with held-out tasks (Meta-World's) is tested on them.
        test=stream("test", config.eval_tasks, num_batches=1, held_out=True),
    )


def rl_model(config: ml_collections.ConfigDict) -> keras.Model:
    """A meta-RL config's `tfmaml.rl.MetaRL`, compiled.

    Args:
        config: A meta-RL config.
    """
    family = build_family(config)
    policy = rl.gaussian_mlp(
        family.observation_size,
        family.action_size,
        hidden_units=tuple(config.hidden_units),
        activation=config.activation,
    )
    model = rl.MetaRL(
        policy,
        family,
        inner_optimizer=test_time_inner_optimizer(config),
        inner_steps=config.inner_steps,
        first_order=config.first_order,
        num_trajectories=config.num_trajectories,
        discount=config.discount,
        gae_lambda=config.gae_lambda,
        outer=config.outer,
        max_kl=config.max_kl,
        sampling_correction=config.sampling_correction,
    )
    model.compile(
        # TRPO's own default, SGD(1.0), applies its step.
        optimizer=(
            None
            if config.outer == "trpo"
            else keras.optimizers.Adam(config.learning_rate)
        ),
        steps_per_execution=config.steps_per_execution,
        jit_compile=config.jit_compile,
    )
    return model
