"""Meta-RL: the meta-gradient estimator against closed forms, the
deterministic parts against finite differences and loops, dynamics,
rollouts and bad input."""

import pathlib
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmaml import rl
from tfmaml.rl import returns
from tfmaml.rl import trpo


class OneStepQuadratic:
    """A one-step task family with a closed-form meta-objective: the
    observation is always 1, the reward of action `a` is `-(a - goal)^2`."""

    observation_size = 1
    action_size = 1
    task_size = 1
    horizon = 1

    def sample_tasks(self, count, seed):
        return tf.random.stateless_uniform([count, 1], seed, -1.0, 1.0)

    def reset(self, tasks, seeds):
        return tf.ones_like(tasks)

    def step(self, tasks, observations, actions):
        reward = -tf.square(actions[:, 0] - tasks[:, 0])
        return observations, reward, tf.zeros_like(reward, tf.bool)


def _linear_gaussian_policy(mean, log_std):
    """Mean action `mean` (the one weight), fixed standard deviation."""
    std_layer = rl.StateIndependentLogStd(log_std)
    policy = keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(
                1,
                use_bias=False,
                kernel_initializer=keras.initializers.Constant(mean),
            ),
            std_layer,
        ]
    )
    std_layer.trainable = False
    return policy


MEAN, GOAL, SIGMA, ALPHA, K = 0.3, -0.2, 1.0, 0.1, 5


def _closed_forms():
    """Expected meta-gradients in the mean for `J(mu) = -(mu - g)^2 -
    sigma^2`, the inner step `mu' = mu + alpha * g_hat` with the REINFORCE
    estimate `g_hat` of K samples (no baseline), derived by hand."""
    d, s2, a, k = MEAN - GOAL, SIGMA**2, ALPHA, K
    first_order = -2 * d * (1 - 2 * a)
    # The paper's estimator: the pre-update samples held fixed.
    paper = (
        first_order
        - 2 * a * d / s2 * (d**2 + s2)
        + 2
        * a**2
        / (k * s2)
        * (4 * d**3 + 12 * d * s2 + 2 * d * (k - 1) * (d**2 + s2))
    )
    # The true gradient of E[J(mu')], the sampling included.
    unbiased = -2 * (1 - 2 * a) ** 2 * d - a**2 / (k * s2**2) * (
        4 * d**3 * s2 + 28 * d * s2**2
    )
    return {"first_order": first_order, "paper": paper, "unbiased": unbiased}


@pytest.mark.parametrize("estimator", ["first_order", "paper", "unbiased"])
def test_meta_gradient_estimator_matches_its_closed_form(float64, estimator):
    model = rl.MetaRL(
        _linear_gaussian_policy(MEAN, np.log(SIGMA)),
        OneStepQuadratic(),
        inner_lr=ALPHA,
        num_trajectories=K,
        baseline="zero",
        normalize_advantages=False,
        discount=1.0,
        outer="policy_gradient",
        first_order=estimator == "first_order",
        sampling_correction=estimator == "unbiased",
    )
    tasks = tf.fill([400, 1], tf.constant(GOAL, tf.float64))
    estimate = tf.function(
        lambda seeds: model.meta_gradient(tasks, seeds)[0][0, 0]
    )
    samples = np.array(
        [
            float(
                estimate(
                    tf.random.stateless_uniform(
                        [400, 2], [7, i], maxval=2**30, dtype=tf.int64
                    )
                )
            )
            for i in range(100)
        ]
    )
    mean = samples.mean()
    error = samples.std(ddof=1) / np.sqrt(len(samples))
    expected = _closed_forms()
    assert abs(mean - expected[estimator]) < 3 * error, (mean, error, expected)
    # The test can tell the estimators apart.
    others = [v for k, v in expected.items() if k != estimator]
    assert all(abs(mean - v) > 3 * error for v in others), (mean, error)


