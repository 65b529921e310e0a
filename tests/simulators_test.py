"""Simulated task families: a Gymnasium environment in worker processes
gives exactly what its in-graph twin gives (episodes, meta-gradient), the
pool keeps rows, tasks and termination straight and refuses answers to
other requests, stale sampling weights fail loudly, and the half-cheetah
and Meta-World families behave as their definitions say."""

import pathlib

import gymnasium as gym
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmaml import experiment
from tfmaml import rl
from tfmaml import rl_tasks
from tfmaml.configs import cheetah_direction
from tfmaml.configs import cheetah_velocity
from tfmaml.configs import metaworld_ml1
from tfmaml.configs import metaworld_ml10
from tfmaml.rl.env_pool import EnvPool

SPEED, TOLERANCE = 0.1, 0.05


class LineEnv(gym.Env):
    """A point on a line moves by `0.1 * clip(a, -1, 1)` towards a goal
    (the task); reward minus the distance after the move; terminates (and
    succeeds) within 0.05 of the goal. `random_start` draws the start from
    the reset seed; `limit` truncates episodes (a short time limit)."""

    def __init__(self, random_start=False, limit=None):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), float)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), float)
        self.random_start = random_start
        self.limit = limit
        self.goal = 0.0

    def set_task(self, task):
        self.goal = float(task[0])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1) if self.random_start else 0.0
        self.t = 0
        return np.array([self.x]), {}

    def step(self, action):
        self.x += SPEED * float(np.clip(action[0], -1.0, 1.0))
        self.t += 1
        distance = abs(self.x - self.goal)
        done = distance < TOLERANCE
        truncated = self.limit is not None and self.t >= self.limit
        return np.array([self.x]), -distance, done, truncated, {"success": done}


gym.register("tfmaml_test/Line-v0", entry_point=LineEnv)


class LineTwin:
    """`LineEnv` as TensorFlow ops (an in-graph task family)."""

    observation_size = action_size = task_size = 1
    info_keys = ("success",)

    def __init__(self, horizon):
        self.horizon = horizon

    def reset(self, tasks, seeds):
        return tf.zeros_like(tasks)

    def step(self, tasks, observations, actions):
        x = observations + SPEED * tf.clip_by_value(actions, -1.0, 1.0)
        distance = tf.abs(x - tasks)[:, 0]
        done = distance < TOLERANCE
        return x, -distance, done, tf.cast(done, tf.float32)[:, None]


def _line_family(num_workers, horizon=6, **env_kwargs):
    return rl.GymnasiumFamily(
        "tfmaml_test/Line-v0",
        1,
        1,
        horizon=horizon,
        task_low=[-0.3],
        task_high=[0.3],
        env_kwargs=env_kwargs,
        info_keys=["success"],
        num_workers=num_workers,
    )


