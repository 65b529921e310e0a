"""Few-shot image classification with MAML: the fields every image config
shares (Omniglot, CIFAR-FS, mini-ImageNet).

Conv4 with batch norm (batch statistics) and max-pooling, Adam 1e-3 outside,
SGD inside, `num_queries` query images per class, evaluation over 600 test
tasks. `data_dir` holds the source's files as they are published (see each
config); `task` names the source (`tfmaml.image_tasks.IMAGE_SOURCES`).
The `smoke` variant is a tiny run for tests.
"""

import ml_collections

from tfmaml.configs import common


def few_shot_config(
    *,
    task: str,
    name: str,
    num_ways: int,
    num_shots: int,
    meta_batch_size: int,
    inner_lr: float,
    inner_steps: int,
    eval_inner_steps: int,
    image_size: tuple[int, int],
    filters: int,
    arg: str | None,
    invert: bool = False,
    rotations: bool = False,
) -> ml_collections.ConfigDict:
    """The config of one few-shot image experiment.

    Args:
        task: The source, a key of `tfmaml.image_tasks.IMAGE_SOURCES`.
        name: The experiment's name (workdir and export folder).
        num_ways: Classes per task.
        num_shots: Support images per class.
        meta_batch_size: Tasks per meta-batch.
        inner_lr: The inner SGD rate on the mean cross-entropy.
        inner_steps: Inner steps in training.
        eval_inner_steps: Inner steps at test time.
        image_size: `(height, width)` the network sees.
        filters: Conv4's filters per convolution.
        arg: The variant: `None` or `"smoke"`.
        invert: Whether images are inverted (Omniglot's ink). Defaults to
            `False`.
        rotations: Whether rotated training classes are new classes.
            Defaults to `False`.

    Raises:
        ValueError: For an unknown variant.
    """
    config = ml_collections.ConfigDict()
    config.name = name
    config.seed = 0

    # Data.
    config.task = task
    config.data_dir = ""
    config.split = "auto"
    config.image_size = image_size
    config.invert = invert
    # Each image's ink moved to the frame's centre before resizing, and with
    # `ink_radius` > 0 scaled to that radius of gyration (a fraction of the
    # side; `tfmaml.data.InkCentring`), in training and in the export;
    # with `deslant_ink` also sheared upright about that centre.
    config.centre_ink = False
    config.ink_radius = 0.0
    config.deslant_ink = False
    config.rotations = rotations  # Training classes only.
    # Mirror images of training classes as new classes too (with rotations,
    # eight orientations of each; `tfmaml.data.episodes(reflections=...)`).
    config.reflections = False
    config.num_ways = num_ways
    # Ways of the training episodes; 0: `num_ways`. Wider training (Snell
    # et al.'s 60-way for ProtoNet) needs a network without a class head,
    # so only `algorithm="protonet"` takes it.
    config.train_num_ways = 0
    config.num_shots = num_shots
    config.num_queries = 15
    config.meta_batch_size = meta_batch_size
    # Random affine distortions of training images (each image its own
    # draw, uniform in +-range; `tfmaml.data.AffineAugmentation`).
    config.augment = False
    config.augmentation = ml_collections.ConfigDict(
        {"rotation": 10.0, "shear": 0.2, "scale": 0.1, "shift": 0.1}
    )

    # Network and loss.
    config.network = "conv4"
    config.filters = filters
    # Conv4s in one embedding (`tfmaml.networks.embedding_ensemble`: each
    # unit-length, concatenated), each pretrained on its own when
    # `pretrain_steps` is set; 1: one Conv4. Only a ProtoNet's embedding.
    config.ensemble_size = 1
    config.loss = {
        "class_name": "SparseCategoricalCrossentropy",
        "config": {"from_logits": True},
    }
    config.metrics = ("accuracy",)

    # Whole-class pretraining of a ProtoNet's embedding before its episodes
    # (`tfmaml.pretraining`): a classifier over every training class (and
    # orientation), `pretrain_steps` batches; 0: none. `pretrain_head`:
    # the classifier's head, "linear" or "cosine" (`CosineLogits`).
    # `pretrain_on_validation`: pretrain on the validation classes too, for
    # a final run whose choices are made (no episodes after it: validation
    # would no longer score unseen classes). `pretrain_minutes`: a wall-time
    # budget for all of it (an ensemble's members share it), within which
    # each member trains at most `pretrain_steps`, as many as fit at the
    # CPU's measured rate, with its cosine decay ending there; 0: none.
    # `pretrain_group_by`: a metadata field (e.g. "alphabet") whose groups
    # `pretrain_group_fraction` of the batches are each drawn from, one
    # group a batch (`tfmaml.data.labelled_batches`' `group_by`); "": none.
    config.pretrain_steps = 0
    config.pretrain_minutes = 0.0
    config.pretrain_on_validation = False
    config.pretrain_head = "linear"
    config.pretrain_batch_size = 256
    config.pretrain_group_by = ""
    config.pretrain_group_fraction = 1.0
    config.pretrain_learning_rate = 1e-3
    # Keras' label_smoothing; 0.1 lost 2.4 points on Omniglot (RESULTS.md).
    config.pretrain_label_smoothing = 0.0
    # A ProtoNet's views: each support image (query) also embedded as this
    # many copies distorted by `augmentation`'s ranges, outside training
    # (`tfmaml.ProtoNet(support_views=..., query_views=...)`); 0: none.
    config.support_views = 0
    config.query_views = 0
    # A ProtoNet's set-level inference outside training: each task's
    # queries assigned to its classes together, each class an equal share
    # (`tfmaml.ProtoNet(assignment_steps=...)`, Sinkhorn iterations); only
    # for queries spread evenly over the classes. 0: each query alone.
    config.assignment_steps = 0
    config.assignment_sharpness = 16.0
    # A ProtoNet's fitted head: outside training, this many gradient steps
    # of a linear head from the prototypes on the support embeddings and
    # their views (`tfmaml.ProtoNet(head_steps=..., head_learning_rate=...)`);
    # 0: the prototypes' logits.
    config.head_steps = 0
    config.head_learning_rate = 1.0

    # Meta-learning.
    common.add_algorithm_fields(config)
    common.add_runtime_fields(config)
    config.inner_lr = inner_lr
    config.inner_steps = inner_steps
    config.eval_inner_steps = eval_inner_steps
    config.first_order = False
    config.task_loop = "map"

    # Meta-training budget (the MAML paper: 60,000 meta-batches; far beyond
    # a 2-core CPU, where a meta-batch takes seconds).
    config.learning_rate = 1e-3
    config.total_steps = 60_000
    config.steps_per_epoch = 500
    config.steps_per_execution = 1
    config.validation_batches = 4
    config.jit_compile = False  # XLA's max-pool second derivative is wrong.

    # Evaluation on test classes.
    config.eval_tasks = 600
    config.eval_num_queries = 15
    config.eval_step_counts = (0, 1, 3, 5, 10)
    # A metadata field ("alphabet" for Omniglot): the evaluation also runs
    # on episodes whose classes all share it. Empty: random episodes only.
    config.eval_group_by = "alphabet" if task == "omniglot" else ""

    if arg == "smoke":
        config.filters = 8
        config.meta_batch_size = 4
        config.num_queries = 1 if num_shots > 1 else 2
        config.eval_num_queries = config.num_queries
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


def rgb_config(
    *,
    task: str,
    image_size: tuple[int, int],
    num_shots: int,
    meta_batch_size: int,
    arg: str | None,
) -> ml_collections.ConfigDict:
    """5-way colour-image few-shot with the MAML paper's mini-ImageNet
    recipe: Conv4 with 32 filters, 5 inner steps in training and 10 at
    test, 15 queries per class. cbfinn/maml's inner rate 0.01 is on
    `N x mean(CE)`, so 0.05 on the mean loss here: a starting point, not a
    tuned value.

    Args:
        task: `"cifar_fs"` or `"mini_imagenet"`.
        image_size: `(height, width)`: 32x32 and 84x84 as stored.
        num_shots: Support images per class.
        meta_batch_size: Tasks per meta-batch (the paper: 4 for 1-shot, 2
            for 5-shot).
        arg: The variant: `None` or `"smoke"`.
    """
    return few_shot_config(
        task=task,
        name=f"{task}_5way_{num_shots}shot",
        num_ways=5,
        num_shots=num_shots,
        meta_batch_size=meta_batch_size,
        inner_lr=0.05,
        inner_steps=5,
        eval_inner_steps=10,
        image_size=image_size,
        filters=32,
        arg=arg,
    )
