"""Which variables of a base network the inner loop adapts.

The one place that decides it: all trainable variables (MAML), those of
named layers (`inner_variables`, ANIL's head), or all but the batch norm
parameters (MAML++'s per-step batch norm, meta-learned by the outer loop
only). The model turns the choice into one flag per trainable variable.
"""

from collections.abc import Iterator
from collections.abc import Sequence

import keras


def walk_layers(network: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """Yields `network` and every layer nested in it, depth first.
    Keras' public `Model.layers` lists only a model's direct children and
    none of a plain layer's; the private `_flatten_layers` walks them all,
    and this is the one place tfmaml calls it.

    Args:
        network: A Keras layer or model.
    """
    yield from network._flatten_layers(include_self=True, recursive=True)


def adapted_mask(
    network: keras.layers.Layer, layer_names: Sequence[str] | None
) -> list[bool]:
    """One flag per trainable variable of `network`: whether the inner loop
    adapts it.

    Args:
        network: A built Keras network.
        layer_names: Names of the layers whose variables adapt; `None` for
            all of them.

    Returns:
        A list as long as `network.trainable_variables`.

    Raises:
        ValueError: If a name is not a layer of `network`, or the layers
            named have no trainable variables.
    """
    variables = network.trainable_variables
    if layer_names is None:
        return [True] * len(variables)
    layers = {layer.name: layer for layer in walk_layers(network)}
    unknown = [n for n in layer_names if n not in layers]
    if unknown:
        raise ValueError(
            f"`inner_variables` names layers {unknown} that are not in "
            f"`base_model`; its layers are {sorted(layers)}."
        )
    chosen = {id(v) for n in layer_names for v in layers[n].trainable_variables}
    if not chosen:
        raise ValueError(
            f"The layers {list(layer_names)} named by `inner_variables` have "
            "no trainable variables for the inner loop to adapt."
        )
    return [id(v) in chosen for v in variables]


def head_layer_names(network: keras.layers.Layer) -> list[str]:
    """The name of the last layer of `network` with trainable weights and
    no sublayers (ANIL adapts only it).

    Args:
        network: A built Keras network.

    Raises:
        ValueError: If no layer has trainable weights.
    """
    leaves = [
        layer
        for layer in walk_layers(network)
        if layer.trainable_weights
        and list(walk_layers(layer)) == [layer]
        and layer is not network
    ]
    if not leaves:
        raise ValueError(
            f"`base_model` {network.name!r} has no layer with trainable "
            "weights to adapt."
        )
    return [leaves[-1].name]


def names_without_normalization(
    network: keras.layers.Layer, normalization: type
) -> list[str]:
    """The names of the layers with trainable weights and no sublayers,
    except those of class `normalization` (MAML++ keeps per-step batch norm
    out of the inner loop).

    Args:
        network: A built Keras network.
        normalization: The normalisation layer class to leave out.
    """
    return [
        layer.name
        for layer in walk_layers(network)
        if layer is not network
        and layer.trainable_weights
        and list(walk_layers(layer)) == [layer]
        and not isinstance(layer, normalization)
    ]