def _model(family, seed=0):
    keras.utils.set_random_seed(seed)
    model = rl.MetaRL(
        rl.gaussian_mlp(1, 1, hidden_units=(8,), initial_log_std=-1.0),
        family,
        inner_lr=0.3,
        num_trajectories=3,
        outer="policy_gradient",
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    return model


TASKS = tf.constant([[0.25], [-0.2], [0.13], [-0.17], [0.3]])
SEEDS = tf.constant([[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]], tf.int64)


@pytest.mark.parametrize("num_workers", [1, 2])
def test_simulated_family_matches_its_in_graph_twin(num_workers):
    twin = _model(LineTwin(horizon=6))
    family = _line_family(num_workers)
    simulated = _model(family)
    simulated.set_weights(twin.get_weights())
    runs = []
    for model in (twin, simulated):
        collected = model.collect(
            model._weights(), TASKS, SEEDS, steps=1, num_trajectories=3
        )
        runs.append(
            (collected, model.meta_gradient(TASKS, SEEDS), model.family)
        )
    (a, grad_a, _), (b, grad_b, _) = runs
    for x, y in (
        (a.support[0].trajectories, b.support[0].trajectories),
        (a.query.trajectories, b.query.trajectories),
    ):
        # Equal while the episodes run (after, the twin keeps moving).
        np.testing.assert_array_equal(x.masks, y.masks)
        for u, v in zip(x, y, strict=True):
            mask = x.masks.numpy().reshape(x.masks.shape + (1,) * (u.ndim - 3))
            np.testing.assert_allclose(u * mask, v * mask, rtol=1e-5, atol=1e-6)
    # Some episodes terminated (and succeeded) early: masks were exercised.
    assert 0 < a.query.trajectories.masks.numpy().mean() < 1
    for x, y in zip(grad_a, grad_b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    assert max(float(tf.reduce_max(tf.abs(g))) for g in grad_b) > 1e-3
    family.close()


def test_pool_keeps_rows_tasks_and_seeds_and_stops_terminated_episodes():
    pool = EnvPool(_line_family(2, random_start=True).env_factory(), 2, 1, 1, 6)
    tasks = np.array([[0.05], [0.5], [-0.5]])
    first = pool.reset(tasks, np.array([7, 8, 7]))
    # Each row's start comes from its own seed: rows 0 and 2 share one.
    assert first[0, 0] == first[2, 0] != first[1, 0]
    again = pool.reset(tasks, np.array([7, 8, 7]))
    np.testing.assert_array_equal(first, again)
    start = pool.reset(np.array([[9.0]] * 3), np.array([0, 0, 0]))
    np.testing.assert_array_equal(start, start[:1].repeat(3, 0))
    goals = start[:, 0] + np.array([0.1, -0.3, 0.3])
    pool.reset(goals[:, None], np.array([0, 0, 0]))
    actions = np.array([[1.0], [-1.0], [5.0]])  # The last is clipped to 1.
    obs, rewards, terminated, infos = pool.step(actions)
    np.testing.assert_allclose(obs[:, 0], start[:, 0] + [0.1, -0.1, 0.1])
    np.testing.assert_allclose(rewards, -np.abs(obs[:, 0] - goals))
    np.testing.assert_array_equal(terminated, [1, 0, 0])
    np.testing.assert_array_equal(infos[:, 0], [1, 0, 0])
    # Row 0 terminated: it is not stepped again and earns nothing.
    obs2, rewards2, terminated2, _ = pool.step(actions)
    assert obs2[0, 0] == obs[0, 0] and rewards2[0] == 0.0
    np.testing.assert_allclose(obs2[1:, 0], obs[1:, 0] + [-0.1, 0.1])
    # A larger request restarts the workers with room for it.
    many = pool.reset(np.zeros((9, 1)), np.arange(9))
    assert many.shape == (9, 1)
    pool.close()


def test_pool_refuses_an_answer_to_another_request(monkeypatch):
    pool = EnvPool(_line_family(2).env_factory(), 2, 1, 1, 6)
    pool.reset(np.zeros((4, 1)), np.arange(4))
    pool.step(np.zeros((4, 1)))
    step = pool._vector.step

    def lagging(actions):  # A worker answering the previous request.
        answer, *rest = step(actions)
        answer["sequence"][1] -= 1
        return (answer, *rest)

    monkeypatch.setattr(pool._vector, "step", lagging)
    with pytest.raises(RuntimeError, match=r"Worker\(s\) \[1\] answered"):
        pool.step(np.zeros((4, 1)))
    pool.close()


def test_an_environment_truncating_before_the_horizon_is_named():
    family = _line_family(1, horizon=6, limit=3)
    with pytest.raises(Exception, match="truncated its episode after 3 steps"):
        family.pool.reset(np.full((2, 1), 9.0), np.arange(2))
        for _ in range(3):
            family.pool.step(np.zeros((2, 1)))
    family.close()


class StaleSampler(rl.MetaRL):
    """Samples with the weights of the previous training step (what a
    sampler that prefetches episodes, or holds its own copy of the
    policy, would do), while the update differentiates the current ones."""

    def collect(self, weights, *args, **kwargs):
        if not hasattr(self, "_previous"):
            self._previous = [
                tf.Variable(w, trainable=False) for w in self._weights()
            ]
        sampling = [tf.convert_to_tensor(p) for p in self._previous]
        collected = super().collect(sampling, *args, **kwargs)
        for p, w in zip(self._previous, weights, strict=True):
            p.assign(w)
        return collected


def test_samples_from_stale_weights_fail_loudly():
    family = _line_family(2)
    batches = rl.task_batches(family, 3, seed=0)
    honest = _model(family)
    history = honest.fit(batches, steps_per_epoch=3, verbose=0)
    assert len(history.history["return"]) == 1
    keras.utils.set_random_seed(0)
    stale = StaleSampler(
        rl.gaussian_mlp(1, 1, hidden_units=(8,), initial_log_std=-1.0),
        family,
        inner_lr=0.3,
        num_trajectories=3,
        outer="policy_gradient",
    )
    stale.compile(optimizer=keras.optimizers.Adam(0.05))
    # Step 1 samples with the initial weights, which are also current...
    stale.fit(batches, steps_per_epoch=1, verbose=0)
    # ...step 2 samples with step 1's weights: refused.
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="Off-policy samples"
    ):
        stale.fit(batches, steps_per_epoch=1, verbose=0)
    family.close()


def test_success_rate_is_the_fraction_of_episodes_that_ever_succeed():
    model = _model(LineTwin(horizon=6))
    results = rl.evaluate_returns(
        model, TASKS, step_counts=(0, 1), num_trajectories=4, seed=3
    )
    rollouts = rl.evaluation.sample_adaptation(
        model, TASKS, steps=1, num_trajectories=4, seed=3
    )
    # Recompute from the episodes: the last position before the mask ends.
    collected = model.collect(
        model._weights(),
        TASKS,
        tf.random.experimental.stateless_split(
            tf.constant([3, 0], tf.int64), 5
        ),
        steps=1,
        num_trajectories=4,
    )
    for step, episodes in enumerate(
        [collected.support[0].trajectories, collected.query.trajectories]
    ):
        ever = (episodes.infos.numpy()[..., 0] > 0).any(axis=-1)
        np.testing.assert_allclose(
            rollouts.successes[:, step], ever.mean(axis=1)
        )
        assert results[step].success == pytest.approx(ever.mean(axis=1).mean())
    table = rl.format_returns(results)
    assert "success rate" in table and "%" in table


def _cheetah_rewards(objective, task, seed=3, steps=20):
    """Our task env's rewards beside Gymnasium's own HalfCheetah v5 (same
    control cost weight) on the same seed and actions."""
    ours = gym.make(f"tfmaml/HalfCheetah{objective}-v5")
    reference = gym.make("HalfCheetah-v5", ctrl_cost_weight=0.05)
    ours.unwrapped.set_task([task])
    ours.reset(seed=seed)
    reference.reset(seed=seed)
    rng = np.random.default_rng(seed)
    rewards, expected = [], []
    for _ in range(steps):
        action = rng.uniform(-1, 1, 6)
        _, reward, *_ = ours.step(action)
        _, _, _, _, info = reference.step(action)
        cost = 0.05 * np.sum(np.square(action))
        velocity = info["x_velocity"]
        rewards.append(reward)
        if objective == "Direction":
            expected.append(task * velocity - cost)
        else:
            expected.append(-abs(velocity - task) - cost)
    return np.array(rewards), np.array(expected)


@pytest.mark.parametrize(
    "objective,task",
    [("Direction", -1.0), ("Direction", 1.0), ("Velocity", 1.3)],
)
def test_half_cheetah_rewards_follow_the_task(objective, task):
    import tfmaml.rl.locomotion_envs  # noqa: F401  (registers the ids)

    rewards, expected = _cheetah_rewards(objective, task)
    np.testing.assert_allclose(rewards, expected, rtol=1e-9, atol=1e-9)
    env = gym.make(f"tfmaml/HalfCheetah{objective}-v5").unwrapped
    with pytest.raises(ValueError, match="one finite number"):
        env.set_task([np.nan])


def test_cheetah_tasks_follow_the_paper():
    seed = tf.constant([4, 2], tf.int64)
    directions = rl.HalfCheetahDirection().sample_tasks(400, seed).numpy()
    assert set(directions[:, 0]) == {-1.0, 1.0}
    assert 0.4 < (directions == 1.0).mean() < 0.6
    goals = rl.HalfCheetahVelocity().sample_tasks(400, seed).numpy()
    assert goals.min() >= 0.0 and goals.max() <= 2.0 and goals.std() > 0.5


def test_metaworld_steps_records_success_and_holds_out_test_tasks():
    family = rl.MetaWorld("ML1", env_name="reach-v3", horizon=5, num_workers=2)
    seed = tf.constant([1, 1], tf.int64)
    train = family.sample_tasks(3, seed)
    test = family.sample_held_out_tasks(3, seed)
    np.testing.assert_array_equal(train[:, 0], 0.0)
    np.testing.assert_array_equal(test[:, 0], 1.0)
    assert family.num_tasks == (50, 50)
    tasks = tf.concat([train, test], 0)
    observations = family.reset(tasks, tf.range(6, dtype=tf.int64))
    assert observations.shape == (6, 39)
    out = family.step(tasks, observations, tf.zeros([6, 4]))
    assert [t.shape for t in out] == [(6, 39), (6,), (6,), (6, 1)]
    assert set(np.unique(out[3])) <= {0.0, 1.0}
    # Held-out tasks have other goals: the same actions earn other rewards.
    assert not np.allclose(out[1][:3], out[1][3:])
    family.close()


def test_simulated_families_refuse_bad_arguments():
    with pytest.raises(ValueError, match="either `task_low` and `task_high`"):
        rl.GymnasiumFamily("tfmaml_test/Line-v0", 1, 1, horizon=3)
    with pytest.raises(ValueError, match="task_low <= task_high"):
        rl.GymnasiumFamily(
            "tfmaml_test/Line-v0", 1, 1, horizon=3, task_low=[1], task_high=[0]
        )
    with pytest.raises(ValueError, match="`env_name` must be a Meta-World"):
        rl.MetaWorld("ML1", env_name="fly-v3")
    with pytest.raises(ValueError, match="at most 500"):
        rl.MetaWorld("ML1", horizon=600)
    with pytest.raises(ValueError, match="`benchmark` must be one of"):
        rl.MetaWorld("ML45")
    with pytest.raises(ValueError, match="`num_workers` must be"):
        rl.HalfCheetahDirection(num_workers=0)


CONFIGS = {
    "cheetah_direction": cheetah_direction.get_config("smoke"),
    "cheetah_velocity": cheetah_velocity.get_config("smoke"),
    "metaworld_ml1": metaworld_ml1.get_config("push-v3,smoke"),
    "metaworld_ml10": metaworld_ml10.get_config("smoke"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_configs_train_evaluate_and_round_trip(name, tmp_path):
    config = CONFIGS[name]
    splits = experiment.build_splits(config)
    model = experiment.build_model(config)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(splits.train, steps_per_epoch=2, verbose=0)
    assert np.isfinite(history.history["return"]).all()
    assert any(
        not np.allclose(a, b)
        for a, b in zip(before, model.get_weights(), strict=True)
    )
    task_batch = next(iter(splits.test))["tasks"]
    results = rl_tasks.evaluate_rl_returns(model, config, task_batch)
    assert [r.steps for r in results] == [0, 1]
    metaworld = config.task == "metaworld"
    assert (results[0].success is not None) == metaworld
    if metaworld:  # Tested on held-out tasks.
        np.testing.assert_array_equal(task_batch[:, 0], 1.0)
        assert "success" in history.history
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert type(loaded.family) is type(model.family)
    assert loaded.family.get_config() == model.family.get_config()
    rng = np.random.default_rng(0)
    size = model.family.observation_size
    observations = rng.normal(size=(2, 5, size)).astype("float32")
    actions = rng.normal(size=(2, 5, model.family.action_size))
    rewards = rng.normal(size=(2, 5)).astype("float32")
    for m in (model, loaded):
        fast = m.adapted_weights(observations, actions, rewards)
        m.result = m.act(observations[0], fast, 1)
    np.testing.assert_allclose(loaded.result, model.result, atol=1e-6)
    model.family.close()


@pytest.mark.slow
def test_cheetah_export_adapts_like_the_model_without_tfmaml(
    tmp_path, run_without_tfmaml
):
    config = cheetah_direction.get_config("smoke")
    model = experiment.build_model(config)
    splits = experiment.build_splits(config)
    model.fit(splits.train, steps_per_epoch=1, verbose=0)
    experiment.export_model(model, config, str(tmp_path / "saved"))
    rng = np.random.default_rng(0)
    episodes = dict(
        observations=rng.normal(size=(3, 10, 17)).astype("float32"),
        actions=rng.normal(size=(3, 10, 6)).astype("float32"),
        rewards=rng.normal(size=(3, 10)).astype("float32"),
        query_observations=rng.normal(size=(4, 17)).astype("float32"),
    )
    np.savez(tmp_path / "task.npz", **episodes)
    run_without_tfmaml(
        """
        import numpy as np
        import tensorflow as tf
        served = tf.saved_model.load("saved")
        task = dict(np.load("task.npz"))
        np.save("adapted.npy", served.adapt_and_act(**task)["actions"])
        np.save("plain.npy", served.act(
            observations=task["query_observations"])["actions"])
        """
    )
    fast = model.adapted_weights(
        episodes["observations"], episodes["actions"], episodes["rewards"]
    )
    expected = model.act(episodes["query_observations"], fast, 1)
    np.testing.assert_allclose(
        np.load(tmp_path / "adapted.npy"), expected, atol=1e-5
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "plain.npy"),
        model.act(episodes["query_observations"]),
        atol=1e-6,
    )
    model.family.close()


@pytest.mark.slow
def test_the_shipped_cheetah_policy_adapts_to_its_direction(
    tmp_path, run_without_tfmaml
):
    # saved_models/cheetah_direction is what `python -m tfmaml.train
    # --config=configs/cheetah_direction.py` exports. A client without
    # tfmaml simulates Gymnasium's HalfCheetah v5 itself (the task's reward
    # from its forward velocity) and adapts the policy to each direction.
    import shutil

    repo = pathlib.Path(__file__).resolve().parent.parent
    shutil.copytree(
        repo / "saved_models" / "cheetah_direction", tmp_path / "saved"
    )
    result = run_without_tfmaml(
        """
        import gymnasium as gym
        import numpy as np
        import tensorflow as tf
        served = tf.saved_model.load("saved")
        rng = np.random.default_rng(0)
        stddev = served.act(observations=np.zeros((1, 17), "float32"))[
            "stddev"].numpy()
        envs = [gym.make("HalfCheetah-v5", ctrl_cost_weight=0.05)
                for _ in range(10)]

        def episodes(mean_actions, direction):
            obs = np.stack([e.reset(seed=i)[0] for i, e in enumerate(envs)])
            o, a, r = [], [], []
            for _ in range(200):
                act = mean_actions(obs.astype("float32")) + stddev * (
                    rng.normal(size=(len(envs), 6)))
                o.append(obs)
                a.append(act)
                steps = [e.step(x) for e, x in zip(envs, act)]
                obs = np.stack([s[0] for s in steps])
                r.append([direction * s[4]["x_velocity"] + s[4]["reward_ctrl"]
                          for s in steps])
            return [np.stack(x, 1).astype("float32") for x in (o, a, r)]

        for direction in (1.0, -1.0):
            o, a, r = episodes(
                lambda x: served.act(observations=x)["actions"].numpy(),
                direction)

            def adapted(x):
                return served.adapt_and_act(
                    observations=o, actions=a, rewards=r,
                    query_observations=x)["actions"].numpy()

            after = episodes(adapted, direction)[2]
            print(direction, r.sum(1).mean(), after.sum(1).mean())
        """
    )
    lines = [line.split() for line in result.stdout.splitlines()]
    returns = {float(d): (float(b), float(a)) for d, b, a in lines}
    # Each direction's return after one step beats the return before it.
    for before, after in returns.values():
        assert after > before + 50