def test_discounted_cumsum_and_gae_match_loops():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(3, 6))
    values = rng.normal(size=(3, 6))
    masks = np.ones((3, 6))
    masks[1, 4:] = 0.0  # Episode 1 terminated at step 3.
    discount, lam = 0.9, 0.8
    expected_returns = np.zeros_like(rewards)
    expected_gae = np.zeros_like(rewards)
    for k in range(3):
        later_return = later_gae = 0.0
        for t in reversed(range(6)):
            r, v = rewards[k, t] * masks[k, t], values[k, t] * masks[k, t]
            later_return = r + discount * later_return
            expected_returns[k, t] = later_return
            next_v = values[k, t + 1] * masks[k, t + 1] if t < 5 else 0.0
            delta = (r + discount * next_v - v) * masks[k, t]
            later_gae = delta + discount * lam * later_gae
            expected_gae[k, t] = later_gae * masks[k, t]
    np.testing.assert_allclose(
        returns.discounted_cumsum(tf.constant(rewards * masks), discount),
        expected_returns,
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        returns.gae(
            tf.constant(rewards),
            tf.constant(values),
            tf.constant(masks),
            discount=discount,
            gae_lambda=lam,
        ),
        expected_gae,
        rtol=1e-12,
    )


def test_linear_baseline_is_the_ridge_minimiser():
    rng = np.random.default_rng(1)
    observations = tf.constant(rng.normal(size=(4, 7, 2)))
    targets = tf.constant(rng.normal(size=(4, 7)))
    masks = np.ones((4, 7))
    masks[2, 5:] = 0.0
    masks = tf.constant(masks)
    weights = returns.fit_linear_baseline(observations, targets, masks)
    features = returns.baseline_features(observations).numpy().reshape(-1, 8)

    def objective(w):
        residual = features @ w - targets.numpy().reshape(-1)
        return np.sum(masks.numpy().reshape(-1) * residual**2) + 1e-5 * w @ w

    w = weights.numpy()
    gradient = np.array(
        [(objective(w + e) - objective(w - e)) / 2e-6 for e in 1e-6 * np.eye(8)]
    )
    assert np.abs(gradient).max() < 1e-5
    # And any move away from it costs.
    for e in rng.normal(size=(5, 8)) * 1e-2:
        assert objective(w + e) > objective(w)


def test_inner_step_is_sgd_on_the_policy_gradient_surrogate(float64):
    keras.utils.set_random_seed(0)
    policy = rl.gaussian_mlp(2, 2, hidden_units=(5,), activation="tanh")
    model = rl.MetaRL(policy, rl.Navigation2D(horizon=4), inner_lr=0.3)
    rng = np.random.default_rng(2)
    observations = tf.constant(rng.normal(size=(3, 4, 2)))
    actions = tf.constant(rng.normal(size=(3, 4, 2)))
    rewards = tf.constant(rng.normal(size=(3, 4)))
    adapted = model.adapted_weights(observations, actions, rewards)
    episodes = rl.Trajectories(
        observations, actions, rewards, tf.ones_like(rewards)
    )
    advantages = model._advantages(episodes)
    initial = [v.numpy() for v in policy.trainable_variables]
    for i, weight in enumerate(initial):
        numeric = np.zeros_like(weight)
        for index in np.ndindex(weight.shape):
            values = []
            for sign in (1.0, -1.0):
                moved = [w.copy() for w in initial]
                moved[i][index] += sign * 1e-6
                values.append(
                    float(
                        model._inner_loss(
                            [tf.constant(m) for m in moved],
                            episodes,
                            advantages,
                        )
                    )
                )
            numeric[index] = (values[0] - values[1]) / 2e-6
        np.testing.assert_allclose(
            adapted[i], weight - 0.3 * numeric, rtol=1e-6, atol=1e-9
        )


def test_conjugate_gradient_solves_a_positive_definite_system(float64):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 6))
    matrix = tf.constant(a @ a.T + 6 * np.eye(6))
    b = tf.constant(rng.normal(size=6))
    x = trpo.conjugate_gradient(
        lambda v: tf.linalg.matvec(matrix, v), b, iterations=20
    )
    np.testing.assert_allclose(tf.linalg.matvec(matrix, x), b, atol=1e-8)


def test_navigation_dynamics_clip_reward_and_terminate():
    family = rl.Navigation2D()
    goals = tf.constant([[0.05, 0.0], [0.3, -0.2]])
    start = family.reset(goals, None)
    np.testing.assert_array_equal(start, np.zeros((2, 2)))
    position, reward, terminated = family.step(
        goals, start, tf.constant([[0.5, 0.0], [7.0, -7.0]])
    )
    # Actions are clipped to [-1, 1] and scaled to velocities of 0.1.
    np.testing.assert_allclose(position, [[0.05, 0.0], [0.1, -0.1]])
    np.testing.assert_allclose(reward, [0.0, -np.hypot(0.2, 0.1)], atol=1e-7)
    np.testing.assert_array_equal(terminated, [True, False])


