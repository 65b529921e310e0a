"""Omniglot few-shot classification with MAML (Finn et al. 2017, 5.2).

Shared by `omniglot_5way_1shot.py` and `omniglot_20way_1shot.py`: Conv4 with
batch norm (batch statistics) on 28x28 inverted images, rotations by
multiples of 90 degrees as new training classes, Adam 1e-3. The paper's
inner rate (0.4 for 5-way, 0.1 for 20-way) was for `mean(CE) / K`; with the
per-task mean loss tfmaml uses it becomes `rate / K`, the same for 1-shot.

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
    """The Omniglot config (see the module docstring); `inner_lr` is the
    paper's rate, divided here by `num_shots`."""
    return few_shot_config(
        task="omniglot",
        name=f"omniglot_{num_ways}way_{num_shots}shot",
        num_ways=num_ways,
        num_shots=num_shots,
        meta_batch_size=meta_batch_size,
        inner_lr=inner_lr / num_shots,
        inner_steps=inner_steps,
        eval_inner_steps=eval_inner_steps,
        image_size=(28, 28),
        filters=64,
        invert=True,
        rotations=True,
        arg=arg,
    )
