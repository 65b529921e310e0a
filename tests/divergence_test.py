"""Divergence is an error, never a quiet NaN: `adapt`, `predict`,
`evaluate`, the evaluation table, the exported signatures (in a process
without tfmaml) and the meta-RL adaptation name the first diverging inner
step; exported signatures refuse non-finite inputs by name."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmaml
from tfmaml import data
from tfmaml import inner_loop
from tfmaml import rl
from tfmaml.evaluation import evaluate_adaptation
from tfmaml.evaluation import format_results

# A rate that is fine for one step and blows the weights up geometrically
# after (about 1e9 per step: float32 overflows within a few steps).
RATE = 3e4


def _model(eval_inner_steps=1, jit_compile=False):
    keras.utils.set_random_seed(0)
    net = tfmaml.networks.mlp((1,), 1, hidden_units=(8,))
    model = tfmaml.MAML(
        net, inner_lr=RATE, inner_steps=1, eval_inner_steps=eval_inner_steps
    )
    model.compile(
        keras.optimizers.Adam(1e-3), loss="mse", jit_compile=jit_compile
    )
    return model


def _task(index=0):
    x, y = next(iter(data.sinusoid(num_shots=5, meta_batch_size=4, seed=3)))
    return x["support_x"][index], x["support_y"][index], x, y


def _first_non_finite_step(model, support_x, support_y, steps):
    """The reference: the unchecked inner loop, step by step."""
    problem = model.inner_problem()

    def loss(weights, x, y):
        predictions = problem.network.stateless_call(
            weights,
            [v.value for v in problem.network.non_trainable_variables],
            x,
        )[0]
        return problem.loss(y, predictions, None)

    trajectory = inner_loop.adaptation_trajectory(
        loss,
        [tf.convert_to_tensor(w) for w in problem.weights],
        support_x,
        support_y,
        steps=steps,
        optimizer=problem.optimizer,
        first_order=True,
    )
    for k, weights in enumerate(trajectory[1:], start=1):
        if not all(np.isfinite(w.numpy()).all() for w in weights):
            return k
    return None


def test_the_reference_diverges_after_the_trained_step():
    model = _model()
    support_x, support_y, _, _ = _task()
    k = _first_non_finite_step(model, support_x, support_y, 6)
    assert k is not None and 2 <= k <= 6
    assert _first_non_finite_step(model, support_x, support_y, 1) is None


def test_adapt_names_the_step_the_training_and_the_remedy():
    model = _model()
    support_x, support_y, _, _ = _task()
    k = _first_non_finite_step(model, support_x, support_y, 6)
    adapted = model.adapt(support_x, support_y, steps=1)
    assert np.isfinite(adapted(support_x).numpy()).all()
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        model.adapt(support_x, support_y, steps=6)
    text = str(error.value)
    assert f"Adaptation diverged at inner step {k} of 6" in text
    assert "meta-trained with 1 inner step(s)" in text
    assert "adapt with fewer steps" in text


@pytest.mark.parametrize("jit_compile", [False, True])
def test_predict_and_evaluate_raise_instead_of_returning_nan(jit_compile):
    # With XLA too: evaluation and prediction steps run without it.
    model = _model(eval_inner_steps=6, jit_compile=jit_compile)
    _, _, x, y = _task()
    with pytest.raises(tf.errors.InvalidArgumentError, match="diverged at"):
        model.predict(x, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="diverged at"):
        model.evaluate(x, y, verbose=0)
    fine = _model(eval_inner_steps=1, jit_compile=jit_compile)
    assert np.isfinite(fine.predict(x, verbose=0)).all()
    assert np.isfinite(fine.evaluate(x, y, verbose=0)).all()


def test_evaluation_table_says_diverged_at_step_k():
    model = _model()
    dataset = data.sinusoid(num_shots=5, meta_batch_size=4, seed=3).take(1)
    _, _, x, _ = _task()
    first = min(
        _first_non_finite_step(model, x["support_x"][i], x["support_y"][i], 6)
        for i in range(4)
    )
    results = evaluate_adaptation(model, dataset, step_counts=(0, 1, 6))
    assert results[0].diverged_at is None and np.isfinite(results[1].loss)
    assert results[2].diverged_at == first
    assert results[2].diverged_tasks == 4
    table = format_results(results)
    assert f"diverged at step {first} (4 of 4 tasks)" in table
    assert "nan" not in table


def test_the_cli_report_prints_the_step_and_the_remedy(tmp_path, capsys):
    from ml_collections import ConfigDict

    from tfmaml import cli

    model = _model()
    config = ConfigDict({"task": "sinusoid", "eval_step_counts": (1, 6)})
    config.eval_tasks = 4
    test = data.sinusoid(num_shots=5, meta_batch_size=4, seed=3).take(1)
    cli.evaluate_and_report(model, config, test, str(tmp_path))
    printed = capsys.readouterr().out
    written = (tmp_path / "evaluation.txt").read_text()
    assert printed.strip() == written.strip()
    assert "diverged at step" in written
    assert "error: Adaptation diverged at inner step" in written
    assert "meta-trained with 1 inner step(s)" in written


def test_learned_per_step_rates_are_explained():
    keras.utils.set_random_seed(0)
    model = tfmaml.MAML(
        tfmaml.networks.mlp((1,), 1, hidden_units=(8,)),
        inner_steps=1,
        inner_optimizer=inner_loop.LearnedSGD(
            rates="per_layer_per_step", learning_rate=RATE, steps=1
        ),
    )
    model.compile(keras.optimizers.Adam(1e-3), loss="mse")
    support_x, support_y, _, _ = _task()
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="reuse the last trained step"
    ):
        model.adapt(support_x, support_y, steps=6)


@pytest.mark.slow
def test_exported_signature_refuses_non_finite_input_and_divergence(
    tmp_path, run_without_tfmaml
):
    model = _model(eval_inner_steps=6)
    model.export(tmp_path / "diverging")
    _model(eval_inner_steps=1).export(tmp_path / "fine")
    support_x, support_y, x, _ = _task()
    k = _first_non_finite_step(model, support_x, support_y, 6)
    np.savez(
        tmp_path / "task.npz",
        support_x=support_x,
        support_y=support_y,
        query_x=x["query_x"][0],
    )
    result = run_without_tfmaml(
        """
        import numpy as np
        import tensorflow as tf
        task = dict(np.load("task.npz"))
        fine = tf.saved_model.load("fine")
        print("fine:", np.isfinite(
            fine.adapt_and_predict(**task)["predictions"]).all())
        for name, value in (("support_x", np.nan), ("support_y", np.inf),
                            ("query_x", -np.inf)):
            bad = dict(task)
            bad[name] = bad[name].copy()
            bad[name][1] = value
            try:
                fine.adapt_and_predict(**bad)
                print("accepted:", name)
            except tf.errors.InvalidArgumentError as error:
                print("refused:", " ".join(error.message.split())[:200])
        try:
            diverging = tf.saved_model.load("diverging")
            diverging.adapt_and_predict(**task)
            print("accepted: divergence")
        except tf.errors.InvalidArgumentError as error:
            print("refused:", " ".join(error.message.split())[:300])
        """
    )
    lines = result.stdout.splitlines()
    assert "fine: True" in lines
    refusals = [line for line in lines if line.startswith("refused")]
    assert not [line for line in lines if line.startswith("accepted")]
    for line, name in zip(
        refusals, ("support_x", "support_y", "query_x"), strict=False
    ):
        assert f"{name} holds a NaN or infinite value" in line
    assert f"Adaptation diverged at inner step {k} of 6" in refusals[3]


def test_meta_rl_adaptation_names_the_diverging_step():
    keras.utils.set_random_seed(0)
    family = rl.Navigation2D(horizon=5)
    model = rl.MetaRL(
        rl.gaussian_mlp(2, 2, hidden_units=(8,)),
        family,
        inner_lr=1e6,
        num_trajectories=3,
    )
    rng = np.random.default_rng(0)
    observations = rng.normal(size=(3, 5, 2)).astype("float32")
    actions = rng.normal(size=(3, 5, 2)).astype("float32")
    rewards = rng.normal(size=(3, 5)).astype("float32")
    fast = model.adapted_weights(observations, actions, rewards, steps=1)
    assert all(np.isfinite(w.numpy()).all() for w in fast)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"diverged at inner step \d of 8"
    ):
        model.adapted_weights(observations, actions, rewards, steps=8)
