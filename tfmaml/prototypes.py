"""Prototypical networks and Proto-MAML: class prototypes from a support set.

A task's prototype of class k is the mean embedding of its support examples
of class k. `ProtoNet` (Snell et al. 2017) classifies queries by their
distance to the prototypes, with no inner loop; any number of ways and
shots per task. `ProtoMAML` (Triantafillou et al. 2020) initialises the
linear head of a MAML network from the prototypes (kernel `2 c_k`, bias
`-|c_k|^2`: the logits are then `-|f(x) - c_k|^2` up to a per-example
constant, the same softmax) and runs MAML's inner loop from there; the
initialisation is a hook of the one inner loop (`InnerProblem.initialize`),
so training, evaluation, `adapt`, `adapt_and_predict` and the export all
apply it, and the meta-gradient flows through the prototypes.
"""

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tfmaml import tasks
from tfmaml.adapted_variables import head_layer_names
from tfmaml.adapted_variables import walk_layers
from tfmaml.balanced_assignment import DEFAULT_SHARPNESS
from tfmaml.balanced_assignment import BalancedAssignment
from tfmaml.balanced_assignment import balanced_log_assignment
from tfmaml.balanced_assignment import check_assignment
from tfmaml.batches import QUERY_X
from tfmaml.batches import QUERY_Y
from tfmaml.batches import SAMPLE_WEIGHT
from tfmaml.batches import SUPPORT_X
from tfmaml.batches import SUPPORT_Y
from tfmaml.batches import Episode
from tfmaml.checks import check_int
from tfmaml.checks import check_rate
from tfmaml.data.augmentation import AffineAugmentation
from tfmaml.divergence import NO_DIVERGENCE
from tfmaml.model import MAML
from tfmaml.prototype_head import HeadLogits
from tfmaml.prototype_head import check_distance
from tfmaml.prototype_head import fit_head
from tfmaml.prototype_head import head_logits
from tfmaml.views import ViewAveraged
from tfmaml.views import average_views
from tfmaml.views import check_augmentation
from tfmaml.views import mean_of_views
from tfmaml.views import view_embeddings

# What a ProtoNet takes of MAML's options, and their only values.
_NO_INNER_LOOP = {
    "inner_lr": None,
    "inner_steps": 0,
    "eval_inner_steps": 0,
    "inner_variables": None,
    "learn_inner_lr": None,
    "inner_momentum": None,
    "learn_inner_momentum": False,
    "first_order_steps": 0,
    "multi_step_loss_steps": 0,
    "recompute_inner_steps": False,
}


def class_prototypes(
    embeddings: tf.Tensor, labels: tf.Tensor, ways: Any
) -> tf.Tensor:
    """The mean embedding of each class, `[ways, ...]`.

    Args:
        embeddings: `[S, ...]`, one per support example.
        labels: `[S]` class indices in `[0, ways)`.
        ways: The number of classes.

    Raises:
        tf.errors.InvalidArgumentError: If a class has no example (named
            in the message), or a label is outside `[0, ways)`.
    """
    labels = tf.cast(labels, tf.int32)
    counts = tf.math.unsorted_segment_sum(
        tf.ones_like(labels, embeddings.dtype), labels, ways
    )
    checks = [
        tf.debugging.assert_non_negative(
            labels, message="support_y holds a negative class"
        ),
        tf.debugging.assert_less(
            labels,
            tf.cast(ways, tf.int32),
            message="support_y holds a class >= the number of ways",
        ),
        tf.debugging.assert_positive(
            counts,
            message="A class is absent from the support set: every class "
            "0..ways-1 needs at least one support example in support_y "
            "(the counts per class)",
        ),
    ]
    with tf.control_dependencies(checks):
        sums = tf.math.unsorted_segment_sum(embeddings, labels, ways)
    shape = tf.concat([[-1], tf.ones(tf.rank(sums) - 1, tf.int32)], 0)
    return sums / tf.reshape(counts, shape)


def prototype_logits(
    queries: tf.Tensor, prototypes: tf.Tensor, distance: str
) -> tf.Tensor:
    """`[Q, ways]` logits: minus the squared Euclidean distance of each
    query embedding to each prototype, or their cosine similarity."""
    queries = tf.reshape(queries, [tf.shape(queries)[0], -1])
    prototypes = tf.reshape(prototypes, [tf.shape(prototypes)[0], -1])
    if distance == "cosine":
        return tf.matmul(
            tf.math.l2_normalize(queries, axis=-1),
            tf.math.l2_normalize(prototypes, axis=-1),
            transpose_b=True,
        )
    return -(
        tf.reduce_sum(queries**2, -1, keepdims=True)
        - 2.0 * tf.matmul(queries, prototypes, transpose_b=True)
        + tf.reduce_sum(prototypes**2, -1)[None]
    )


