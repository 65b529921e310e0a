"""Fields every meta-RL config has (MAML-TRPO, Finn et al. 2017, 5.3).

`meta_rl_config(...)` returns them with the paper's defaults; each config
file (`navigation2d.py`, `cheetah_*.py`, `metaworld_*.py`) overrides what
its task needs and documents why.
"""

import ml_collections

from tfmaml.configs import common


def meta_rl_config(
    name: str, task: str, horizon: int, **overrides
) -> ml_collections.ConfigDict:
    """The common meta-RL fields, then `overrides` (each must exist).

    - `family_args`: the task family's own options (e.g. `num_workers`,
      Meta-World's `benchmark` and `env_name`).
    - `later_inner_lr`: the step size of inner steps after the first at
      test time (the first is `inner_lr`).

    Raises:
        KeyError: If an override names no field.
    """
    config = ml_collections.ConfigDict()
    config.name = name
    config.seed = 0

    # Tasks and episodes.
    config.task = task
    config.family_args = ml_collections.ConfigDict()
    config.horizon = horizon
    config.num_trajectories = 20
    config.meta_batch_size = 20
    config.discount = 0.99
    config.gae_lambda = 1.0

    # Policy: rllab's Gaussian MLP.
    config.hidden_units = (100, 100)
    config.activation = "relu"

    # Meta-learning.
    common.add_runtime_fields(config)
    config.inner_lr = 0.1
    config.later_inner_lr = 0.1
    config.inner_steps = 1
    config.first_order = False
    config.sampling_correction = False
    config.outer = "trpo"
    config.max_kl = 0.01
    config.learning_rate = 1e-3  # With outer="policy_gradient" (Adam).

    config.total_steps = 100
    config.steps_per_epoch = 10
    config.steps_per_execution = 1
    config.validation_batches = 1
    config.jit_compile = False
    config.backup_every = 10

    # Evaluation on fresh (or held-out) test tasks.
    config.eval_tasks = 40
    config.eval_num_trajectories = 20
    config.eval_step_counts = (0, 1, 2, 3)

    for key, value in overrides.items():
        if key not in config:
            raise KeyError(f"meta_rl_config has no field {key!r}")
        config[key] = value
    return config


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a config to seconds (tests and the README's check)."""
    config.horizon = min(config.horizon, 10)
    config.num_trajectories = 4
    config.meta_batch_size = 4
    config.hidden_units = (16, 16)
    config.total_steps = 4
    config.steps_per_epoch = 2
    config.backup_every = 1
    config.eval_tasks = 4
    config.eval_num_trajectories = 4
    config.eval_step_counts = (0, 1)
    return config


def unknown_variant(filename: str, arg: str, known: tuple[str, ...]):
    """The error for a variant a config file does not have."""
    return ValueError(
        f"Unknown variant of configs/{filename}: {arg!r}; expected one of "
        f"{list(known)}."
    )
