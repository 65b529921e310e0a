"""Builds an experiment's data and model from its config.

The one entry to what a config means, shared by `tfmaml.train`,
`tfmaml.evaluate` and the benchmarks, so they always agree; the image and
meta-RL specifics live in `tfmaml.image_tasks` and `tfmaml.rl_tasks`. A
new data source is one loading function and one line in
`tfmaml.image_tasks.IMAGE_SOURCES`; a new algorithm is one line in
`tfmaml.algorithms.ALGORITHMS`.
"""

import keras
import ml_collections
import tensorflow as tf

from tfmaml import algorithms
from tfmaml import data
from tfmaml import image_tasks
from tfmaml import networks
from tfmaml import rl
from tfmaml import rl_tasks
from tfmaml import training
from tfmaml.adapted_variables import names_without_normalization
from tfmaml.balanced_assignment import DEFAULT_SHARPNESS
from tfmaml.checks import check_int
from tfmaml.data import Splits
from tfmaml.data.streams import SPLIT_SEED_OFFSETS
from tfmaml.image_tasks import IMAGE_SOURCES
from tfmaml.model import MAML

PRECISIONS = ("float32", "float64", "mixed_bfloat16")


TASKS = ("sinusoid", *IMAGE_SOURCES, *rl.FAMILIES)


def is_rl(config: ml_collections.ConfigDict) -> bool:
    """Whether the config is a meta-RL experiment (`tfmaml.rl`).

    Args:
        config: The experiment config.
    """
    return config.task in rl.FAMILIES


def configure_runtime(config: ml_collections.ConfigDict) -> None:
    """Applies the config's process-wide settings: op determinism, thread
    pools and the Keras dtype policy. Call it before TensorFlow runs
    anything (thread pools are fixed once it has).

    Args:
        config: The experiment config.

    Raises:
        ValueError: If `config.precision` is not a supported policy.
    """
    if config.precision not in PRECISIONS:
        raise ValueError(
            f"`precision` must be one of {list(PRECISIONS)}. "
            f"Received: precision={config.precision!r}"
        )
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if config.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(
            config.intra_op_threads
        )
    if config.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(
            config.inter_op_threads
        )
    keras.config.set_dtype_policy(config.precision)


def build_strategy(
    config: ml_collections.ConfigDict,
) -> tf.distribute.Strategy:
    """The config's `tf.distribute` strategy.
    The meta-batch is split along the task axis across replicas, so
    `meta_batch_size` must divide by their number.

    Args:
        config: The experiment config.

    Raises:
        ValueError: If `config.strategy` is unknown or the meta-batch does
            not divide by the number of replicas.
    """
    if config.strategy == "default":
        strategy = tf.distribute.get_strategy()
    elif config.strategy == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif config.strategy == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        raise ValueError(
            "`strategy` must be 'default', 'mirrored' or 'multi_worker'. "
            f"Received: strategy={config.strategy!r}"
        )
    check_meta_batch(strategy, config.meta_batch_size)
    return strategy


def check_meta_batch(
    strategy: tf.distribute.Strategy, meta_batch_size: int
) -> None:
    """Each replica adapts an equal share of the meta-batch's tasks.

    Args:
        strategy: The distribution strategy.
        meta_batch_size: Tasks per meta-batch.

    Raises:
        ValueError: If `meta_batch_size` does not divide by the replicas.
    """
    replicas = strategy.num_replicas_in_sync
    if meta_batch_size % replicas:
        raise ValueError(
            f"`meta_batch_size` ({meta_batch_size}) must divide by the "
            f"{replicas} replicas of {type(strategy).__name__}: each replica "
            "adapts an equal share of the tasks."
        )


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs (worker 0).

    Args:
        strategy: The distribution strategy.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is None or not resolver.task_id