def ways_in(support_y: tf.Tensor, query_y: tf.Tensor | None = None) -> Any:
    """The number of classes of a task: one more than its largest support
    label (labels are `0..ways-1`); query labels beyond it are refused."""
    ways = tf.reduce_max(tf.cast(support_y, tf.int32)) + 1
    if query_y is None:
        return ways
    check = tf.debugging.assert_less(
        tf.cast(query_y, tf.int32),
        ways,
        message="The query labels name a class the support set does not "
        "have: support and query need the same ways",
    )
    with tf.control_dependencies([check]):
        return tf.identity(ways)


@keras.saving.register_keras_serializable(package="tfmaml")
class PrototypeLogits(keras.layers.Layer):
    """Logits of embeddings against fixed prototypes (what `ProtoNet.adapt`
    puts on top of the embedding network).

    Args:
        prototypes: `[ways, dim]` class prototypes.
        distance: `"squared_euclidean"` or `"cosine"`.
        **kwargs: Base layer arguments.
    """

    def __init__(self, prototypes, distance="squared_euclidean", **kwargs):
        super().__init__(**kwargs)
        self.distance = check_distance(distance)
        self.prototypes = self.add_weight(
            shape=tuple(keras.ops.shape(prototypes)),
            initializer=keras.initializers.Constant(
                keras.ops.convert_to_numpy(prototypes)
            ),
            trainable=False,
            name="prototypes",
        )

    def call(self, embeddings):
        return prototype_logits(
            embeddings, tf.convert_to_tensor(self.prototypes), self.distance
        )

    def get_config(self):
        return {
            **super().get_config(),
            "prototypes": keras.ops.convert_to_numpy(self.prototypes).tolist(),
            "distance": self.distance,
        }


