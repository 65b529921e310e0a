"""Base networks for meta-learning, and a user's network made fit for it.

Builders of the papers' networks (`mlp`, `conv4`), an ensemble of
embeddings (`embedding_ensemble`), the check of what
`tfmaml.MAML` can meta-train (`check_base_network`), copies of a network
with other weights (`clone_with_weights`) and with Keras' batch norm
replaced by `BatchNormalization` (`exact_batch_norm`; the layer lives in
`tfmaml.batch_norm` and is exported here too).
"""

from collections.abc import Sequence

import keras

from tfmaml.adapted_variables import walk_layers
from tfmaml.batch_norm import BatchNormalization

__all__ = [
    "BatchNormalization",
    "WRONG_SECOND_DERIVATIVE",
    "check_base_network",
    "clone_with_weights",
    "conv4",
    "embedding_ensemble",
    "ensemble_members",
    "exact_batch_norm",
    "finalize_state",
    "mlp",
    "step_norms",
]

# Keras layers whose second derivative is wrong (they compute the variance
# with a stop-gradient through the mean).
WRONG_SECOND_DERIVATIVE = (
    keras.layers.BatchNormalization,
    keras.layers.GroupNormalization,
)


def mlp(
    input_shape: Sequence[int],
    output_units: int,
    *,
    hidden_units: Sequence[int] = (40, 40),
    activation: str = "relu",
    name: str = "mlp",
) -> keras.Model:
    """Builds the fully connected network of the MAML sinusoid experiments.

    Args:
        input_shape: The shape of one example, e.g. `(1,)`.
        output_units: The width of the linear output layer.
        hidden_units: The width of each hidden layer. Defaults to
            `(40, 40)`, the MAML paper's regression network.
        activation: The hidden activation. Defaults to `"relu"`.
        name: The model name. Defaults to `"mlp"`.

    Returns:
        A built `keras.Sequential`.
    """
    layers = [keras.Input(tuple(input_shape))]
    for i, units in enumerate(hidden_units):
        layers.append(
            keras.layers.Dense(units, activation=activation, name=f"dense_{i}")
        )
    layers.append(keras.layers.Dense(output_units, name="output"))
    return keras.Sequential(layers, name=name)


def conv4(
    input_shape: Sequence[int],
    output_units: int | None,
    *,
    filters: int = 64,
    norm_steps: int | None = None,
    name: str = "conv4",
) -> keras.Model:
    """Builds the Conv4 network of the MAML few-shot image experiments.

    Four blocks of [3x3 convolution, `BatchNormalization` (this module's,
    batch statistics), 2x2 max-pooling, ReLU], flattened into a linear
    head: the network of Finn et al. (2017) and Vinyals et al. (2016).
    They apply ReLU before pooling; ReLU is monotone, so both orders
    compute the same function and gradients, and pooling first runs ReLU
    and its gradient on a quarter of the values (2-3% of a second-order
    meta-step, benchmarks/RESULTS.md).

    Args:
        input_shape: The shape of one image, e.g. `(28, 28, 1)`.
        output_units: The number of classes (`num_ways`), or `None` for
            no head: the flattened features (a ProtoNet's embedding).
        filters: Filters per convolution. Defaults to `64`.
        norm_steps: MAML++'s per-step batch norm: the `num_steps` of every
            `BatchNormalization`. Defaults to `None` (one set).
        name: The model name. Defaults to `"conv4"`.

    Returns:
        A built `keras.Sequential` that returns logits.
    """
    layers = [keras.Input(tuple(input_shape))]
    for i in range(4):
        layers += [
            keras.layers.Conv2D(filters, 3, padding="same", name=f"conv_{i}"),
            BatchNormalization(num_steps=norm_steps, name=f"norm_{i}"),
            keras.layers.MaxPooling2D(2, name=f"pool_{i}"),
            keras.layers.ReLU(name=f"relu_{i}"),
        ]
    layers.append(keras.layers.Flatten(name="flatten"))
    if output_units is not None:  # None: the embedding (ProtoNet's).
        layers.append(keras.layers.Dense(output_units, name="logits"))
    return keras.Sequential(layers, name=name)