def build_splits(
    config: ml_collections.ConfigDict, *, train_start: int = 0
) -> Splits:
    """Returns the config's train, validation and test task streams.

    Args:
        config: The experiment config.
        train_start: The index of the first training meta-batch (a resumed
            run continues at its step).

    Returns:
        `Splits` of datasets: an endless training stream, and fixed
        validation and test sets.

    Raises:
        ValueError: If `config.task` is unknown.
    """
    if config.task in IMAGE_SOURCES:
        return image_tasks.image_splits(config, train_start)
    if is_rl(config):
        return rl_tasks.rl_splits(config, train_start)
    if config.task != "sinusoid":
        raise ValueError(
            f"Unknown `task` {config.task!r}; known tasks: {list(TASKS)}."
        )

    def stream(split, **kwargs):
        return data.sinusoid(
            num_shots=config.num_shots,
            seed=config.seed + SPLIT_SEED_OFFSETS[split],
            **kwargs,
        )

    eval_batch = 100
    return Splits(
        train=stream(
            "train",
            num_queries=config.num_queries,
            meta_batch_size=config.meta_batch_size,
            start=train_start,
        ),
        validation=stream(
            "validation",
            num_queries=config.num_queries,
            meta_batch_size=config.meta_batch_size,
            num_batches=config.validation_batches,
        ),
        test=stream(
            "test",
            num_queries=config.eval_num_queries,
            meta_batch_size=min(eval_batch, config.eval_tasks),
            num_batches=-(-config.eval_tasks // eval_batch),
        ),
    )


def build_preprocessing(
    config: ml_collections.ConfigDict,
) -> keras.Model | None:
    """The image preprocessing of the config (`None` for sinusoid).

    Args:
        config: The experiment config.
    """
    if config.task not in IMAGE_SOURCES:
        return None
    return image_tasks.preprocessing(config)


def raw_example_shape(config: ml_collections.ConfigDict) -> tuple | None:
    """The shape of one example as the data set stores it, or `None`.

    Args:
        config: The experiment config.
    """
    if config.task in IMAGE_SOURCES:
        return IMAGE_SOURCES[config.task].raw_shape
    return None


def build_network(
    config: ml_collections.ConfigDict, head: bool = True
) -> keras.Model:
    """Returns the config's base network, built.

    Args:
        config: The experiment config.
        head: Whether Conv4 ends in its linear head (`False`: the
            embedding a ProtoNet takes). Defaults to `True`.

    Raises:
        ValueError: If `config.network` is unknown.
    """
    if config.network == "conv4":
        channels = IMAGE_SOURCES[config.task].raw_shape[-1]
        size = check_int(
            "ensemble_size", config.get("ensemble_size", 1), minimum=1
        )
        if size > 1 and head:
            raise ValueError(
                f"ensemble_size={size} joins embeddings (a ProtoNet's "
                f"network, without a head); algorithm={config.algorithm!r} "
                "needs a network ending in a head of num_ways classes."
            )
        conv4s = [
            networks.conv4(
                (*config.image_size, channels),
                config.num_ways if head else None,
                filters=config.filters,
                norm_steps=(
                    config.inner_steps if config.per_step_batch_norm else None
                ),
                name="conv4" if size == 1 else f"conv4_{i}",
            )
            for i in range(size)
        ]
        return conv4s[0] if size == 1 else networks.embedding_ensemble(conv4s)
    if config.network == "mlp":
        return networks.mlp(
            (1,),
            1,
            hidden_units=tuple(config.hidden_units),
            activation=config.activation,
        )
    raise ValueError(
        f"Unknown `network` {config.network!r}; known networks: "
        "['mlp', 'conv4']."
    )


def build_model(config: ml_collections.ConfigDict) -> keras.Model:
    """Returns the config's model, compiled: `config.algorithm` around the
    config's network, or for meta-RL a `tfmaml.rl.MetaRL`.

    Args:
        config: The experiment config.

    Raises:
        ValueError: If `config.algorithm` is unknown.
    """
    if is_rl(config):
        return rl_tasks.rl_model(config)
    if config.algorithm not in algorithms.ALGORITHMS:
        raise ValueError(
            f"Unknown `algorithm` {config.algorithm!r}; known algorithms: "
            f"{sorted(algorithms.ALGORITHMS)}."
        )
    if config.algorithm == "protonet":  # No inner loop, no head.
        views = {
            f"{of}_views": config.get(f"{of}_views", 0)
            for of in ("support", "query")
        }
        model = algorithms.build_algorithm(
            "protonet",
            build_network(config, head=False),
            task_loop=config.task_loop,
            view_augmentation=dict(config.augmentation)
            if any(views.values())
            else None,
            head_steps=config.get("head_steps", 0),
            head_learning_rate=config.get("head_learning_rate", 1.0),
            assignment_steps=config.get("assignment_steps", 0),
            assignment_sharpness=config.get(
                "assignment_sharpness", DEFAULT_SHARPNESS
            ),
            **views,
        )
        compile_model(model, config)
        return model
    network = build_network(config)
    options = {}
    if config.learn_inner_lr:
        options["learn_inner_lr"] = config.learn_inner_lr
    if config.inner_momentum:
        options["inner_momentum"] = config.inner_momentum
        options["learn_inner_momentum"] = config.learn_inner_momentum
    if config.multi_step_loss_steps:
        options["multi_step_loss_steps"] = config.multi_step_loss_steps
    if config.first_order_steps:
        options["first_order_steps"] = config.first_order_steps
    if config.per_step_batch_norm:
        # MAML++: per-step batch norm rows are meta-learned, not adapted.
        options["inner_variables"] = names_without_normalization(
            network, networks.BatchNormalization
        )
    model = algorithms.build_algorithm(
        config.algorithm,
        network,
        inner_lr=config.inner_lr,
        inner_steps=config.inner_steps,
        eval_inner_steps=config.eval_inner_steps,
        task_loop=config.task_loop,
        first_order=config.first_order,
        **options,
    )
    compile_model(model, config)
    return model


def compile_model(model: MAML, config: ml_collections.ConfigDict) -> None:
    """Compiles `model` with the config's optimizer, loss and metrics.

    Args:
        model: The model to compile.
        config: The experiment config.

    Raises:
        ValueError: If `config.lr_schedule` is unknown.
    """
    if config.lr_schedule == "cosine" and config.total_steps:
        learning_rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=config.total_steps
        )
    elif config.lr_schedule == "cosine":  # No steps (pretraining only).
        learning_rate = config.learning_rate
    elif config.lr_schedule == "constant":
        learning_rate = config.learning_rate
    else:
        raise ValueError(
            "`lr_schedule` must be 'constant' or 'cosine'. Received: "
            f"lr_schedule={config.lr_schedule!r}"
        )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=_loss(config.loss),
        metrics=list(config.metrics),
        steps_per_execution=config.steps_per_execution,
        jit_compile=config.jit_compile,
    )