def test_rollouts_are_seeded_and_masked_after_termination():
    family = rl.Navigation2D(horizon=5)
    policy = rl.gaussian_mlp(2, 2)
    goals = tf.constant([[0.05, 0.0], [0.4, 0.4]])

    def toward_goal(observations):
        # Mean action pointing at goal 0 with a tiny spread.
        mean = tf.broadcast_to(tf.constant([0.5, 0.0]), tf.shape(observations))
        return tf.concat([mean, tf.fill(tf.shape(mean), -20.0)], -1)

    seeds = tf.constant([[1, 2], [3, 4]])
    first = rl.rollout(family, toward_goal, goals, 3, seeds)
    again = rl.rollout(family, toward_goal, goals, 3, seeds)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    # Task 0 reaches its goal at the first step: the rest is masked.
    np.testing.assert_array_equal(first.masks[0], [[1, 0, 0, 0, 0]] * 3)
    np.testing.assert_array_equal(first.masks[1], np.ones((3, 5)))
    assert float(tf.reduce_sum(first.rewards[0, :, 1:] ** 2)) == 0.0
    # A policy network works the same way, noise from the seed.
    other = rl.rollout(
        family,
        lambda o: tf.reshape(policy(tf.reshape(o, [-1, 2])), [2, 3, 4]),
        goals,
        3,
        seeds,
    )
    assert other.observations.shape == (2, 3, 5, 2)
    # A task's episodes do not depend on the other tasks of the batch.
    alone = rl.rollout(family, toward_goal, goals[1:], 3, seeds[1:])
    np.testing.assert_array_equal(alone.actions[0], first.actions[1])


class _BrokenNavigation(rl.Navigation2D):
    def step(self, tasks, observations, actions):
        position, reward, terminated = super().step(
            tasks, observations, actions
        )
        return position, reward / 0.0 * 0.0, terminated  # NaN


def test_non_finite_rewards_are_an_error_not_a_quiet_nan():
    family = _BrokenNavigation(horizon=3)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="_BrokenNavigation.step.*NaN"
    ):
        rl.rollout(
            family,
            lambda o: tf.zeros([*o.shape[:2], 4]),
            tf.zeros([2, 2]),
            2,
            tf.zeros([2, 2], tf.int32),
        )
    model = rl.MetaRL(rl.gaussian_mlp(2, 2), rl.Navigation2D(horizon=3))
    rewards = np.array([[0.0, np.inf, 0.0], [0.0, 0.0, 0.0]], "float32")
    with pytest.raises(tf.errors.InvalidArgumentError, match="rewards"):
        model.adapted_weights(
            np.zeros((2, 3, 2), "float32"),
            np.zeros((2, 3, 2), "float32"),
            rewards,
        )


def test_bad_input_is_named():
    family = rl.Navigation2D()
    with pytest.raises(ValueError, match=r"observations \[N, 2\].*\[N, 4\]"):
        rl.MetaRL(rl.gaussian_mlp(3, 2), family)
    with pytest.raises(ValueError, match=r"\[N, 4\].*output shape \(6,\)"):
        rl.MetaRL(rl.gaussian_mlp(2, 3), family)
    with pytest.raises(ValueError, match="num_trajectories.*>= 2.*=1"):
        rl.MetaRL(rl.gaussian_mlp(2, 2), family, num_trajectories=1)
    with pytest.raises(ValueError, match="horizon.*>= 1.*=0"):
        rl.Navigation2D(horizon=0)
    with pytest.raises(ValueError, match="outer.*'ppo'"):
        rl.MetaRL(rl.gaussian_mlp(2, 2), family, outer="ppo")
    model = rl.MetaRL(rl.gaussian_mlp(2, 2), family)
    with pytest.raises(ValueError, match=r"SGD\(1.0\)"):
        model.compile(keras.optimizers.Adam(1e-3))
    model.compile()
    with pytest.raises(ValueError, match=r"tasks.*\[meta_batch, 2\]"):
        model.train_on_batch(
            {
                "tasks": np.zeros((4, 3), "float32"),
                "seeds": np.zeros(2, "int64"),
            }
        )