def embedding_ensemble(
    members: Sequence[keras.Model], *, name: str = "ensemble"
) -> keras.Model:
    """One embedding made of several: each member's embedding scaled to
    unit length, then concatenated.

    Why: independently trained embeddings err on different examples, so a
    prototype classifier over their joint embedding beats each member
    (two Conv4s pretrained from different seeds: +2 points on Omniglot's
    held-out alphabet, benchmarks/RESULTS.md). Unit length weighs every
    member alike whatever the scale of its features, and makes the
    squared distance of two joint embeddings the sum over members of
    `2 - 2 cos`: a `tfmaml.ProtoNet` over the ensemble classifies by the
    members' summed cosine similarities. Pretrain each member on its own
    (`ensemble_members` returns them in order) before wrapping a ProtoNet
    around the ensemble.

    Args:
        members: Two or more built embedding networks (no head) with the
            same input shape and flat `[batch, dim]` outputs, each named
            uniquely.
        name: The model name. Defaults to `"ensemble"`.

    Returns:
        A built Functional model whose output is `[batch, sum of dims]`.

    Raises:
        ValueError: If there are fewer than two members, or their input
            shapes differ, or an output is not flat (named).

    Example:

    >>> members = [conv4((28, 28, 1), None, filters=4, name=f"conv4_{i}")
    ...            for i in range(2)]
    >>> tuple(embedding_ensemble(members).output.shape)
    (None, 8)
    """
    members = list(members)
    if len(members) < 2:
        raise ValueError(
            "An embedding ensemble needs two or more members. Received "
            f"{len(members)}."
        )
    shape = tuple(members[0].input_shape[1:])
    for member in members:
        if tuple(member.input_shape[1:]) != shape:
            raise ValueError(
                f"Ensemble member {member.name!r} takes inputs of shape "
                f"{tuple(member.input_shape[1:])}, the first member "
                f"{shape}: members share their input."
            )
        output = tuple(member.compute_output_shape((None, *shape)))
        if len(output) != 2:
            raise ValueError(
                f"Ensemble member {member.name!r} outputs shape "
                f"{output}; members output flat "
                "[batch, dim] embeddings (end them in Flatten or pooling)."
            )
    inputs = keras.Input(shape)
    outputs = keras.layers.Concatenate(name="joint_embedding")(
        [
            keras.layers.UnitNormalization(name=f"unit_{i}")(member(inputs))
            for i, member in enumerate(members)
        ]
    )
    return keras.Model(inputs, outputs, name=name)


def ensemble_members(network: keras.Model) -> list[keras.Model]:
    """The members of an `embedding_ensemble`, in order (the models it
    nests)."""
    return [layer for layer in network.layers if isinstance(layer, keras.Model)]


def check_base_network(
    network: keras.layers.Layer, *, first_order: bool
) -> None:
    """Refuses what `tfmaml.MAML` cannot meta-train.

    Args:
        network: The base network.
        first_order: Whether the model is first order (any layer is then
            exact).

    Raises:
        TypeError: If `network` is not a Keras layer or model.
        ValueError: If it is not built, has no trainable variables, or,
            for second order, holds a layer whose second derivative Keras
            computes wrongly (the layer is named).
    """
    if not isinstance(network, keras.layers.Layer):
        raise TypeError(
            "`base_model` must be a Keras model or layer. Received: "
            f"base_model={network!r} of type {type(network).__name__}"
        )
    if not network.built:
        raise ValueError(
            "`base_model` must be built, so that its variables exist. Give "
            "it a `keras.Input`, or call `base_model.build(input_shape)` or "
            f"`base_model(x)` first. Received: base_model={network.name} "
            "(not built)"
        )
    if not network.trainable_variables:
        raise ValueError(
            "`base_model` has no trainable variables to meta-learn. "
            f"Received: base_model={network.name}"
        )
    if first_order:
        return
    for layer in walk_layers(network):
        if isinstance(layer, WRONG_SECOND_DERIVATIVE):
            raise ValueError(
                f"`base_model` contains `{type(layer).__name__}` layer "
                f"'{layer.name}', whose second derivative Keras computes "
                "wrongly (the variance stops the gradient through the mean)"
                ", which would make the second-order meta-gradient wrong. "
                + (
                    "Pass `tfmaml.networks.exact_batch_norm(base_model)`, a "
                    "copy with tfmaml's layer in its place and the weights "
                    "carried over, "
                    if isinstance(layer, keras.layers.BatchNormalization)
                    else "Use `keras.layers.LayerNormalization`, "
                )
                + "or pass `first_order=True`."
            )


def step_norms(network: keras.layers.Layer) -> list[BatchNormalization]:
    """The per-step (MAML++) `BatchNormalization` layers in `network`.

    Args:
        network: A Keras network.
    """
    return [
        layer
        for layer in walk_layers(network)
        if isinstance(layer, BatchNormalization) and layer.num_steps is not None
    ]


