"""mini-ImageNet (Vinyals et al. 2016) with the MAML paper's settings (see
`few_shot.rgb_config`): 84x84x3 images scaled to [0, 1]. `data_dir` holds
`images/` and Ravi and Larochelle's `train.csv`, `val.csv` and `test.csv`
(header `filename,label`); there is no download.

5-way 5-shot, meta-batches of 2 tasks.

Launch:
  python -m tfmaml.train --config=configs/mini_imagenet_5way_5shot.py \
      --config.data_dir=DIR --workdir=runs/mini_imagenet_5way_5shot
Variant `smoke` (`--config=configs/mini_imagenet_5way_5shot.py:smoke`): a tiny
run for tests, on any data laid out like the real source.
"""

import ml_collections

from tfmaml.configs.few_shot import rgb_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return rgb_config(
        task="mini_imagenet",
        image_size=(84, 84),
        num_shots=5,
        meta_batch_size=2,
        arg=arg,
    )