@keras.saving.register_keras_serializable(package="tfmaml")
class ProtoNet(MAML):
    """Prototypical networks: classify by distance to class prototypes.

    For each task the embedding network embeds the support set, each
    class's mean embedding is its prototype, and a query's logits are minus
    its squared Euclidean distance to each prototype (or, with
    `distance="cosine"`, its cosine similarity). No inner loop: `fit`
    trains the embedding through the query loss; `evaluate`, `predict`,
    `adapt` (a Keras model: the embedding and a `PrototypeLogits` layer),
    `adapt_and_predict` and the export's `adapt_and_predict` compute the
    prototypes of the support set given, with any number of ways (the
    largest label plus one) and shots. Compile with a sparse
    cross-entropy `from_logits=True`.

    Views (test-time augmentation, `tfmaml.views`): with
    `support_views=V`, outside training each support image is embedded
    as itself and as V distorted copies (`view_augmentation`; copy `i` of
    every image is distorted by the same fixed draw, so a support set
    always gives the same prototypes), and its embedding is their mean.
    A one-shot prototype then stands for more than one drawing of its
    class (+1.0 point on Omniglot's held-out alphabet with 8 views,
    benchmarks/RESULTS.md). `query_views=Q` does the same to each query
    (its copy `i` distorted as support copy `i` is), at Q + 1 times the
    cost of embedding the queries (+1.2 more with 4 query views).
    Training episodes are left as they are: distort them in the data
    (`tfmaml.data.AffineAugmentation`).

    A fitted head (`tfmaml.prototype_head`): with `head_steps=K`, outside
    training the prototype logits become a linear head (kernel `2 c_k`,
    bias `-|c_k|^2`) that takes `K` steps of gradient descent on the
    cross-entropy of the support embeddings, each support image and each
    of its views an example, the embedding fixed (+0.9 more on the
    held-out alphabet with 30 steps of 1.0, none on the test alphabets).
    `adapt` then ends in a `HeadLogits` layer, and the export fits the
    head in its graph.

    Set-level inference (`tfmaml.balanced_assignment`): with
    `assignment_steps=K`, outside training a task's queries are classified
    together, each class taking an equal share (`K` Sinkhorn iterations;
    the logits become each query's log-probabilities under the plan).
    Only for queries known to be spread evenly over the classes, as in
    Lake et al.'s one-shot runs (one test drawing a class; Omniglot's
    within-alphabet 20-way 1-shot: 84.2% to 93.3%, RESULTS.md). A query's
    prediction then depends on the others passed with it; `adapt` ends in
    a `BalancedAssignment` layer, which assigns the batch it is called on.

    Args:
        base_model: The embedding network (e.g. Conv4 without its head).
        distance: `"squared_euclidean"` (default) or `"cosine"`.
        support_views: Distorted copies per support image outside
            training. Defaults to `0` (none). Needs image inputs
            `[height, width, channels]`.
        query_views: Distorted copies per query outside training.
            Defaults to `0` (none).
        head_steps: Gradient steps of the fitted head outside training.
            Defaults to `0` (the prototypes' logits).
        head_learning_rate: Their rate. Defaults to `1.0`.
        assignment_steps: Sinkhorn iterations of the queries' balanced
            assignment outside training. Defaults to `0` (each query on
            its own).
        assignment_sharpness: The logits' scale over their median gap
            before it. Defaults to `16.0`.
        view_augmentation: The copies' distortion: an
            `AffineAugmentation` or a dict of its fields. Defaults to
            `AffineAugmentation()` where there are views.
        **kwargs: `MAML` options that do not concern an inner loop
            (`task_loop`, `pre_metrics_in_training`, `name`); inner-loop
            options are refused by name.

    References:
        Snell, Swersky and Zemel. Prototypical Networks for Few-shot
        Learning. NeurIPS 2017.
    """

    def __init__(
        self,
        base_model: keras.layers.Layer,
        distance: str = "squared_euclidean",
        support_views: int = 0,
        view_augmentation: AffineAugmentation | dict | None = None,
        query_views: int = 0,
        head_steps: int = 0,
        head_learning_rate: float = 1.0,
        assignment_steps: int = 0,
        assignment_sharpness: float = DEFAULT_SHARPNESS,
        **kwargs,
    ):
        for key, value in _NO_INNER_LOOP.items():
            given = kwargs.pop(key, value)
            if given != value:
                raise ValueError(
                    f"ProtoNet has no inner loop, so no `{key}`. Received: "
                    f"{key}={given!r}"
                )
        kwargs.pop("first_order", None)  # Nothing to differentiate twice.
        super().__init__(base_model, inner_steps=0, first_order=True, **kwargs)
        self.distance = check_distance(distance)
        self.support_views = check_int(
            "support_views", support_views, minimum=0
        )
        self.query_views = check_int("query_views", query_views, minimum=0)
        self.head_steps = check_int("head_steps", head_steps, minimum=0)
        self.head_learning_rate = check_rate(
            "head_learning_rate", head_learning_rate
        )
        self.view_augmentation = check_augmentation(
            view_augmentation, bool(support_views or query_views)
        )
        self.assignment_steps, self.assignment_sharpness = check_assignment(
            assignment_steps, assignment_sharpness
        )

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        """`MAML.compile`; the loss must take class indices (a sparse
        cross-entropy on logits), else `ValueError`."""
        super().compile(optimizer, loss, **kwargs)
        if not self.label_kind.sparse:
            raise ValueError(
                "ProtoNet classifies by class index: compile it with a "
                "sparse cross-entropy (`from_logits=True`). Received: "
                f"loss={loss!r}"
            )

    def solve_tasks(
        self,
        episode: Episode,
        *,
        steps: int,
        first_order: Any,
        training: bool,
        with_fast_weights: bool = False,
        gradients_of: Sequence[keras.Variable] | None = None,
        with_pre_predictions: bool = True,
        divergence: str | None = "raise",
    ) -> tasks.TaskResults:
        """Every task's query logits against its support prototypes (the
        arguments are `MAML.solve_tasks`'; `steps` must be 0)."""
        del first_order, divergence  # No inner loop to differentiate or check.
        self._check_prototype_inputs(steps, with_fast_weights)
        network = self.base_model
        state = tasks.network_state(network)
        has_labels = episode.query_y is not None
        elems = tasks.task_elements(episode)

        def solve_task(task):
            weights = [
                tf.convert_to_tensor(w) for w in network.trainable_variables
            ]
            support, state_after, _ = tasks.run_network(
                network, weights, state, task[SUPPORT_X], training
            )
            queries, state_after, penalty = tasks.run_network(
                network, weights, state_after, task[QUERY_X], training
            )
            ways = ways_in(task[SUPPORT_Y], task.get(QUERY_Y))
            if training:
                prototypes = class_prototypes(support, task[SUPPORT_Y], ways)
                logits = prototype_logits(queries, prototypes, self.distance)
            else:

                def embed(x):
                    return tasks.run_network(
                        network, weights, state, x, training
                    )[0]

                fitted = self._fitted(
                    embed, task[SUPPORT_X], support, task[SUPPORT_Y], ways
                )
                queries = self._with_query_views(embed, task[QUERY_X], queries)
                logits = self._logits(fitted, queries)
            outputs = {"predictions": logits, "state": state_after}
            if with_pre_predictions:
                outputs["pre_predictions"] = tf.stop_gradient(logits)
            if has_labels:
                loss = penalty + self.compute_loss(
                    y=task[QUERY_Y],
                    y_pred=logits,
                    sample_weight=task.get(SAMPLE_WEIGHT),
                )
                outputs["loss"] = loss
                if with_pre_predictions:
                    outputs["pre_loss"] = tf.stop_gradient(loss)
            return outputs

        # Logits and losses in the embeddings' dtype.
        spec = tasks.output_signature(
            network, episode.query_x, has_labels, with_pre_predictions
        )
        if gradients_of is not None:
            solve_task = tasks.differentiated_per_task(
                solve_task,
                gradients_of,
                loss_scale=getattr(self.optimizer, "scale_loss", None),
            )
            spec["gradients"] = [
                tf.TensorSpec(v.shape, tf.as_dtype(v.dtype))
                for v in gradients_of
            ]
        outputs = tasks.map_tasks(
            solve_task, elems, spec, task_loop=self.task_loop
        )
        gradients = outputs.get("gradients")
        return tasks.TaskResults(
            loss=outputs.get("loss"),
            predictions=outputs["predictions"],
            pre_loss=outputs.get("pre_loss"),
            pre_predictions=outputs.get("pre_predictions"),
            state=outputs["state"],
            gradients=None
            if gradients is None
            else [tf.reduce_sum(g, axis=0) for g in gradients],
            diverged_at=tf.fill(
                tf.shape(outputs["predictions"])[:1], NO_DIVERGENCE
            ),
        )

    def adapted_weights(self, support_x, support_y, steps: int) -> list:
        """`[prototypes]` of one task's support set, or with `head_steps`
        the fitted head's `[kernel, bias]` (what the export and
        `adapt_and_predict` hand to `predict_with_weights`)."""
        self._check_prototype_inputs(steps, False)
        return self._fitted(
            self._embed,
            support_x,
            self._embed(support_x),
            support_y,
            ways_in(support_y),
        )

    def _fitted(self, embed, support_x, embeddings, support_y, ways):
        """`[prototypes]` of the support set with its views, or the head
        fitted on them (`head_steps`)."""
        stack = view_embeddings(
            embed,
            support_x,
            embeddings,
            self.support_views,
            self.view_augmentation,
            "support_views",
        )
        prototypes = class_prototypes(mean_of_views(stack), support_y, ways)
        if not self.head_steps:
            return [prototypes]
        return fit_head(
            prototypes,
            stack,
            support_y,
            steps=self.head_steps,
            learning_rate=self.head_learning_rate,
            distance=self.distance,
        )

    def _logits(self, fitted, queries):
        """Logits of one task's query embeddings under `_fitted`'s weights,
        assigned together with `assignment_steps`."""
        if self.head_steps:
            logits = head_logits(queries, *fitted, self.distance)
        else:
            logits = prototype_logits(queries, fitted[0], self.distance)
        if not self.assignment_steps:
            return logits
        return balanced_log_assignment(
            logits, self.assignment_steps, self.assignment_sharpness
        )

    def _embed(self, x):
        """The embedding network's inference outside `solve_tasks`."""
        return self.base_model(x, training=False)

    def _with_query_views(self, embed, images, embeddings):
        """`embeddings` of query `images`, averaged with those of their
        `query_views` distorted copies."""
        return average_views(
            embed,
            images,
            embeddings,
            self.query_views,
            self.view_augmentation,
            "query_views",
        )

    def predict_with_weights(self, weights, x, steps: int = 0) -> tf.Tensor:
        """Logits of `x` (with its `query_views`) under `adapted_weights`:
        against the prototypes, or under the fitted head."""
        queries = self._with_query_views(self._embed, x, self._embed(x))
        return self._logits(weights, queries)

    def adapt(self, support_x, support_y, steps=None) -> keras.Model:
        """A Keras model classifying inputs against this support set's
        prototypes: the embedding network, then `PrototypeLogits` (with
        `head_steps`, `HeadLogits`: the head fitted to this support set),
        then with `assignment_steps` a `BalancedAssignment` of each batch
        it is called on (call it on one set of balanced queries)."""
        steps = self._steps(steps)
        fitted = self.adapted_weights(
            tf.convert_to_tensor(support_x), support_y, steps
        )
        inputs = keras.Input(tuple(tf.convert_to_tensor(support_x).shape[1:]))
        embedding = self.base_model
        if self.query_views:
            embedding = ViewAveraged(
                embedding, self.query_views, self.view_augmentation
            )
        if self.head_steps:
            head = HeadLogits(*fitted, distance=self.distance)
        else:
            head = PrototypeLogits(fitted[0], self.distance)
        logits = head(embedding(inputs))
        if self.assignment_steps:
            logits = BalancedAssignment(
                self.assignment_steps, self.assignment_sharpness
            )(logits)
        return keras.Model(inputs, logits)

    # The export serves the embedding and takes any number of ways.
    serves_embeddings = True

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        for key in (*_NO_INNER_LOOP, "first_order", "inner_optimizer"):
            config.pop(key, None)
        augmentation = self.view_augmentation
        return {
            **config,
            "distance": self.distance,
            "support_views": self.support_views,
            "query_views": self.query_views,
            "head_steps": self.head_steps,
            "head_learning_rate": self.head_learning_rate,
            "assignment_steps": self.assignment_steps,
            "assignment_sharpness": self.assignment_sharpness,
            "view_augmentation": augmentation and augmentation._asdict(),
        }

    def _check_prototype_inputs(self, steps, with_fast_weights):
        self._check_compiled()
        if steps != 0 or with_fast_weights:
            raise ValueError(
                "ProtoNet has no inner loop: steps must be 0 and there are "
                f"no fast weights. Received: steps={steps}"
            )


