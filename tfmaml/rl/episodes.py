"""Episodes and the meta-objective on them: the RL half of `MetaRL`.

`PolicyAdaptation` is the part of `tfmaml.rl.MetaRL` that samples episodes
in the graph (`collect`), adapts the policy to them with tfmaml's inner
loop (`inner_loop.inner_step`, one step at a time, since each step samples
with the weights the previous one produced) and scores the post-update
episodes (`objective`), differentiably in the initial weights. It is a
mixin: it reads the model's policy (`base_model`), `family`, inner
optimiser and RL options.
"""

from collections.abc import Sequence
from typing import NamedTuple

import tensorflow as tf

from tfmaml import divergence
from tfmaml import inner_loop
from tfmaml import tasks
from tfmaml.rl import policies
from tfmaml.rl import returns
from tfmaml.rl.rollouts import Trajectories
from tfmaml.rl.rollouts import rollout

# Rounding gives mean log-prob gaps near 1e-6; one TRPO step (mean KL
# 0.01) gives about 0.1.
ON_POLICY_TOLERANCE = 1e-3


class Step(NamedTuple):
    """One inner step's episodes of every task and their advantages."""

    trajectories: Trajectories
    advantages: tf.Tensor  # [B, K, T]


class Collected(NamedTuple):
    """The episodes of a meta-batch: the support episodes of each inner
    step, the post-update (query) episodes and their advantages, and the
    post-update policy's outputs on them (the old policy of the surrogate).
    """

    support: list[Step]
    query: Step
    old_outputs: tf.Tensor  # [B, K, T, 2 * actions]


