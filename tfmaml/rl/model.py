"""`MetaRL`: MAML for policies (Finn et al. 2017, section 5.3) with `fit`.

A batch is a meta-batch of tasks with a rollout seed
(`tfmaml.rl.task_batches`). `train_step` samples `num_trajectories`
episodes of each task with the current policy inside the graph, fits the
linear baseline, computes GAE advantages, takes the inner policy-gradient
step(s) on fast weights with tfmaml's inner loop (`inner_loop.inner_step`,
the same update rules as supervised MAML), samples again with the adapted
weights, and improves the outer objective on those post-update episodes,
differentiated through the inner update (second order, or first order).

The outer objective is the likelihood-ratio surrogate of the post-update
episodes. `outer="trpo"` (the paper's) takes a KL-constrained natural
gradient step (conjugate gradient on Hessian-vector products of the mean
KL, then a line search), which the compiled optimizer applies:
`keras.optimizers.SGD(1.0)` moves the weights by exactly that step.
`outer="policy_gradient"` hands the surrogate's gradient to any compiled
Keras optimizer instead.

The paper's estimator (`sampling_correction=False`) differentiates the
inner update with the pre-update episodes held fixed; it ignores that their
distribution depends on the initial weights too, which biases it (Al-
Shedivat et al. 2018, Rothfuss et al. 2019). `sampling_correction=True`
adds that score-function term (DiCE's first order), for an unbiased
estimator of the meta-gradient.
"""

from typing import Any

import keras
import tensorflow as tf

from tfmaml import inner_loop
from tfmaml.checks import check_bool
from tfmaml.checks import check_int
from tfmaml.meta_learner import MetaLearner
from tfmaml.rl import export
from tfmaml.rl import policies
from tfmaml.rl import trpo
from tfmaml.rl.episodes import PolicyAdaptation
from tfmaml.rl.rollouts import success_rates
from tfmaml.rl.task_families import SEEDS
from tfmaml.rl.task_families import TASKS

OUTER_OBJECTIVES = ("trpo", "policy_gradient")
BASELINES = ("linear", "zero")


