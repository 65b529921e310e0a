"""Returns, the linear feature baseline and advantages, in the graph.

Everything works on one task's trajectories, `[trajectories, time, ...]`,
with `masks [trajectories, time]` that are 1 for the steps an episode
took (up to and including the step that terminated it) and 0 after, or on
a batch of tasks at once: any leading axes are task axes, each task fitted
and normalised on its own (no loop over tasks). These are the
deterministic parts of the policy-gradient estimator; the tests check
them against finite differences and direct loops.
"""

import tensorflow as tf

# rllab's LinearFeatureBaseline: time enters as `t / 100` (whatever the
# horizon), observations are clipped to [-10, 10].
_TIME_SCALE = 100.0
_CLIP = 10.0
# rllab's ridge coefficient.
RIDGE = 1e-5


def discounted_cumsum(values: tf.Tensor, discount: float) -> tf.Tensor:
    """`y_t = x_t + discount * y_{t+1}` along the last axis.

    Args:
        values: `[..., time]`.
        discount: The factor per step.

    Returns:
        A tensor like `values`.
    """
    time_first = tf.transpose(
        values, [values.shape.rank - 1, *range(values.shape.rank - 1)]
    )
    summed = tf.scan(
        lambda later, x: x + discount * later,
        time_first,
        initializer=tf.zeros_like(time_first[0]),
        reverse=True,
    )
    return tf.transpose(summed, [*range(1, values.shape.rank), 0])


def baseline_features(observations: tf.Tensor) -> tf.Tensor:
    """rllab's linear baseline features of `[..., K, T, obs]` observations:
    `[obs, obs^2, t, t^2, t^3, 1]` with `t = step / 100`: `[..., K, T, F]`.

    Args:
        observations: `[..., K, T, obs]`.
    """
    clipped = tf.clip_by_value(observations, -_CLIP, _CLIP)
    steps = tf.cast(tf.range(tf.shape(observations)[-2]), observations.dtype)
    steps = steps[:, None] / _TIME_SCALE
    steps = tf.broadcast_to(
        steps, tf.concat([tf.shape(observations)[:-1], [1]], 0)
    )
    return tf.concat(
        [
            clipped,
            tf.square(clipped),
            steps,
            steps**2,
            steps**3,
            tf.ones_like(steps),
        ],
        axis=-1,
    )


def fit_linear_baseline(
    observations: tf.Tensor,
    returns: tf.Tensor,
    masks: tf.Tensor,
    *,
    l2: float = RIDGE,
) -> tf.Tensor:
    """The weights of the ridge regression of `returns` on the features.

    Minimises `sum(mask * (features @ w - returns)^2) + l2 * |w|^2` per
    task in closed form (solved in float64).

    Args:
        observations: `[..., K, T, obs]`.
        returns: `[..., K, T]` discounted returns-to-go.
        masks: `[..., K, T]`.
        l2: The ridge coefficient. Defaults to `1e-5` (rllab's).

    Returns:
        `[..., F]` weights, in float64.
    """
    features = tf.cast(baseline_features(observations), tf.float64)
    return _ridge_weights(features, returns, masks, l2)


def _ridge_weights(features, returns, masks, l2):
    """`fit_linear_baseline` on float64 features `[..., K, T, F]`."""
    weights = tf.cast(masks, tf.float64)
    targets = tf.cast(returns, tf.float64)
    gram = tf.einsum("...ktf,...kt,...ktg->...fg", features, weights, features)
    gram += l2 * tf.eye(features.shape[-1], dtype=tf.float64)
    moment = tf.einsum("...ktf,...kt,...kt->...f", features, weights, targets)
    return tf.linalg.solve(gram, moment[..., None])[..., 0]


def linear_baseline(
    observations: tf.Tensor,
    rewards: tf.Tensor,
    masks: tf.Tensor,
    discount: float,
) -> tf.Tensor:
    """Values `[..., K, T]` of the linear baseline fitted to these
    trajectories' discounted returns-to-go (0 where masked).

    Args:
        observations: `[..., K, T, obs]`.
        rewards: `[..., K, T]`.
        masks: `[..., K, T]`.
        discount: The discount factor.
    """
    returns = discounted_cumsum(rewards * masks, discount)
    features = tf.cast(baseline_features(observations), tf.float64)
    weights = _ridge_weights(features, returns, masks, RIDGE)
    values = tf.einsum("...ktf,...f->...kt", features, weights)
    return tf.cast(values, rewards.dtype) * masks


def gae(
    rewards: tf.Tensor,
    values: tf.Tensor,
    masks: tf.Tensor,
    *,
    discount: float,
    gae_lambda: float,
) -> tf.Tensor:
    """Generalised advantage estimates (Schulman et al. 2016), `[K, T]`.
    `delta_t = r_t + discount * V_{t+1} - V_t` (no value after the last
    step or a termination), summed with factor `discount * gae_lambda`.
    `gae_lambda=1` gives returns-to-go minus the baseline.

    Args:
        rewards: `[..., K, T]`.
        values: Baseline values `[..., K, T]`.
        masks: `[..., K, T]`.
        discount: The discount factor.
        gae_lambda: GAE's lambda.
    """
    rewards = rewards * masks
    values = values * masks
    later = tf.concat(
        [values[..., 1:], tf.zeros_like(values[..., :1])], axis=-1
    )
    deltas = (rewards + discount * later - values) * masks
    return discounted_cumsum(deltas, discount * gae_lambda) * masks


def normalize(advantages: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """Advantages `[..., K, T]` centred and scaled to unit variance over
    each task's unmasked steps (rllab's `center_adv`); 0 where masked.

    Args:
        advantages: `[..., K, T]`.
        masks: `[..., K, T]`.
    """
    axes = [-2, -1]
    count = tf.reduce_sum(masks, axes, keepdims=True)
    mean = tf.reduce_sum(advantages * masks, axes, keepdims=True) / count
    variance = (
        tf.reduce_sum(tf.square(advantages - mean) * masks, axes, keepdims=True)
        / count
    )
    return (advantages - mean) / (tf.sqrt(variance) + 1e-8) * masks


def advantages(
    observations: tf.Tensor,
    rewards: tf.Tensor,
    masks: tf.Tensor,
    *,
    discount: float,
    gae_lambda: float,
    baseline: str = "linear",
    normalized: bool = True,
) -> tf.Tensor:
    """Advantages of one task's (or each task's) episodes: baseline, GAE
    and (optionally) normalisation.

    Args:
        observations: `[..., K, T, obs]`.
        rewards: `[..., K, T]`.
        masks: `[..., K, T]`.
        discount: The discount factor.
        gae_lambda: GAE's lambda.
        baseline: `"linear"` (rllab's feature baseline, fitted to these
            trajectories) or `"zero"`. Defaults to `"linear"`.
        normalized: Whether to centre and scale them. Defaults to `True`.

    Returns:
        `[..., K, T]`, constants for any tape (samples, not parameters).
    """
    if baseline == "linear":
        values = linear_baseline(observations, rewards, masks, discount)
    else:
        values = tf.zeros_like(rewards)
    result = gae(
        rewards, values, masks, discount=discount, gae_lambda=gae_lambda
    )
    if normalized:
        result = normalize(result, masks)
    return tf.stop_gradient(result)
