"""A balanced assignment of an episode's queries to its classes: set-level
(transductive) inference for a ProtoNet (`tfmaml.ProtoNet(assignment_steps=
...)`).

Why. A ProtoNet classifies each query on its own. When the queries of an
episode are known to be spread evenly over its classes (Lake et al.'s
one-shot runs: 20 test drawings, one of each of the 20 characters), the
others say something about each one: two queries cannot both be the one
drawing of a class. Choosing their classes together, each class taking
its share, took the 20-way recipe's within-alphabet accuracy from 84.2%
to 93.3% on Omniglot's test alphabets with one query a class (3 seeds,
benchmarks/RESULTS.md), with no retraining. It is a different claim from
classifying each query alone (as Lake et al.'s models and people were
scored), and it is only right when the queries are balanced, so it is off
unless asked for.

How. Sinkhorn's iterations (Cuturi, "Sinkhorn Distances", 2013; as in Hu
et al.'s PT+MAP, 2021) turn the logits into a soft transport plan whose
rows are each query's distribution over the classes and whose columns
each hold `queries / ways` of the mass: an entropy-regularised optimal
assignment, close to the exact one (the Hungarian algorithm, which is not
a TensorFlow op) when sharp, and made of TensorFlow ops, so `evaluate`,
`adapt_and_predict`, `adapt` and the SavedModel all run it. The logits
are first scaled by `sharpness` over the median gap between each query's
best logit and its others, so the same setting fits any embedding's
scale; on the held-out training alphabets 16 and 20 iterations matched
the Hungarian algorithm's accuracy (+6.4 against +6.1 points with one
query a class).
"""

import keras
import tensorflow as tf

from tfmaml.checks import check_int
from tfmaml.checks import check_rate

DEFAULT_SHARPNESS = 16.0


def check_assignment(steps, sharpness) -> tuple[int, float]:
    """`(steps, sharpness)` if `steps` is an int >= 0 and `sharpness` a
    finite number > 0, else the error naming the argument."""
    steps = check_int("assignment_steps", steps, minimum=0)
    return steps, check_rate("assignment_sharpness", sharpness)


def balanced_log_assignment(
    logits: tf.Tensor, steps: int, sharpness: float = DEFAULT_SHARPNESS
) -> tf.Tensor:
    """`[Q, ways]` log-probabilities: the queries' classes chosen together,
    each class taking `Q / ways` of them (`steps` Sinkhorn iterations on
    `logits [Q, ways]`, scaled by `sharpness` over the median gap between
    each row's largest logit and its entries). Each row is a distribution
    (its `exp` sums to 1), so the result serves as logits; with `steps=0`
    it is the scaled logits' log-softmax, the same ranking as `logits`.

    The result does not change when a row is shifted or all logits are
    multiplied by a positive number. Computed in float32 or float64 (the
    input's, or float32 for a lower precision) and returned in the
    input's dtype.

    Raises:
        tf.errors.InvalidArgumentError: If there are fewer queries than
            classes (rows than columns).
    """
    logits = tf.convert_to_tensor(logits)
    # Fewer queries than classes cannot be spread evenly over them (and one
    # query's plan is the uniform column share, whatever its logits).
    enough = tf.debugging.assert_greater_equal(
        tf.shape(logits)[0],
        tf.shape(logits)[1],
        message="A balanced assignment gives every class an equal share of "
        "the queries, so it needs at least as many queries as classes "
        "(assignment_steps > 0): pass one task's queries together, spread "
        "evenly over its classes. Queries, classes",
    )
    with tf.control_dependencies([enough]):
        logits = tf.identity(logits)
    dtype = logits.dtype
    work = dtype if dtype in (tf.float32, tf.float64) else tf.float32
    logits = tf.cast(logits, work)
    gaps = tf.reduce_max(logits, -1, keepdims=True) - logits
    median = _median(tf.reshape(gaps, [-1]))
    # All logits of every row equal: nothing to scale.
    scale = tf.where(median > 0, sharpness / median, tf.ones_like(median))
    # Each row a distribution first, so a row's shift is gone exactly.
    plan = tf.nn.log_softmax(logits * scale, axis=-1)
    queries = tf.cast(tf.shape(logits)[0], work)
    ways = tf.cast(tf.shape(logits)[1], work)
    column_mass = tf.math.log(queries / ways)
    for _ in range(steps):
        plan = plan - tf.reduce_logsumexp(plan, 0, keepdims=True) + column_mass
        plan = plan - tf.reduce_logsumexp(plan, 1, keepdims=True)
    return tf.cast(plan, dtype)


def _median(values: tf.Tensor) -> tf.Tensor:
    """NumPy's median of a non-empty 1-D tensor (the mean of the middle two
    for an even count)."""
    count = tf.size(values)
    middle = [(count - 1) // 2, count // 2]
    return tf.reduce_mean(tf.gather(tf.sort(values), middle))


@keras.saving.register_keras_serializable(package="tfmaml")
class BalancedAssignment(keras.layers.Layer):
    """`balanced_log_assignment` of a batch of logits: what `ProtoNet.adapt`
    puts after the prototypes' logits with `assignment_steps`. Its output
    for one query depends on the rest of the batch: call it on one
    episode's queries, spread evenly over the classes.

    Args:
        steps: Sinkhorn iterations.
        sharpness: The logits' scale over their median gap. Defaults to
            `DEFAULT_SHARPNESS`.
        **kwargs: Base layer arguments.
    """

    def __init__(self, steps, sharpness=DEFAULT_SHARPNESS, **kwargs):
        super().__init__(**kwargs)
        self.steps, self.sharpness = check_assignment(steps, sharpness)

    def call(self, logits):
        return balanced_log_assignment(logits, self.steps, self.sharpness)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "steps": self.steps,
            "sharpness": self.sharpness,
        }
