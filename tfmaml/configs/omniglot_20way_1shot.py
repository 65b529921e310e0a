"""Omniglot 20-way 1-shot, MAML's settings (see `omniglot.py`).

Launch:
  python -m tfmaml.train --config=configs/omniglot_20way_1shot.py \
      --config.data_dir=DIR_WITH_ARCHIVES --workdir=runs/o20
Meta-batches of 16 tasks, 5 inner steps of 0.1 in training and at test time.
Expected: see benchmarks/RESULTS.md (benchmarks/omniglot.py).
"""

import ml_collections

from tfmaml.configs.omniglot import omniglot_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return omniglot_config(
        num_ways=20,
        num_shots=1,
        meta_batch_size=16,
        inner_lr=0.1,
        inner_steps=5,
        eval_inner_steps=5,
        arg=arg,
    )
