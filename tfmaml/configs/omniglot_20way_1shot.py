"""Omniglot 20-way 1-shot: the best recipe measured so far for the subset
split (five training alphabets; 81.8% on random and 70.5% on
within-alphabet episodes of unseen alphabets over 3 seeds, below the
learning-quality issue's 90%), and MAML's settings beside it.

Launch (the recipe; `saved_models/omniglot_20way_1shot/` is its export):
  python -m tfmaml.train --config=configs/omniglot_20way_1shot.py \
      --config.data_dir=DIR_WITH_ARCHIVES --workdir=runs/o20

Variants, comma-separated after the path:
- none: the recipe. A ProtoNet (Conv4 without its head, squared Euclidean
  distance; no inner loop) on 20-way episodes with 15 queries per class,
  random affine distortions of every training drawing (`augment`), Adam
  with a cosine decay over `total_steps` (sized to about half an hour of
  `fit` on 2 CPU cores), and the weights of the best validation epoch
  restored at the end. The choices measured on validation classes
  (benchmarks/sweep.py, figures in benchmarks/RESULTS.md): the algorithm
  (ProtoNet over MAML and Proto-MAML), augmentation (on), and the width of
  the training episodes (20-way over Snell et al.'s 60-way); the test
  alphabets only report.
- `maml`: MAML's settings (see `omniglot.py`): meta-batches of 16 tasks,
  5 inner steps of 0.1 in training and at test time.
- `smoke`: a tiny run for tests (with either).
"""

import ml_collections

from tfmaml.configs.omniglot import omniglot_config

VARIANTS = ("maml", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = set(arg.split(",")) if arg else set()
    if variants - set(VARIANTS):
        raise ValueError(
            "Unknown variant of omniglot_20way_1shot: "
            f"{sorted(variants - set(VARIANTS))}; expected a comma-separated "
            f"subset of {list(VARIANTS)}."
        )
    config = omniglot_config(
        num_ways=20,
        num_shots=1,
        meta_batch_size=16,
        inner_lr=0.1,
        inner_steps=5,
        eval_inner_steps=5,
        arg="smoke" if "smoke" in variants else None,
    )
    if "maml" in variants:
        return config
    config.algorithm = "protonet"
    config.augment = True
    config.lr_schedule = "cosine"
    config.restore_best_weights = True
    if "smoke" not in variants:
        config.total_steps = 700
        config.steps_per_epoch = 50
    return config
