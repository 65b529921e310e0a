"""Meta-World ML1 (Yu et al. 2019) with MAML-TRPO: one manipulation
environment, 50 training goal positions, tested on 50 held-out ones.

The config argument names the environment (default `reach-v3`; e.g.
`push-v3`, `pick-place-v3`), optionally with `,smoke` (tiny, for tests):
  python -m tfmaml.train --config=configs/metaworld_ml1.py:push-v3 \
      --workdir=runs/ml1_push
Settings of garage's MAML-TRPO ML1 examples: 20 tasks x 10 episodes per
meta-step, one inner step of 0.1, Gaussian MLP 2 x 100, TRPO with max
KL 0.01; horizon 150 (Meta-World's first release; its own limit is 500)
to fit the budget of 2 CPU cores. Reports return and success rate
(Meta-World's: the success flag set at some step of the episode).
Needs the `rl` extra.
"""

import ml_collections

from tfmaml.configs import meta_rl


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parts = [p for p in (arg or "").split(",") if p]
    smoke = "smoke" in parts
    names = [p for p in parts if p != "smoke"]
    if len(names) > 1:
        raise ValueError(
            "configs/metaworld_ml1.py takes one environment name, optionally "
            f"with ',smoke'. Received: {arg!r}"
        )
    env_name = names[0] if names else "reach-v3"
    config = meta_rl.meta_rl_config(
        f"metaworld_ml1_{env_name}",
        "metaworld",
        horizon=150,
        meta_batch_size=20,
        num_trajectories=10,
        total_steps=200,
        eval_tasks=20,
        eval_num_trajectories=10,
    )
    config.family_args = ml_collections.ConfigDict(
        {"benchmark": "ML1", "env_name": env_name}
    )
    if smoke:
        meta_rl.smoke(config)
    return config