def _trained_navigation_model():
    keras.utils.set_random_seed(0)
    family = rl.Navigation2D(horizon=10)
    model = rl.MetaRL(
        rl.gaussian_mlp(2, 2, hidden_units=(16, 16)),
        family,
        inner_lr=0.5,
        num_trajectories=4,
    )
    model.compile()
    model.fit(
        rl.task_batches(family, 4, seed=0),
        steps_per_epoch=2,
        verbose=0,
        shuffle=False,
    )
    return model


@pytest.mark.slow
def test_export_adapts_like_the_model_in_a_process_without_tfmaml(
    tmp_path, run_without_tfmaml
):
    model = _trained_navigation_model()
    model.export(tmp_path / "saved")
    rng = np.random.default_rng(0)
    episodes = dict(
        observations=rng.normal(size=(3, 10, 2)).astype("float32"),
        actions=rng.normal(size=(3, 10, 2)).astype("float32"),
        rewards=rng.normal(size=(3, 10)).astype("float32"),
        query_observations=rng.normal(size=(5, 2)).astype("float32"),
    )
    np.savez(tmp_path / "task.npz", **episodes)
    result = run_without_tfmaml(
        """
        import numpy as np
        import tensorflow as tf
        served = tf.saved_model.load("saved")
        task = dict(np.load("task.npz"))
        adapted = served.adapt_and_act(**task)
        plain = served.act(observations=task["query_observations"])
        np.savez("out.npz", adapted=adapted["actions"],
                 steps=adapted["inner_steps"], plain=plain["actions"],
                 stddev=plain["stddev"])
        bad = dict(task, rewards=np.where(
            np.arange(10) == 3, np.nan, task["rewards"]).astype("float32"))
        try:
            served.adapt_and_act(**bad)
        except tf.errors.InvalidArgumentError as error:
            print("refused:", " ".join(error.message.split()))
        for name in ("observations", "actions", "query_observations"):
            bad = dict(task)
            bad[name] = np.where(np.arange(bad[name].shape[-1]) == 0,
                                 np.inf, bad[name]).astype("float32")
            try:
                served.adapt_and_act(**bad)
            except tf.errors.InvalidArgumentError as error:
                print("refused:", " ".join(error.message.split()))
        one = {k: v[:1] if k != "query_observations" else v
               for k, v in task.items()}
        try:
            served.adapt_and_act(**one)
        except tf.errors.InvalidArgumentError as error:
            print("refused:", " ".join(error.message.split()))
        """,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    fast = model.adapted_weights(
        episodes["observations"], episodes["actions"], episodes["rewards"]
    )
    expected = model.act(episodes["query_observations"], fast, 1)
    np.testing.assert_allclose(out["adapted"], expected, atol=1e-5)
    np.testing.assert_allclose(
        out["plain"], model.act(episodes["query_observations"]), atol=1e-6
    )
    assert int(out["steps"]) == 1
    assert np.abs(out["adapted"] - out["plain"]).max() > 1e-4
    np.testing.assert_allclose(
        out["stddev"],
        np.exp(model.base_model.get_layer("log_std").log_std.numpy()),
        rtol=1e-6,
    )
    refusals = [
        line for line in result.stdout.splitlines() if "refused" in line
    ]
    assert "rewards holds a NaN" in refusals[0]
    for line, name in zip(
        refusals[1:4],
        ("observations", "actions", "query_observations"),
        strict=True,
    ):
        assert f"{name} holds a NaN or infinite value" in line
    assert "at least 2 episodes" in refusals[4]


@pytest.mark.slow
def test_keras_round_trip_keeps_the_policy_and_its_adaptation(tmp_path):
    model = _trained_navigation_model()
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.family, rl.Navigation2D)
    assert loaded.family.horizon == 10 and loaded.inner_steps == 1
    rng = np.random.default_rng(1)
    observations = rng.normal(size=(2, 10, 2)).astype("float32")
    actions = rng.normal(size=(2, 10, 2)).astype("float32")
    rewards = rng.normal(size=(2, 10)).astype("float32")
    query = rng.normal(size=(4, 2)).astype("float32")
    for m in (model, loaded):
        fast = m.adapted_weights(observations, actions, rewards)
        m.result = m.act(query, fast, 1)
    np.testing.assert_allclose(loaded.result, model.result, atol=1e-6)
    # Training goes on from the loaded optimizer state.
    loaded.fit(
        rl.task_batches(loaded.family, 4, seed=5),
        steps_per_epoch=1,
        verbose=0,
        shuffle=False,
    )


