"""Omniglot few-shot classification with MAML (Finn et al. 2017, 5.2).

Shared by `omniglot_5way_1shot.py` and `omniglot_20way_1shot.py`: Conv4 with
batch norm (batch statistics) on 28x28 inverted images, rotations by
multiples of 90 degrees as new training classes, Adam 1e-3.

The inner rate is on the support set's mean cross-entropy. The paper's
rates (0.4 for 5-way, 0.1 for 20-way) are on another scale: cbfinn/maml's
`xent` returns each example's cross-entropy divided by K, and
`tf.gradients` sums that vector, so its step is `rate * N * mean(CE)`:
2.0 on the mean in both cases. tfmaml does not use 2.0: its network starts
from Keras' initialisers, not the paper's, and 2.0 diverged in a 5-way run
(42.5% after one step, against 74.7% at 0.4). The configs keep 0.4 and
0.1 on the mean; benchmarks/RESULTS.md records the grid (20-way: 0.1 beat
0.03 and 0.3 on validation classes).

Data: `data_dir` holds the official archives (any of images_background.zip,
images_evaluation.zip, images_background_small1.zip,
images_background_small2.zip); empty means `tfds.load("omniglot")`. The
class split is the MAML paper's when all 1623 characters are present, else
the split by alphabet of the two small subsets (`split="auto"`).
"""

import ml_collections

from tfmaml.configs.few_shot import few_shot_config


def omniglot_config(
    *,
    num_ways: int,
    num_shots: int,
    meta_batch_size: int,
    inner_lr: float,
    inner_steps: int,
    eval_inner_steps: int,
    arg: str | None,
) -> ml_collections.ConfigDict:
    """The Omniglot config (see the module docstring); `inner_lr` is on
    the mean cross-entropy."""
    config = few_shot_config(
        task="omniglot",
        name=f"omniglot_{num_ways}way_{num_shots}shot",
        num_ways=num_ways,
        num_shots=num_shots,
        meta_batch_size=meta_batch_size,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        eval_inner_steps=eval_inner_steps,
        image_size=(28, 28),
        filters=64,
        invert=True,
        rotations=True,
        arg=arg,
    )
    # A training alphabet held out whole for validation (the subsets split;
    # `tfmaml.data.sources.omniglot_splits`); empty: a fifth of the
    # training characters.
    config.validation_alphabet = ""
    return config
