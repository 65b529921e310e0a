"""Half-cheetah direction (Finn et al. 2017, 5.3) with MAML-TRPO.

Each task is a direction, forward or backward (reward = direction x
forward velocity - 0.05 |a|^2), on Gymnasium's MuJoCo HalfCheetah v5,
horizon 200, simulated in one worker process per core. The paper's
settings (the original `maml_trpo_cheetah` runs): Gaussian MLP 2 x 100
ReLU, one inner policy-gradient step of 0.1, linear baseline, discount
0.99, TRPO with max KL 0.01. The paper sampled 40 tasks x 20 episodes
per meta-step; to fit about an hour on 2 CPU cores this samples 20 x 10
(half the tasks, half the episodes) for 400 meta-steps.

Launch (needs the `rl` extra):
  python -m tfmaml.train --config=configs/cheetah_direction.py \
      --workdir=runs/cheetah_direction
  python -m tfmaml.evaluate --config=configs/cheetah_direction.py \
      --workdir=runs/cheetah_direction
Variants: `smoke` (tiny, for tests); `pretrained` (inner_steps=0: one
policy trained on all tasks, the paper's baseline).
Expected (benchmarks/RESULTS.md): return after 1 step above the return
before adaptation (the original's figures: -50.7 / 293.2 after 0 / 1).
"""

import ml_collections

from tfmaml.configs import meta_rl


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = meta_rl.meta_rl_config(
        "cheetah_direction",
        "cheetah_direction",
        horizon=200,
        meta_batch_size=20,
        num_trajectories=10,
        total_steps=400,
    )
    if arg == "smoke":
        meta_rl.smoke(config)
    elif arg == "pretrained":
        config.name = "cheetah_direction_pretrained"
        config.inner_steps = 0
    elif arg is not None:
        raise meta_rl.unknown_variant(
            "cheetah_direction.py", arg, ("smoke", "pretrained")
        )
    return config