def clone_with_weights(
    network: keras.Model,
    weights: Sequence,
    example_x,
    *,
    step: int = 0,
) -> keras.Model:
    """A copy of `network` with `weights` as its trainable variables, its
    non-trainable state, and per-step layers set to row `step`.

    Args:
        network: The base network.
        weights: One tensor per trainable variable.
        example_x: Inputs that build the copy if it is not built.
        step: The row per-step layers use. Defaults to `0`.

    Raises:
        ValueError: If `keras.models.clone_model` does not rebuild the
            same variables (a subclassed network without an exact
            `get_config`).
    """
    clone = keras.models.clone_model(network)
    if not clone.built:
        clone(example_x)
    targets = clone.trainable_variables
    if [v.shape for v in targets] != [w.shape for w in weights]:
        raise ValueError(
            "`keras.models.clone_model` gave a copy of the base network "
            f"whose trainable variables {[v.path for v in targets]} do "
            "not match the original's; give the base network a "
            "`get_config` that rebuilds it exactly."
        )
    for variable, value in zip(targets, weights, strict=True):
        variable.assign(value)
    for variable, source in zip(
        clone.non_trainable_variables,
        network.non_trainable_variables,
        strict=True,
    ):
        variable.assign(source)
    for layer in step_norms(clone):
        layer.default_step = step  # Outside any inner loop.
    finalize_state(clone)
    return clone


def finalize_state(network: keras.layers.Layer) -> None:
    """Has the preprocessing layers of `network` re-read their variables.

    `Normalization`, `Discretization` and the lookup layers compute the
    tensors they use from their variables in `finalize_state`, as
    `keras.models.load_model` calls it: after assigning those variables
    (a copy, a conversion), skip it and the copy silently keeps the
    statistics it was built with.

    Args:
        network: A Keras network.
    """
    for layer in walk_layers(network):
        if hasattr(layer, "finalize_state"):
            layer.finalize_state()


def exact_batch_norm(network: keras.Model) -> keras.Model:
    """A copy of `network` in which every `keras.layers.BatchNormalization`
    is a `tfmaml.networks.BatchNormalization`, so that second-order MAML
    can meta-train it (any `keras.applications` backbone, say).

    The copy keeps the layers' names and every weight: each batch norm's
    scale (`gamma`) and offset (`beta`) carry over, the other layers'
    weights are copied as they are. The moving mean and variance are
    dropped: tfmaml's layer always normalises with the statistics of the
    batch at hand (the support set while adapting, the query set when
    predicting), as the original MAML does, so a pretrained backbone's
    running statistics no longer apply. Nested Functional and Sequential
    models are converted too.

    Args:
        network: A built Functional or Sequential Keras model.

    Returns:
        The converted copy; `network` is left unchanged.

    Raises:
        ValueError: If `network` is subclassed (`clone_model` cannot
            rebuild it), or a batch norm layer has a constraint, which
            tfmaml's layer does not take (the layer is named).

    Example:

    >>> net = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(3),
    ...     keras.layers.BatchNormalization(),
    ... ])
    >>> [type(layer).__module__ for layer in exact_batch_norm(net).layers]
    ['keras.src.layers.core.dense', 'tfmaml.batch_norm']
    """
    if (
        not isinstance(network, keras.Model)
        or not network.built
        or not (
            isinstance(network, keras.Sequential)
            or hasattr(network, "_operations")
        )
    ):
        raise ValueError(
            "`exact_batch_norm` converts built Functional or Sequential "
            f"models. Received: {network!r} of type "
            f"{type(network).__name__}; replace the batch norm layers of a "
            "subclassed model with `tfmaml.networks.BatchNormalization`."
        )

    def convert(layer):
        if isinstance(layer, keras.Model):
            return exact_batch_norm(layer)
        if not isinstance(layer, keras.layers.BatchNormalization):
            return layer.__class__.from_config(layer.get_config())
        constrained = layer.beta_constraint or layer.gamma_constraint
        if constrained:
            raise ValueError(
                f"Batch norm layer '{layer.name}' has a weight constraint, "
                "which `tfmaml.networks.BatchNormalization` does not take."
            )
        return BatchNormalization(
            axis=layer.axis,
            epsilon=layer.epsilon,
            center=layer.center,
            scale=layer.scale,
            beta_regularizer=layer.beta_regularizer,
            gamma_regularizer=layer.gamma_regularizer,
            name=layer.name,
            dtype=layer.dtype_policy,
        )

    copy = keras.models.clone_model(network, clone_function=convert)
    originals = {layer.name: layer for layer in network.layers}
    for layer in copy.layers:
        if isinstance(layer, keras.Model) or not layer.weights:
            continue  # Converted, weights included, by the recursion.
        source = originals[layer.name]
        if isinstance(source, keras.layers.BatchNormalization):
            for name in ("gamma", "beta"):
                if getattr(source, name) is not None:
                    getattr(layer, name).assign(getattr(source, name))
        else:
            layer.set_weights(source.get_weights())
    finalize_state(copy)
    return copy
