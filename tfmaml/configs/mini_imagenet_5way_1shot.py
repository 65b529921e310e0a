"""mini-ImageNet 5-way 1-shot (see `mini_imagenet.py`).

Launch:
  python -m tfmaml.train --config=configs/mini_imagenet_5way_1shot.py \
      --config.data_dir=DIR --workdir=runs/mini_imagenet_1
Variant `smoke` (`--config=configs/mini_imagenet_5way_1shot.py:smoke`): a tiny
run for tests, on any data laid out like the real source.
"""

import ml_collections

from tfmaml.configs.mini_imagenet import mini_imagenet_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return mini_imagenet_config(num_shots=1, meta_batch_size=4, arg=arg)
