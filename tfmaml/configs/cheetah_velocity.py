"""Half-cheetah velocity (Finn et al. 2017, 5.3) with MAML-TRPO.

Each task is a goal velocity uniform in [0, 2] (reward = -|forward
velocity - goal| - 0.05 |a|^2), on Gymnasium's MuJoCo HalfCheetah v5,
horizon 200; the settings of `cheetah_direction.py` (the paper's, with
20 tasks x 10 episodes per meta-step to fit about an hour on 2 cores).

Launch (needs the `rl` extra):
  python -m tfmaml.train --config=configs/cheetah_velocity.py \
      --workdir=runs/cheetah_velocity
Variants: `smoke` (tiny, for tests); `pretrained` (inner_steps=0: one
policy trained on all tasks, the paper's baseline).
Anchors (the original's result files): -129.5 / -78.6 after 0 / 1 steps.
"""

import ml_collections

from tfmaml.configs import meta_rl


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = meta_rl.meta_rl_config(
        "cheetah_velocity",
        "cheetah_velocity",
        horizon=200,
        meta_batch_size=20,
        num_trajectories=10,
        total_steps=400,
    )
    if arg == "smoke":
        meta_rl.smoke(config)
    elif arg == "pretrained":
        config.name = "cheetah_velocity_pretrained"
        config.inner_steps = 0
    elif arg is not None:
        raise meta_rl.unknown_variant(
            "cheetah_velocity.py", arg, ("smoke", "pretrained")
        )
    return config
