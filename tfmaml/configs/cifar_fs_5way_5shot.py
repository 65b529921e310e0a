"""CIFAR-FS 5-way 5-shot (see `cifar_fs.py`).

Launch:
  python -m tfmaml.train --config=configs/cifar_fs_5way_5shot.py \
      --config.data_dir=DIR --workdir=runs/cifar_fs_5
Variant `smoke` (`--config=configs/cifar_fs_5way_5shot.py:smoke`): a tiny
run for tests, on any data laid out like the real source.
"""

import ml_collections

from tfmaml.configs.cifar_fs import cifar_fs_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return cifar_fs_config(num_shots=5, meta_batch_size=2, arg=arg)
