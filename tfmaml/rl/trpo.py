"""Trust-region steps (Schulman et al. 2015) for the meta-RL outer loop.

The natural-gradient direction comes from conjugate gradient on
Hessian-vector products of the mean KL divergence (never forming the
Hessian); a backtracking line search then takes the largest fraction of
the step that improves the surrogate and keeps the KL within its bound.
Both run in the graph: in `tf.while_loop`s, or, with `unrolled=True`,
without control flow (a Python loop; the line search then evaluates every
fraction), which `tf.distribute` needs to all-reduce inside them. Settings
follow rllab's `ConjugateGradientOptimizer`, which the MAML paper's code
used.
"""

from collections.abc import Callable
from collections.abc import Sequence

import tensorflow as tf


def flatten(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """Concatenates tensors into one vector.

    Args:
        tensors: Tensors of any shapes.
    """
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def unflatten(vector: tf.Tensor, like: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """Splits a vector into tensors shaped like `like` (static shapes).

    Args:
        vector: A vector as long as their sizes together.
        like: Tensors with static shapes.
    """
    sizes = [t.shape.num_elements() for t in like]
    parts = tf.split(vector, sizes)
    return [tf.reshape(p, t.shape) for p, t in zip(parts, like, strict=True)]


def conjugate_gradient(
    matvec: Callable[[tf.Tensor], tf.Tensor],
    b: tf.Tensor,
    *,
    iterations: int = 10,
    residual_tolerance: float = 1e-10,
    unrolled: bool = False,
) -> tf.Tensor:
    """Approximately solves `A x = b` for symmetric positive definite `A`
    given as `matvec(v) = A v`.

    Args:
        matvec: The matrix-vector product.
        b: The right-hand side, a vector.
        iterations: At most this many iterations. Defaults to `10`.
        residual_tolerance: Stops when `|r|^2` falls below it.
        unrolled: Whether to unroll the iterations in Python (no control
            flow). Defaults to `False`.

    Returns:
        `x`, a vector like `b`.
    """
    if unrolled:
        x, r, p = tf.zeros_like(b), b, b
        rr = tf.reduce_sum(b * b)
        for _ in range(iterations):
            ap = matvec(p)
            active = tf.cast(rr >= residual_tolerance, b.dtype)
            alpha = active * rr / (tf.reduce_sum(p * ap) + 1e-30)
            x = x + alpha * p
            r = r - alpha * ap
            new_rr = tf.reduce_sum(r * r)
            p = r + (new_rr / (rr + 1e-30)) * p
            rr = active * new_rr + (1.0 - active) * rr
        return x

    def body(i, x, r, p, rr):
        ap = matvec(p)
        alpha = rr / (tf.reduce_sum(p * ap) + 1e-30)
        x = x + alpha * p
        r = r - alpha * ap
        new_rr = tf.reduce_sum(r * r)
        p = r + (new_rr / (rr + 1e-30)) * p
        return i + 1, x, r, p, new_rr

    def condition(i, x, r, p, rr):
        return tf.logical_and(i < iterations, rr >= residual_tolerance)

    rr = tf.reduce_sum(b * b)
    _, x, _, _, _ = tf.while_loop(
        condition, body, (0, tf.zeros_like(b), b, b, rr)
    )
    return x


def line_search(
    evaluate: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]],
    surrogate_before: tf.Tensor,
    *,
    max_kl: float,
    backtracks: int = 15,
    ratio: float = 0.8,
    unrolled: bool = False,
) -> tf.Tensor:
    """The largest `ratio**k` (k < `backtracks`) for which the step scaled
    by it improves the surrogate and keeps the KL within `max_kl`; 0 if
    none does (the step is rejected).

    Args:
        evaluate: `evaluate(fraction) -> (surrogate, kl)` after the step
            scaled by `fraction`.
        surrogate_before: The surrogate before the step.
        max_kl: The KL bound.
        backtracks: How many fractions to try. Defaults to `15`.
        ratio: The factor between fractions. Defaults to `0.8`.
        unrolled: Whether to evaluate every fraction without control flow.
            Defaults to `False`.

    Returns:
        A scalar fraction.
    """
    dtype = surrogate_before.dtype
    if unrolled:
        fractions = [ratio**k for k in range(backtracks)]
        accepted = tf.stack(
            [
                acceptable_step(evaluate, f, surrogate_before, max_kl)
                for f in fractions
            ]
        )
        first = tf.argmax(tf.cast(accepted, tf.int32))
        return tf.where(
            tf.reduce_any(accepted),
            tf.gather(tf.constant(fractions, dtype), first),
            tf.zeros([], dtype),
        )

    def acceptable(fraction):
        surrogate, kl = evaluate(fraction)
        return tf.logical_and(
            tf.logical_and(surrogate > surrogate_before, kl <= max_kl),
            tf.logical_and(tf.math.is_finite(surrogate), tf.math.is_finite(kl)),
        )

    def condition(k, accepted):
        return tf.logical_and(k < backtracks, tf.logical_not(accepted))

    def body(k, accepted):
        fraction = tf.pow(tf.constant(ratio, dtype), tf.cast(k, dtype))
        return k + 1, acceptable(fraction)

    k, accepted = tf.while_loop(
        condition, body, (tf.constant(0), tf.constant(False))
    )
    fraction = tf.pow(tf.constant(ratio, dtype), tf.cast(k - 1, dtype))
    return tf.where(accepted, fraction, tf.zeros([], dtype))


def acceptable_step(
    evaluate: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]],
    fraction: float | tf.Tensor,
    surrogate_before: tf.Tensor,
    max_kl: float,
) -> tf.Tensor:
    """Whether the step scaled by `fraction` improves the surrogate, keeps
    the KL within `max_kl`, and gives finite values.

    Args:
        evaluate: `evaluate(fraction) -> (surrogate, kl)`.
        fraction: The fraction of the step.
        surrogate_before: The surrogate before the step.
        max_kl: The KL bound.
    """
    surrogate, kl = evaluate(tf.cast(fraction, surrogate_before.dtype))
    return tf.logical_and(
        tf.logical_and(surrogate > surrogate_before, kl <= max_kl),
        tf.logical_and(tf.math.is_finite(surrogate), tf.math.is_finite(kl)),
    )
