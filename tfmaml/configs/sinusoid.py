"""Sinusoid regression with MAML (Finn et al. 2017, section 5.1).

The CLI's default: a 2x40 ReLU MLP, K=10 support and 10 query points per task,
meta-batches of 25 tasks, one inner SGD step of 0.01, Adam 1e-3, MSE.

Launch:
  python -m tfmaml.train --config=configs/sinusoid.py --workdir=runs/sin
  python -m tfmaml.evaluate --config=configs/sinusoid.py --workdir=runs/sin
Variants (`--config=configs/sinusoid.py:VARIANT`): `smoke` trains a few
hundred steps for tests; `k5` uses K=5 as the paper's figure.
Expected (see benchmarks/RESULTS.md): 600-task MSE after 1 / 5 / 10 inner
steps below the paper's 0.67 / 0.38 / 0.35 (K=5).
"""

import ml_collections

from tfmaml.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = "sinusoid"
    config.seed = 0

    # Tasks.
    config.task = "sinusoid"
    config.num_shots = 10
    config.num_queries = 10
    config.meta_batch_size = 25

    # Network and loss.
    config.network = "mlp"
    config.hidden_units = (40, 40)
    config.activation = "relu"
    config.loss = "mse"
    config.metrics = ()

    # Meta-learning.
    common.add_algorithm_fields(config)
    common.add_runtime_fields(config)
    config.inner_lr = 0.01
    config.inner_steps = 1
    config.eval_inner_steps = 10
    config.first_order = False
    config.task_loop = "vectorized"  # Fastest for dense networks.

    # Meta-training budget: 70,000 meta-batches (the paper's) in 70 epochs.
    config.learning_rate = 1e-3
    config.total_steps = 70_000
    config.steps_per_epoch = 1_000
    config.steps_per_execution = 50
    config.validation_batches = 4
    config.jit_compile = False

    # Evaluation on fresh tasks.
    config.eval_tasks = 600
    config.eval_num_queries = 100  # More query points: a tighter estimate.
    config.eval_step_counts = (0, 1, 5, 10)

    if arg == "smoke":
        config.total_steps = 400
        config.steps_per_epoch = 200
        config.eval_tasks = 50
        config.backup_every = 50
    elif arg == "k5":
        config.name = "sinusoid_k5"
        config.num_shots = 5
        config.num_queries = 5
    elif arg is not None:
        raise ValueError(
            f"Unknown variant of configs/sinusoid.py: {arg!r}; expected "
            "'smoke' or 'k5'."
        )
    return config
