"""Meta-World ML10 (Yu et al. 2019) with MAML-TRPO: 10 training
environments, tested on 5 held-out ones (50 goal positions each).

Launch (needs the `rl` extra):
  python -m tfmaml.train --config=configs/metaworld_ml10.py \
      --workdir=runs/ml10
The settings of `metaworld_ml1.py` (garage's MAML-TRPO; horizon 150).
Variant: `smoke` (tiny, for tests). The paper's MAML reached 44.4%
success on the training tasks and 31.6% on the test tasks with budgets
far beyond 2 CPU cores (benchmarks/RESULTS.md).
"""

import ml_collections

from tfmaml.configs import meta_rl


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = meta_rl.meta_rl_config(
        "metaworld_ml10",
        "metaworld",
        horizon=150,
        meta_batch_size=20,
        num_trajectories=10,
        total_steps=200,
        eval_tasks=20,
        eval_num_trajectories=10,
    )
    config.family_args = ml_collections.ConfigDict(
        {"benchmark": "ML10", "env_name": None}
    )
    if arg == "smoke":
        meta_rl.smoke(config)
    elif arg is not None:
        raise meta_rl.unknown_variant("metaworld_ml10.py", arg, ("smoke",))
    return config
