"""mini-ImageNet few-shot classification with MAML (Finn et al. 2017, 5.2).

Shared by `mini_imagenet_5way_1shot.py` and `mini_imagenet_5way_5shot.py`:
the paper's Conv4 with 32 filters on 84x84x3 images scaled to [0, 1], 5
inner steps in training and 10 at test, meta-batches of 4 (1-shot) and 2
(5-shot) tasks, 15 queries per class. cbfinn/maml's inner rate 0.01 is on
`N x mean(CE)`, so 0.05 on the mean loss here; a starting point, not a
tuned value.

Data: `data_dir` holds `images/` and Ravi and Larochelle's `train.csv`,
`val.csv` and `test.csv` (header `filename,label`); there is no download.
"""

import ml_collections

from tfmaml.configs.few_shot import few_shot_config


def mini_imagenet_config(
    *, num_shots: int, meta_batch_size: int, arg: str | None
) -> ml_collections.ConfigDict:
    """The 5-way mini-ImageNet config with `num_shots` support images."""
    return few_shot_config(
        task="mini_imagenet",
        name=f"mini_imagenet_5way_{num_shots}shot",
        num_ways=5,
        num_shots=num_shots,
        meta_batch_size=meta_batch_size,
        inner_lr=0.05,
        inner_steps=5,
        eval_inner_steps=10,
        image_size=(84, 84),
        filters=32,
        arg=arg,
    )