@keras.saving.register_keras_serializable(package="tfmaml")
class MetaRL(PolicyAdaptation, MetaLearner):
    """Model-agnostic meta-reinforcement learning with `fit`.

    Args:
        base_model: A built Gaussian policy network from observations to
            `[mean, log_std]` (`tfmaml.rl.gaussian_mlp`).
        family: The task family (`tfmaml.rl.Navigation2D`, or any
            `tfmaml.rl.TaskFamily` registered for saving).
        inner_lr: The inner policy-gradient step size. Defaults to `0.01`
            (the shorthand of `tfmaml.MAML`; not with `inner_optimizer`).
        inner_steps: Inner steps in training (0 trains one policy on all
            tasks: the "pretrained" baseline). Defaults to `1`.
        eval_inner_steps: Inner steps in `evaluate`. Defaults to
            `inner_steps`.
        first_order: Whether the meta-gradient ignores the inner update's
            second derivatives. Defaults to `False`.
        num_trajectories: Episodes per task and inner step (K), >= 2.
            Defaults to `20`.
        discount: The discount factor. Defaults to `0.99`.
        gae_lambda: GAE's lambda. Defaults to `1.0`.
        baseline: `"linear"` (rllab's feature baseline, fitted per task in
            closed form) or `"zero"`. Defaults to `"linear"`.
        normalize_advantages: Whether advantages are centred and scaled
            per task. Defaults to `True`.
        outer: `"trpo"` or `"policy_gradient"`. Defaults to `"trpo"`.
        max_kl: TRPO's bound on the mean KL. Defaults to `0.01`.
        cg_iterations: Conjugate gradient iterations. Defaults to `10`.
        cg_damping: Added to the KL's Hessian. Defaults to `1e-2`. (rllab's
            1e-5 let TRPO step far along moves of the initial weights that
            the inner step undoes, where the post-update policy's Fisher is
            nearly singular: on 2D navigation the pre-update return fell
            from -70 to -180 in 12 meta-steps; 1e-2 and 1e-1 learned.)
        sampling_correction: Whether to add the score-function term of the
            pre-update sampling (unbiased meta-gradient). Defaults to
            `False` (the paper's estimator).
        task_loop: How per-task computations are mapped: `"vectorized"`
            (default, fastest for MLP policies) or `"map"`.
        **kwargs: `MetaLearner` options (`inner_optimizer`,
            `inner_variables`, ...) and Keras model arguments.

    Raises:
        ValueError: Naming the argument that is out of range, or a policy
            whose output does not fit the family's action size.
    """

    def __init__(
        self,
        base_model: keras.Model,
        family: Any,
        inner_lr: float | None = None,
        inner_steps: int = 1,
        *,
        num_trajectories: int = 20,
        discount: float = 0.99,
        gae_lambda: float = 1.0,
        baseline: str = "linear",
        normalize_advantages: bool = True,
        outer: str = "trpo",
        max_kl: float = 0.01,
        cg_iterations: int = 10,
        cg_damping: float = 1e-2,
        sampling_correction: bool = False,
        task_loop: str = "vectorized",
        **kwargs,
    ):
        super().__init__(base_model, inner_lr, inner_steps, **kwargs)
        self.family = family
        _check_policy(base_model, family)
        self.num_trajectories = check_int(
            "num_trajectories", num_trajectories, minimum=2
        )
        for name, value in (("discount", discount), ("gae_lambda", gae_lambda)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"`{name}` must be in [0, 1]. Received: {name}={value!r}"
                )
        self.discount = float(discount)
        self.gae_lambda = float(gae_lambda)
        _check_choice("baseline", baseline, BASELINES)
        _check_choice("outer", outer, OUTER_OBJECTIVES)
        _check_choice("task_loop", task_loop, ("vectorized", "map"))
        self.baseline = baseline
        self.normalize_advantages = check_bool(
            "normalize_advantages", normalize_advantages
        )
        self.outer = outer
        if not max_kl > 0:
            raise ValueError(f"`max_kl` must be > 0. Received: max_kl={max_kl}")
        self.max_kl = float(max_kl)
        self.cg_iterations = check_int(
            "cg_iterations", cg_iterations, minimum=1
        )
        self.cg_damping = float(cg_damping)
        self.sampling_correction = check_bool(
            "sampling_correction", sampling_correction
        )
        self.task_loop = task_loop
        learned = getattr(self.inner_optimizer, "trainable_weights", None)
        if outer == "trpo" and learned:
            raise ValueError(
                "`outer='trpo'` steps the policy's weights only; learned "
                "inner-loop hyperparameters need `outer='policy_gradient'`."
            )
        names = ["pre_return", "return", "kl", "step_fraction"]
        if "success" in getattr(family, "info_keys", ()):
            names += ["pre_success", "success"]
        self._trackers = {name: keras.metrics.Mean(name=name) for name in names}

    # Keras integration.

    def compile(self, optimizer=None, **kwargs):
        """Configures meta-training; `optimizer` applies the outer update.

        With `outer="trpo"` the optimizer must be `SGD(1.0)` without
        momentum (the default), which moves the weights by exactly the
        trust-region step; with `"policy_gradient"` any Keras optimizer
        (default `Adam(1e-3)`). `jit_compile` defaults to `False`.

        Raises:
            ValueError: If a TRPO model is given another optimizer, or a
                `loss`.
        """
        if kwargs.get("loss") is not None:
            raise ValueError(
                "`MetaRL` has no loss to compile: its objective is the "
                f"return. Received: loss={kwargs['loss']!r}"
            )
        if optimizer is None:
            optimizer = (
                keras.optimizers.SGD(1.0)
                if self.outer == "trpo"
                else keras.optimizers.Adam(1e-3)
            )
        optimizer = keras.optimizers.get(optimizer)
        if self.outer == "trpo" and not _is_unit_sgd(optimizer):
            raise ValueError(
                "`outer='trpo'` computes the whole step itself: compile with "
                "`keras.optimizers.SGD(1.0)` (the default). Received: "
                f"optimizer={optimizer.get_config()}"
            )
        kwargs.setdefault("jit_compile", False)
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        """Compiles a loaded model with its saved arguments."""
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        self.compile(**config)
        self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        return list(self._trackers.values())

    def train_step(self, data):
        batch_tasks, seed = _unpack(data, self.family)
        weights = self._weights()
        collected = self.collect(
            weights, batch_tasks, seed, steps=self.inner_steps
        )
        self.check_on_policy(weights, collected)
        if self.outer == "trpo":
            step, kl, fraction = self._trpo_step(weights, collected)
            # Every replica computes the same step.
            gradients = self.divide_among_replicas([-s for s in step])
        else:
            gradients, kl = self._policy_gradient(weights, collected)
            fraction = tf.ones([], kl.dtype)
        self.optimizer.apply_gradients(
            zip(gradients, self.trainable_variables, strict=True)
        )
        return self._update_metrics(collected, kl, fraction)

    def test_step(self, data):
        batch_tasks, seed = _unpack(data, self.family)
        weights = self._weights()
        collected = self.collect(
            weights, batch_tasks, seed, steps=self.eval_inner_steps
        )
        return self._update_metrics(collected)

    def _trpo_step(self, weights, collected):
        """The trust-region step (list like `weights`), the KL after it and
        the fraction of the natural step the line search kept."""
        with tf.GradientTape() as tape:
            tape.watch(weights)
            surrogate, _ = self.objective(weights, collected)
            surrogate = tf.reduce_mean(surrogate)
        gradient = trpo.flatten(tape.gradient(surrogate, weights))
        gradient = self._cross_replica_mean(gradient)

        def fisher_vector(vector):
            tangent = trpo.unflatten(vector, weights)
            with tf.GradientTape() as outer:
                outer.watch(weights)
                with tf.GradientTape() as inner:
                    inner.watch(weights)
                    _, kl = self.objective(weights, collected)
                    kl = tf.reduce_mean(kl)
                grads = inner.gradient(kl, weights)
                dot = tf.add_n(
                    [
                        tf.reduce_sum(g * t)
                        for g, t in zip(grads, tangent, strict=True)
                    ]
                )
            product = trpo.flatten(outer.gradient(dot, weights))
            product = self._cross_replica_mean(product)
            return product + self.cg_damping * vector

        # Under tf.distribute the all-reduces must stay out of control flow.
        unrolled = tf.distribute.get_strategy().num_replicas_in_sync > 1
        direction = trpo.conjugate_gradient(
            fisher_vector,
            gradient,
            iterations=self.cg_iterations,
            unrolled=unrolled,
        )
        curvature = tf.reduce_sum(direction * fisher_vector(direction))
        full_step = direction * tf.sqrt(2.0 * self.max_kl / (curvature + 1e-8))

        def evaluate(fraction):
            moved = [
                w + fraction * s
                for w, s in zip(
                    weights, trpo.unflatten(full_step, weights), strict=True
                )
            ]
            new_surrogate, kl = self.objective(moved, collected)
            return (
                self._cross_replica_mean(tf.reduce_mean(new_surrogate)),
                self._cross_replica_mean(tf.reduce_mean(kl)),
            )

        before = self._cross_replica_mean(surrogate)
        fraction = trpo.line_search(
            evaluate, before, max_kl=self.max_kl, unrolled=unrolled
        )
        step = trpo.unflatten(fraction * full_step, weights)
        _, kl = evaluate(fraction)
        return step, kl, fraction

    def meta_gradient(
        self, task_batch: tf.Tensor, seed: tf.Tensor
    ) -> list[tf.Tensor]:
        """The meta-gradient estimate of one meta-batch: the gradient of
        the mean outer surrogate with respect to the policy's weights,
        through the inner steps (what TRPO preconditions and
        `outer="policy_gradient"` ascends).

        Args:
            task_batch: `[B, task_size]`.
            seed: Each task's stateless seed of its rollouts, `[B, 2]`.

        Returns:
            One tensor per trainable weight of the policy.
        """
        weights = self._weights()
        collected = self.collect(
            weights, task_batch, seed, steps=self.inner_steps
        )
        gradients, _ = self._policy_gradient(weights, collected)
        return [-g for g in gradients]

    def _policy_gradient(self, weights, collected):
        with tf.GradientTape() as tape:
            tape.watch(weights)
            surrogate, kl = self.objective(weights, collected)
            loss = -tf.reduce_mean(surrogate)
        gradients = self.divide_among_replicas(tape.gradient(loss, weights))
        return gradients, tf.reduce_mean(kl)

    # Adaptation at test and serving time.

    def act(self, observations: tf.Tensor, weights=None, steps: int = 0):
        """Mean actions `[N, actions]` of the policy on `weights` (default:
        the meta-learned ones) for observations `[N, obs]`."""
        weights = self._weights() if weights is None else weights
        with inner_loop.step_scope(steps):
            outputs = self._outputs(weights, observations)
        return policies.split_outputs(outputs)[0]

    def export(self, filepath, **kwargs) -> None:
        """Writes a SavedModel with `act` and `adapt_and_act` signatures;
        see `tfmaml.rl.export.export_policy`."""
        export.export_policy(self, filepath, **kwargs)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "family": keras.saving.serialize_keras_object(self.family),
            "num_trajectories": self.num_trajectories,
            "discount": self.discount,
            "gae_lambda": self.gae_lambda,
            "baseline": self.baseline,
            "normalize_advantages": self.normalize_advantages,
            "outer": self.outer,
            "max_kl": self.max_kl,
            "cg_iterations": self.cg_iterations,
            "cg_damping": self.cg_damping,
            "sampling_correction": self.sampling_correction,
            "task_loop": self.task_loop,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["family"] = keras.saving.deserialize_keras_object(
            config["family"], custom_objects=custom_objects
        )
        return super().from_config(config, custom_objects)

    # Internals.

    def _cross_replica_mean(self, value):
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return value
        return context.all_reduce("MEAN", value)

    def _update_metrics(self, collected, kl=None, fraction=None):
        first = (
            collected.support[0].trajectories
            if collected.support
            else collected.query.trajectories
        )
        self._trackers["pre_return"].update_state(
            tf.reduce_mean(first.returns())
        )
        self._trackers["return"].update_state(
            tf.reduce_mean(collected.query.trajectories.returns())
        )
        if "success" in self._trackers:
            for name, episodes in (
                ("pre_success", first),
                ("success", collected.query.trajectories),
            ):
                self._trackers[name].update_state(
                    tf.reduce_mean(success_rates(self.family, episodes))
                )
        logs = {}
        for name, value in (("kl", kl), ("step_fraction", fraction)):
            if value is not None:
                self._trackers[name].update_state(value)
                logs[name] = self._trackers[name].result()
        for name in ("pre_return", "return", "pre_success", "success"):
            if name in self._trackers:
                logs[name] = self._trackers[name].result()
        return logs