@keras.saving.register_keras_serializable(package="tfmaml")
class ProtoMAML(MAML):
    """Proto-MAML: MAML whose linear head starts each task at the support
    prototypes (kernel `2 c_k`, bias `-|c_k|^2`), then adapts as MAML does.

    The head is the last layer with trainable weights (a `Dense` with one
    unit per way, its input the embedding); its own initial weights are
    replaced in every task, so only the body is meta-learned through it.
    The meta-gradient flows through the prototypes (second order unless
    `first_order=True`).

    Args:
        base_model: A built Functional or Sequential network ending in a
            `Dense` head with `ways` units.
        inner_lr: Defaults to `0.01`.
        inner_steps: Defaults to `1`.
        **kwargs: Other `MAML` options.

    References:
        Triantafillou et al. Meta-Dataset: A Dataset of Datasets for
        Learning to Learn from Few Examples. ICLR 2020.
    """

    def __init__(
        self,
        base_model: keras.layers.Layer,
        inner_lr: float | None = None,
        inner_steps: int = 1,
        **kwargs,
    ):
        super().__init__(base_model, inner_lr, inner_steps, **kwargs)
        self._head = _dense_head(base_model)
        self._body = keras.Model(base_model.inputs, self._head.input)
        variables = base_model.trainable_variables
        self._head_indices = [
            next(i for i, v in enumerate(variables) if v is w)
            for w in (self._head.kernel, self._head.bias)
        ]

    def inner_problem(self) -> tasks.InnerProblem:
        """MAML's, with the head initialised from the support prototypes."""
        return super().inner_problem()._replace(initialize=self._initialize)

    def _initialize(self, weights, support_x, support_y, state, training):
        """`weights` with the head set from the prototypes of the support
        embeddings (computed with `weights`)."""
        embeddings, _, _ = tasks.run_network(
            self.base_model,
            weights,
            state,
            support_x,
            training,
            call=self._body,
        )
        ways = self._head.units
        prototypes = class_prototypes(embeddings, support_y, ways)
        kernel, bias = self._head_indices
        weights = list(weights)
        weights[kernel] = tf.transpose(2.0 * prototypes)
        weights[bias] = -tf.reduce_sum(prototypes**2, axis=-1)
        return weights


def _dense_head(network):
    [name] = head_layer_names(network)
    head = next(layer for layer in walk_layers(network) if layer.name == name)
    if not isinstance(head, keras.layers.Dense) or not head.use_bias:
        raise ValueError(
            "ProtoMAML initialises a linear head with a bias from the "
            f"prototypes; the last layer with weights, {name!r}, is a "
            f"{type(head).__name__}"
            + ("" if isinstance(head, keras.layers.Dense) else "")
            + ". End the network with `keras.layers.Dense(ways)`."
        )
    if not getattr(network, "inputs", None):
        raise ValueError(
            "ProtoMAML reads the head's input from a Functional or "
            f"Sequential network; {network.name!r} records no inputs (a "
            "subclassed model?)."
        )
    return head