def _loss(value):
    """A loss named in a config: a Keras name, or a Keras config dict (e.g.
    to set `from_logits`), resolved to an object so that it saves and
    loads with the model."""
    if isinstance(value, ml_collections.ConfigDict):
        return keras.losses.get(value.to_dict())
    return value


def checkpoint_monitor(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """The validation log that picks the best checkpoint, and its mode:
    the query loss (lower is better), or for meta-RL the adapted return.

    Args:
        config: The experiment config.
    """
    return ("val_return", "max") if is_rl(config) else ("val_loss", "min")


def test_step_counts(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The inner step counts a test evaluation reports:
    `config.eval_step_counts`, or `(0,)` for a ProtoNet (no inner steps).

    Args:
        config: An image or sinusoid config.
    """
    if config.get("algorithm") == "protonet":
        return (0,)
    return tuple(config.eval_step_counts)


def early_stopping(
    config: ml_collections.ConfigDict,
) -> list[keras.callbacks.Callback]:
    """Keras' `EarlyStopping` on the checkpoint's validation log
    (`checkpoint_monitor`) as the config asks, or nothing.

    `config.early_stopping_patience`: epochs without improvement before
    training stops (0: never stops early). `config.restore_best_weights`:
    the model ends with the weights of its best validation epoch (what is
    then evaluated and exported), not its last.

    Args:
        config: The experiment config.
    """
    patience = config.get("early_stopping_patience", 0)
    restore = config.get("restore_best_weights", False)
    if not patience and not restore:
        return []
    monitor, mode = checkpoint_monitor(config)
    epochs = training.epoch_count(config.total_steps, config.steps_per_epoch)
    return [
        keras.callbacks.EarlyStopping(
            monitor=monitor,
            mode=mode,
            patience=patience or epochs,
            restore_best_weights=restore,
        )
    ]


def export_model(
    model: keras.Model, config: ml_collections.ConfigDict, export_dir: str
) -> str:
    """Exports the trained model as a SavedModel that adapts itself when
    served; returns the names of its signatures.

    Args:
        model: The trained model.
        config: Its config.
        export_dir: Where the SavedModel goes.
    """
    if is_rl(config):
        model.export(export_dir)
        return "act and adapt_and_act"
    raw_shape = raw_example_shape(config)
    model.export(
        export_dir,
        input_signature=(
            None
            if raw_shape is None
            else tf.TensorSpec((None, *raw_shape), tf.float32)
        ),
        preprocessing=build_preprocessing(config),
    )
    return "serving_default and adapt_and_predict"
