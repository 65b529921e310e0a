"""Exports a meta-RL policy as a SavedModel that adapts itself when served.

Signatures (plain TensorFlow: `tf.saved_model.load` reads them without
tfmaml or Keras):

- `act(observations [N, obs])` -> `actions` (the mean actions, `[N, act]`)
  and `stddev` (`[act]`) of the meta-learned policy.
- `adapt_and_act(observations [B, T, obs], actions [B, T, act],
  rewards [B, T], query_observations [N, obs])` -> `actions` of the policy
  after the model's `inner_steps` policy-gradient steps on those `B`
  episodes of `T` steps from the new task (baseline fit, advantages and
  inner steps all in the graph), and `inner_steps`.

Bad requests fail in the graph with a message that names the input: fewer
than 2 episodes (the baseline and the advantage normalisation need them),
no steps, or a non-finite value.
"""

import os
from typing import Any

import keras
import tensorflow as tf

from tfmaml.divergence import check_finite_input
from tfmaml.rl import policies


def export_policy(
    model: Any, filepath: str | os.PathLike, *, verbose: bool = False
) -> None:
    """Writes `model` (a `tfmaml.rl.MetaRL`) as a SavedModel.

    Args:
        model: The meta-RL model.
        filepath: The SavedModel directory.
        verbose: Whether to print the signatures. Defaults to `False`.
    """
    family = model.family
    obs, act = family.observation_size, family.action_size
    steps = model.inner_steps

    def act_fn(observations):
        observations = check_finite_input("observations", observations)
        outputs = model._outputs(model._weights(), tf.zeros([1, obs]))
        _, log_std = policies.split_outputs(outputs)
        return {
            "actions": model.act(observations),
            "stddev": tf.exp(log_std[0]),
        }

    def adapt_and_act(observations, actions, rewards, query_observations):
        shape = tf.shape(rewards)
        checks = [
            tf.debugging.assert_greater_equal(
                shape[0],
                2,
                message="observations, actions and rewards need at least 2 "
                "episodes (axis 0): the baseline fit and the advantage "
                "normalisation need them",
            ),
            tf.debugging.assert_positive(
                shape[1], message="the episodes need at least 1 step (axis 1)"
            ),
            tf.debugging.assert_equal(
                tf.shape(observations)[:2],
                shape,
                message="observations and rewards need the same [episodes, "
                "steps]",
            ),
            tf.debugging.assert_equal(
                tf.shape(actions)[:2],
                shape,
                message="actions and rewards need the same [episodes, steps]",
            ),
        ]
        with tf.control_dependencies(checks):
            observations = check_finite_input("observations", observations)
            actions = check_finite_input("actions", actions)
            rewards = check_finite_input("rewards", rewards)
            query_observations = check_finite_input(
                "query_observations", query_observations
            )
        fast = model.adapted_weights(observations, actions, rewards)
        return {
            "actions": model.act(query_observations, fast, steps),
            "inner_steps": tf.constant(steps, tf.int32),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "act",
        act_fn,
        input_signature=[
            tf.TensorSpec([None, obs], tf.float32, "observations")
        ],
    )
    archive.add_endpoint(
        "adapt_and_act",
        adapt_and_act,
        input_signature=[
            tf.TensorSpec([None, None, obs], tf.float32, "observations"),
            tf.TensorSpec([None, None, act], tf.float32, "actions"),
            tf.TensorSpec([None, None], tf.float32, "rewards"),
            tf.TensorSpec([None, obs], tf.float32, "query_observations"),
        ],
    )
    archive.write_out(os.fspath(filepath), verbose=verbose)
