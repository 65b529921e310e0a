"""Omniglot 5-way 1-shot, MAML's settings (see `omniglot.py`).

Launch:
  python -m tfmaml.train --config=configs/omniglot_5way_1shot.py \
      --config.data_dir=DIR_WITH_ARCHIVES --workdir=runs/o5
Meta-batches of 32 tasks, 1 inner step of 0.4 in training, 3 at test time.
Expected: see benchmarks/RESULTS.md (benchmarks/omniglot.py).
"""

import ml_collections

from tfmaml.configs.omniglot import omniglot_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return omniglot_config(
        num_ways=5,
        num_shots=1,
        meta_batch_size=32,
        inner_lr=0.4,
        inner_steps=1,
        eval_inner_steps=3,
        arg=arg,
    )
