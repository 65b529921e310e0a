"""Config fields every experiment has: the algorithm and its options."""

import ml_collections


def add_algorithm_fields(config: ml_collections.ConfigDict) -> None:
    """Adds the algorithm choice and the MAML++ options, all off.

    - `algorithm`: `maml`, `fomaml`, `reptile`, `meta_sgd`, `anil`,
      `protonet` (Conv4 without its head as the embedding; no inner loop,
      evaluated after "0 steps") or `proto_maml` (the head starts at the
      support prototypes).
    - `learn_inner_lr`: `""`, `"per_parameter"` or `"per_layer_per_step"`.
    - `inner_momentum`: `0.0` for plain SGD, else the inner momentum;
      `learn_inner_momentum` meta-learns it.
    - `multi_step_loss_steps`: meta-steps over which MAML++'s multi-step
      loss anneals to the last step (0: off).
    - `first_order_steps`: meta-steps of first-order training before
      second order (derivative-order annealing; 0: off).
    - `lr_schedule`: `"constant"` or `"cosine"` (Keras `CosineDecay` of the
      meta learning rate to 0 over `total_steps`).
    - `per_step_batch_norm`: MAML++'s per-step batch norm scale, offset and
      statistics in Conv4 (`BatchNormalization(num_steps=inner_steps)`),
      meta-learned and left out of the inner loop.
    """
    config.algorithm = "maml"
    config.learn_inner_lr = ""
    config.inner_momentum = 0.0
    config.learn_inner_momentum = False
    config.multi_step_loss_steps = 0
    config.first_order_steps = 0
    config.lr_schedule = "constant"
    config.per_step_batch_norm = False


def add_runtime_fields(config: ml_collections.ConfigDict) -> None:
    """Adds how a run executes: distribution, determinism, backups.

    - `strategy`: `"default"` (one device), `"mirrored"` (all local
      devices) or `"multi_worker"` (hosts listed in `TF_CONFIG`).
    - `deterministic`: enable TensorFlow op determinism, so a resumed run
      ends with the weights of an uninterrupted one (not bitwise in one
      case measured, second-order MAML through a Conv4 in
      `task_loop="map"`: see Exact resume in the README).
    - `backup_every`: optimizer steps between backups for exact resume
      (a multiple of `steps_per_execution`).
    - `intra_op_threads`, `inter_op_threads`: TensorFlow's thread pools
      (0: leave them as they are: importing tfmaml already set one thread
      per op, which lets tasks run side by side, one per core; see
      `tfmaml.runtime` and benchmarks/threads.py).
    - `precision`: `"float32"`, `"float64"` or `"mixed_bfloat16"` (Keras
      mixed precision: bfloat16 compute, float32 weights and losses; 1.3x
      on Conv4 on a CPU with AVX512-BF16). float64 is for comparing paths
      exactly: adapted in float32, a network with max-pooling or ReLUs
      jumps where rounding decides which input of a near-tie the inner
      gradient flows through.
    - `early_stopping_patience`: validation epochs without improvement
      before training stops (Keras' `EarlyStopping` on the checkpoint's
      validation log; 0: off).
    - `restore_best_weights`: end with the best validation epoch's weights
      (then evaluated and exported) instead of the last.
    """
    config.strategy = "default"
    config.deterministic = True
    config.backup_every = 100
    config.intra_op_threads = 0
    config.inter_op_threads = 0
    config.precision = "float32"
    config.early_stopping_patience = 0
    config.restore_best_weights = False
