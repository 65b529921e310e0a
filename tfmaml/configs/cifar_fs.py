"""CIFAR-FS few-shot classification with MAML (Bertinetto et al. 2019).

Shared by `cifar_fs_5way_1shot.py` and `cifar_fs_5way_5shot.py`: CIFAR-100's
100 classes split 64 / 16 / 20, 32x32x3 images scaled to [0, 1], Conv4 with
32 filters, and the MAML paper's mini-ImageNet recipe (5 inner steps in
training, 10 at test, meta-batches of 4 / 2 tasks). cbfinn/maml's inner
rate 0.01 is on `N x mean(CE)`, so 0.05 on the mean loss here; a
starting point, not a tuned value.

Data: `data_dir` holds the official `cifar-100-binary.tar.gz` (the file
TFDS's `cifar100` builder reads); empty means `tfds.load("cifar100")`.
"""

import ml_collections

from tfmaml.configs.few_shot import few_shot_config


def cifar_fs_config(
    *, num_shots: int, meta_batch_size: int, arg: str | None
) -> ml_collections.ConfigDict:
    """The 5-way CIFAR-FS config with `num_shots` support images."""
    return few_shot_config(
        task="cifar_fs",
        name=f"cifar_fs_5way_{num_shots}shot",
        num_ways=5,
        num_shots=num_shots,
        meta_batch_size=meta_batch_size,
        inner_lr=0.05,
        inner_steps=5,
        eval_inner_steps=10,
        image_size=(32, 32),
        filters=32,
        arg=arg,
    )