@pytest.mark.slow
def test_fit_improves_the_adapted_return_on_navigation():
    keras.utils.set_random_seed(0)
    family = rl.Navigation2D(horizon=20)
    model = rl.MetaRL(
        rl.gaussian_mlp(2, 2, hidden_units=(32, 32)),
        family,
        inner_lr=0.5,
        num_trajectories=10,
    )
    model.compile()
    test_tasks = family.sample_tasks(20, tf.constant([9, 9], tf.int64))
    before = rl.evaluate_returns(
        model, test_tasks, step_counts=(1,), num_trajectories=10
    )[0]
    model.fit(
        rl.task_batches(family, 10, seed=0),
        steps_per_epoch=15,
        verbose=0,
        shuffle=False,
    )
    after = rl.evaluate_returns(
        model, test_tasks, step_counts=(1,), num_trajectories=10
    )[0]
    assert after.mean > before.mean + before.ci95 + after.ci95, (before, after)


@pytest.mark.slow
def test_meta_rl_training_resumes_at_the_exact_step(tmp_path):
    from tfmaml import experiment
    from tfmaml import training
    from tfmaml.configs import navigation2d

    config = navigation2d.get_config("smoke")

    def data(start):
        return experiment.build_splits(config, train_start=start).train

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if training.optimizer_step(self.model) == 3:
                raise KeyboardInterrupt

    def fresh():
        keras.utils.set_random_seed(0)
        return experiment.build_model(config)

    arguments = dict(total_steps=4, steps_per_epoch=2, save_freq=1)
    whole = fresh()
    training.fit_resumable(
        whole, data, backup_dir=str(tmp_path / "a"), verbose=0, **arguments
    )
    killed = fresh()
    with pytest.raises(KeyboardInterrupt):
        training.fit_resumable(
            killed,
            data,
            backup_dir=str(tmp_path / "b"),
            callbacks=[Kill()],
            verbose=0,
            **arguments,
        )
    resumed = fresh()
    start = training.fit_resumable(
        resumed, data, backup_dir=str(tmp_path / "b"), verbose=0, **arguments
    )
    assert start == 2
    for a, b in zip(whole.variables, resumed.variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    moved = fresh()
    assert any(
        np.abs(a.numpy() - b.numpy()).max() > 1e-3
        for a, b in zip(
            whole.trainable_variables, moved.trainable_variables, strict=True
        )
    )


@pytest.mark.slow
def test_the_shipped_navigation_policy_adapts_to_a_new_goal(
    tmp_path, run_without_tfmaml
):
    # saved_models/navigation2d is what `python -m tfmaml.train
    # --config=configs/navigation2d.py` exports; episodes are simulated in
    # NumPy by a client without tfmaml.
    repo = pathlib.Path(__file__).resolve().parent.parent
    shutil.copytree(repo / "saved_models" / "navigation2d", tmp_path / "saved")
    result = run_without_tfmaml(
        """
        import numpy as np
        import tensorflow as tf
        served = tf.saved_model.load("saved")
        rng = np.random.default_rng(0)
        stddev = served.act(observations=np.zeros((1, 2), "float32"))[
            "stddev"].numpy()

        def episodes(mean_actions, goal, count=20):
            position = np.zeros((count, 2), "float32")
            o, a, r = [], [], []
            for _ in range(100):
                action = mean_actions(position) + stddev * rng.normal(
                    size=(count, 2))
                o.append(position)
                a.append(action.astype("float32"))
                position = (position + 0.1 * np.clip(action, -1, 1)).astype(
                    "float32")
                r.append(-np.linalg.norm(position - goal, axis=1))
            return [np.stack(x, 1).astype("float32") for x in (o, a, r)]

        for goal in ([0.3, -0.4], [-0.45, 0.1], [0.0, 0.35]):
            goal = np.array(goal, "float32")
            obs, act, rew = episodes(
                lambda p: served.act(observations=p)["actions"].numpy(), goal)
            adapted = lambda p: served.adapt_and_act(
                observations=obs, actions=act, rewards=rew,
                query_observations=p)["actions"].numpy()
            after = episodes(adapted, goal)[2]
            print(rew.sum(1).mean(), after.sum(1).mean())
        """
    )
    for line in result.stdout.strip().splitlines():
        before, after = map(float, line.split())
        # One step on 20 episodes brings the agent to the goal.
        assert after > before + 15.0 and after > -20.0, (before, after)
