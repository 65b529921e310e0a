"""CIFAR-FS (Bertinetto et al. 2019): CIFAR-100's 100 classes split 64 / 16 /
20, 32x32x3 images scaled to [0, 1], with the MAML paper's mini-ImageNet
recipe (see `few_shot.rgb_config`). `data_dir` holds the official
`cifar-100-binary.tar.gz` (the file TFDS's `cifar100` builder reads); empty
means `tfds.load("cifar100")`.

5-way 1-shot, meta-batches of 4 tasks.

Launch:
  python -m tfmaml.train --config=configs/cifar_fs_5way_1shot.py \
      --config.data_dir=DIR --workdir=runs/cifar_fs_5way_1shot
Variant `smoke` (`--config=configs/cifar_fs_5way_1shot.py:smoke`): a tiny
run for tests, on any data laid out like the real source.
"""

import ml_collections

from tfmaml.configs.few_shot import rgb_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return rgb_config(
        task="cifar_fs",
        image_size=(32, 32),
        num_shots=1,
        meta_batch_size=4,
        arg=arg,
    )