def _unpack(data, family):
    data, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    if not isinstance(data, dict) or TASKS not in data or SEEDS not in data:
        raise ValueError(
            f"A MetaRL batch is a dict with keys {[TASKS, SEEDS]} (see "
            "`tfmaml.rl.task_batches`). Received: "
            f"{sorted(data) if isinstance(data, dict) else type(data).__name__}"
        )
    task_batch = tf.convert_to_tensor(data[TASKS])
    if task_batch.shape.rank != 2 or task_batch.shape[-1] != family.task_size:
        raise ValueError(
            f"`tasks` must be [meta_batch, {family.task_size}] for "
            f"{type(family).__name__}. Received: tasks.shape={task_batch.shape}"
        )
    seeds = tf.convert_to_tensor(data[SEEDS])
    if seeds.shape.rank != 2 or seeds.shape[-1] != 2:
        raise ValueError(
            "`seeds` must hold one stateless seed per task, [meta_batch, 2]. "
            f"Received: seeds.shape={seeds.shape}"
        )
    return task_batch, seeds


def _check_policy(policy, family):
    try:
        spec = policy.compute_output_spec(
            keras.KerasTensor((None, family.observation_size), dtype="float32")
        )
        shape = tuple(spec.shape[1:])
    except ValueError:
        shape = "none: it refused observations of that size"
    if shape != (2 * family.action_size,):
        raise ValueError(
            f"The policy must map observations [N, {family.observation_size}]"
            f" of {type(family).__name__} to [N, {2 * family.action_size}] "
            f"(mean and log std of {family.action_size} actions). Received "
            f"a policy with output shape {shape}."
        )


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(
            f"`{name}` must be one of {list(allowed)}. "
            f"Received: {name}={value!r}"
        )


def _is_unit_sgd(optimizer):
    config = optimizer.get_config()
    return (
        isinstance(optimizer, keras.optimizers.SGD)
        and float(config["learning_rate"]) == 1.0
        and not config.get("momentum")
    )
