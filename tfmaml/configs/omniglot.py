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

from tfmaml.configs import common


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
    config = ml_collections.ConfigDict()
    config.name = f"omniglot_{num_ways}way_{num_shots}shot"
    config.seed = 0

    # Data.
    config.task = "omniglot"
    config.data_dir = ""
    config.split = "auto"
    config.image_size = (28, 28)
    config.invert = True
    config.rotations = True  # Training classes only.
    config.num_ways = num_ways
    config.num_shots = num_shots
    config.num_queries = 15
    config.meta_batch_size = meta_batch_size

    # Network and loss.
    config.network = "conv4"
    config.filters = 64
    config.loss = {
        "class_name": "SparseCategoricalCrossentropy",
        "config": {"from_logits": True},
    }
    config.metrics = ("accuracy",)

    # Meta-learning.
    common.add_algorithm_fields(config)
    common.add_runtime_fields(config)
    config.inner_lr = inner_lr / num_shots
    config.inner_steps = inner_steps
    config.eval_inner_steps = eval_inner_steps
    config.first_order = False
    config.task_loop = "map"

    # Meta-training budget (the paper: 60,000 meta-batches; far beyond a
    # 2-core CPU, where a meta-batch takes seconds).
    config.learning_rate = 1e-3
    config.total_steps = 60_000
    config.steps_per_epoch = 500
    config.steps_per_execution = 1
    config.validation_batches = 4
    config.jit_compile = False  # XLA's max-pool second derivative is wrong.
    config.intra_op_threads = 1  # Tasks side by side: 1.2x on 2 cores.

    # Evaluation on test classes.
    config.eval_tasks = 600
    config.eval_num_queries = 15
    config.eval_step_counts = (0, 1, 3, 5, 10)

    if arg == "smoke":
        config.filters = 8
        config.meta_batch_size = 4
        config.num_queries = 2
        config.eval_num_queries = 2
        config.total_steps = 6
        config.steps_per_epoch = 3
        config.validation_batches = 1
        config.eval_tasks = 8
        config.eval_step_counts = (0, 1)
        config.backup_every = 1
    elif arg is not None:
        raise ValueError(
            f"Unknown variant of {config.name}: {arg!r}; expected 'smoke'."
        )
    return config