class PolicyAdaptation:
    """Sampling, adaptation and the outer surrogate of a meta-RL model."""

    def collect(
        self,
        weights: Sequence[tf.Tensor],
        task_batch: tf.Tensor,
        seeds: tf.Tensor,
        *,
        steps: int,
        num_trajectories: int | None = None,
        deterministic_query: bool = False,
    ) -> Collected:
        """Samples a meta-batch's episodes: before each inner step with the
        current (per-task) weights, then after the last step.

        Nothing here is differentiated: the samples are constants, and the
        inner steps taken to sample are redone, differentiably, by
        `objective`. Each later round's actions are checked to come from
        the adapted weights that round was meant to use; the first round's
        are checked against the weights being trained by
        `check_on_policy`, which `MetaRL.train_step` calls.

        Args:
            weights: The initial weights (tensors).
            task_batch: `[B, task_size]`.
            seeds: Each task's stateless seed, `[B, 2]`.
            steps: Inner steps.
            num_trajectories: Episodes per task and step. Defaults to the
                model's.
            deterministic_query: Whether the post-update episodes take the
                mean actions. Defaults to `False`.

        Returns:
            A `Collected`.
        """
        k = num_trajectories or self.num_trajectories
        # [steps + 1, B, 2]: each task's seed of each round of sampling.
        seeds = tf.transpose(
            tf.map_fn(
                lambda seed: tf.random.experimental.stateless_split(
                    seed, steps + 1
                ),
                seeds,
                fn_output_signature=tf.TensorSpec([steps + 1, 2], seeds.dtype),
            ),
            [1, 0, 2],
        )
        per_task = [
            tf.repeat(tf.stop_gradient(w)[None], tf.shape(task_batch)[0], 0)
            for w in weights
        ]
        support = []
        state = None
        for step in range(steps):
            episodes = rollout(
                self.family,
                self._policy_fn(per_task),
                task_batch,
                k,
                seeds[step],
            )
            if step:
                self._assert_on_policy(
                    self._per_task_outputs(per_task, episodes), episodes, step
                )
            advantages = self._advantages(episodes)
            support.append(Step(episodes, advantages))
            per_task, state = self._adapt_each(
                per_task, state, Step(episodes, advantages), step
            )
        query = rollout(
            self.family,
            self._policy_fn(per_task),
            task_batch,
            k,
            seeds[steps],
            deterministic=deterministic_query,
        )
        old_outputs = self._per_task_outputs(per_task, query)
        if steps:
            self._assert_on_policy(old_outputs, query, steps)
        return Collected(
            support, Step(query, self._advantages(query)), old_outputs
        )

    def check_on_policy(
        self, weights: Sequence[tf.Tensor], collected: Collected
    ) -> None:
        """Fails unless the first round of `collected` was sampled from
        `weights` (the ones a training step differentiates): the
        log-probabilities recorded when each action was chosen must match
        those `weights` give. A sampler that acted with other weights (a
        stale copy, prefetched episodes) fails here, loudly.

        Raises:
            tf.errors.InvalidArgumentError: Naming the round.
        """
        first = (
            collected.support[0] if collected.support else collected.query
        ).trajectories
        outputs = self._outputs(list(weights), first.observations)
        self._assert_on_policy(outputs, first, 0)

    def _per_task_outputs(self, per_task, episodes):
        shape = tf.shape(episodes.rewards)
        outputs = self._policy_fn(per_task)(
            tf.reshape(
                episodes.observations,
                [shape[0], -1, self.family.observation_size],
            )
        )
        return tf.reshape(outputs, [shape[0], shape[1], shape[2], -1])

    def _assert_on_policy(self, outputs, episodes, step):
        now = policies.log_prob(outputs, episodes.actions)
        masks = episodes.masks
        gap = tf.reduce_max(
            tf.reduce_sum(tf.abs(now - episodes.log_probs) * masks, [1, 2])
            / tf.maximum(tf.reduce_sum(masks, [1, 2]), 1.0)
        )
        tf.debugging.assert_less(
            gap,
            tf.constant(ON_POLICY_TOLERANCE, gap.dtype),
            message=(
                f"Off-policy samples: the episodes sampled before inner step "
                f"{step} were not drawn from the weights this training step "
                "uses (mean |log-prob difference| over a task's steps above "
                f"{ON_POLICY_TOLERANCE}); the sampler acted with other "
                "(stale?) weights."
            ),
        )

    # The objective.

    def objective(
        self, weights: Sequence[tf.Tensor], collected: Collected
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-task outer surrogates `[B]` and mean KLs `[B]` of the
        post-update policy, as functions of the initial `weights` through
        the inner steps on `collected`'s support episodes."""
        weights = list(weights)
        elems = {
            "support": [
                (s.trajectories, s.advantages) for s in collected.support
            ],
            "query": (collected.query.trajectories, collected.query.advantages),
            "old": collected.old_outputs,
        }
        if self.sampling_correction:
            elems["coefficient"] = self._score_coefficients(collected)
        dtype = collected.query.advantages.dtype

        def per_task(task):
            fast = list(weights)
            state = self.inner_optimizer.init(self._adapted_part(fast))
            log_likelihood = tf.zeros([], dtype)
            for step, (episodes, advantages) in enumerate(task["support"]):
                if self.sampling_correction:
                    # The log-likelihood of all K episodes: the score of
                    # the distribution they were sampled from.
                    log_likelihood += tf.reduce_sum(
                        self._log_probs(fast, episodes) * episodes.masks
                    )
                fast, state = self._inner_step(
                    fast, state, episodes, advantages, step
                )
            episodes, advantages = task["query"]
            with inner_loop.step_scope(len(task["support"])):
                outputs = self._outputs(fast, episodes.observations)
            log_ratio = policies.log_prob(outputs, episodes.actions) - (
                policies.log_prob(task["old"], episodes.actions)
            )
            masks = episodes.masks
            count = tf.reduce_sum(masks)
            surrogate = tf.reduce_sum(tf.exp(log_ratio) * advantages * masks)
            surrogate /= count
            if self.sampling_correction:
                surrogate += tf.stop_gradient(task["coefficient"]) * (
                    log_likelihood
                )
            kl = tf.reduce_sum(policies.kl(task["old"], outputs) * masks)
            return {"surrogate": surrogate, "kl": kl / count}

        spec = {
            "surrogate": tf.TensorSpec([], dtype),
            "kl": tf.TensorSpec([], dtype),
        }
        outputs = tasks.map_tasks(
            per_task, elems, spec, task_loop=self.task_loop
        )
        return outputs["surrogate"], outputs["kl"]

    def adapted_weights(
        self,
        observations: tf.Tensor,
        actions: tf.Tensor,
        rewards: tf.Tensor,
        *,
        masks: tf.Tensor | None = None,
        steps: int | None = None,
    ) -> list[tf.Tensor]:
        """The policy's weights after `steps` inner steps on one task's
        episodes `[K, T, ...]` (all on these episodes: at serving time
        there are no others). Defaults to `inner_steps` steps. Fails,
        naming the step, if the weights become NaN or infinite."""
        steps = self.inner_steps if steps is None else steps
        observations = tf.convert_to_tensor(observations)
        rewards = tf.debugging.assert_all_finite(
            tf.cast(rewards, observations.dtype),
            "rewards holds a NaN or infinite value",
        )
        if masks is None:
            masks = tf.ones_like(rewards)
        episodes = Trajectories(
            observations, tf.cast(actions, observations.dtype), rewards, masks
        )
        advantages = self._advantages(episodes)
        trajectory = [self._weights()]
        state = self.inner_optimizer.init(self._adapted_part(trajectory[0]))
        for step in range(steps):
            fast, state = self._inner_step(
                trajectory[-1], state, episodes, advantages, step, True
            )
            trajectory.append(fast)
        return divergence.checked_last_weights(
            trajectory,
            trained_steps=self.inner_steps,
            optimizer=self.inner_optimizer,
        )

    def _weights(self):
        return [
            tf.convert_to_tensor(v) for v in self.base_model.trainable_variables
        ]

    def _adapted_part(self, weights):
        return [w for w, a in zip(weights, self._adapted, strict=True) if a]

    def _outputs(self, weights, observations):
        """Policy outputs for observations `[..., obs]` on `weights`."""
        shape = tf.shape(observations)
        flat = tf.reshape(observations, [-1, self.family.observation_size])
        outputs, _, _ = tasks.run_network(
            self.base_model,
            weights,
            tasks.network_state(self.base_model),
            flat,
            False,
        )
        return tf.reshape(outputs, tf.concat([shape[:-1], [-1]], 0))

    def _log_probs(self, weights, episodes):
        outputs = self._outputs(weights, episodes.observations)
        return policies.log_prob(outputs, episodes.actions)

    def _inner_loss(self, weights, episodes, advantages):
        """The policy-gradient surrogate's negative: `-mean(log pi * A)`
        over the unmasked steps of one task's episodes."""
        log_probs = self._log_probs(weights, episodes)
        masks = episodes.masks
        return -tf.reduce_sum(log_probs * advantages * masks) / tf.reduce_sum(
            masks
        )

    def _inner_step(
        self, weights, state, episodes, advantages, step, first_order=None
    ):
        return inner_loop.inner_step(
            lambda w, x, y: self._inner_loss(w, x, y),
            weights,
            state,
            episodes,
            advantages,
            step=step,
            optimizer=self.inner_optimizer,
            first_order=self.first_order_now()
            if first_order is None
            else first_order,
            adapted=self._adapted,
        )

    def _advantages(self, episodes):
        return returns.advantages(
            episodes.observations,
            episodes.rewards,
            episodes.masks,
            discount=self.discount,
            gae_lambda=self.gae_lambda,
            baseline=self.baseline,
            normalized=self.normalize_advantages,
        )

    def _adapt_each(self, per_task, state, step_data, step):
        """One inner step of every task from its own weights (sampling)."""
        if state is None:  # The first step: every task's initial state.
            first = self.inner_optimizer.init(
                self._adapted_part([w[0] for w in per_task])
            )
            state = tf.nest.map_structure(
                lambda s: tf.repeat(s[None], tf.shape(per_task[0])[0], 0),
                first,
            )

        def one(task):
            new, new_state = self._inner_step(
                task["weights"],
                task["state"],
                task["episodes"],
                task["advantages"],
                step,
                first_order=True,
            )
            return {"weights": new, "state": new_state}

        elems = {
            "weights": per_task,
            "state": state,
            "episodes": step_data.trajectories,
            "advantages": step_data.advantages,
        }
        spec = {
            "weights": [tf.TensorSpec(w.shape[1:], w.dtype) for w in per_task],
            "state": tf.nest.map_structure(
                lambda s: tf.TensorSpec(s.shape[1:], s.dtype), state
            ),
        }
        out = tasks.map_tasks(one, elems, spec, task_loop=self.task_loop)
        return [tf.stop_gradient(w) for w in out["weights"]], out["state"]

    def _policy_fn(self, per_task):
        """Observations `[B, K, obs]` -> outputs, each task on its weights."""

        def policy(observations):
            def one(task):
                return self._outputs(task["weights"], task["observations"])

            return tf.vectorized_map(
                one, {"weights": per_task, "observations": observations}
            )

        return policy

    def _score_coefficients(self, collected):
        """Per task: its post-update mean return per step, minus the mean
        over the other tasks (a baseline that keeps it unbiased)."""
        query = collected.query.trajectories
        per_step = tf.reduce_mean(query.returns(), axis=1) / tf.cast(
            tf.shape(query.rewards)[-1], query.rewards.dtype
        )
        count = tf.cast(tf.shape(per_step)[0], per_step.dtype)
        others = (tf.reduce_sum(per_step) - per_step) / tf.maximum(
            count - 1.0, 1.0
        )
        return per_step - tf.where(count > 1.0, others, tf.zeros_like(others))
