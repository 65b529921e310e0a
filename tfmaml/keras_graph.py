"""What a network's Keras graph shows for certain about its batch norms.

Why. Two of tfmaml's savings rest on one fact about the network: a layer
whose output goes only to a `tfmaml.BatchNormalization` normalising it with
the statistics of the batch. Such a layer's bias cancels
(`tfmaml.cancelled_biases`), and a convolution's batch norm can be folded
into it (`tfmaml.folded_batch_norm`). Both read that fact here, from the
functional graph Keras keeps for a `Sequential` or functional model, and
only from there: a subclassed model's `call` may not run what its layers'
graph says.
"""

import collections
from collections.abc import Iterator
from typing import NamedTuple

import keras

from tfmaml.batch_norm import BatchNormalization


class NormalisedOutput(NamedTuple):
    """A layer whose only reader is a batch norm with batch statistics."""

    layer: keras.layers.Layer
    norm: BatchNormalization
    tensor: keras.KerasTensor  # The layer's output, the norm's input.


def graphs(layer: keras.layers.Layer) -> Iterator[keras.Model]:
    """The functional graphs `layer` runs when called: its own, and those
    of functional models it calls as nodes. A model whose `call` is not
    Keras' functional one yields nothing: its graph may not be what runs."""
    graph = _functional_graph(layer)
    if graph is None:
        return
    yield graph
    for operation in graph.operations:
        yield from graphs(operation)


def normalised_outputs(
    network: keras.layers.Layer, training: bool
) -> Iterator[NormalisedOutput]:
    """Every layer of `network`'s graphs called once whose output is read
    only by a `tfmaml.BatchNormalization` that normalises it over the
    layer's channel axis with the statistics of the batch when the network
    runs with `training` (batch norm with `use_moving_statistics` does so
    only in training). The layer may be of any type: callers check theirs.
    """
    for graph in graphs(network):
        nodes = [n for level in graph._nodes_by_depth.values() for n in level]
        # How often each tensor of the graph is read, by `id`; returning it
        # counts.
        uses = collections.Counter(id(t) for t in graph.outputs)
        for n in nodes:
            uses.update(id(t) for t in n.arguments.keras_tensors)
        for node in nodes:
            found = _normalised_input(node, uses, training)
            if found is not None:
                yield found


def _functional_graph(layer: keras.layers.Layer) -> keras.Model | None:
    try:
        from keras.src.models.functional import Functional
    except ImportError:  # Keras moved it: no graph is read.
        return None
    call = getattr(type(layer), "call", None)
    if call is keras.Sequential.call:
        graph = getattr(layer, "_functional", None)
        return graph if type(graph) is Functional else None
    if call is Functional.call and hasattr(layer, "_nodes_by_depth"):
        return layer
    return None


def _normalised_input(node, uses, training) -> NormalisedOutput | None:
    """The layer whose output the batch norm called at `node` normalises
    with batch statistics, if it is called once and nothing else reads that
    output (`uses`: how often each tensor of the graph is read, by `id`)."""
    norm = node.operation
    if type(norm) is not BatchNormalization:
        return None
    if norm.use_moving_statistics and training is not True:
        return None
    tensors = node.arguments.keras_tensors
    if len(tensors) != 1:
        return None
    tensor = tensors[0]
    history = getattr(tensor, "_keras_history", None)
    layer = history.operation if history is not None else None
    if not isinstance(layer, keras.layers.Layer):
        return None
    if len(layer._inbound_nodes) != 1 or uses[id(tensor)] != 1:
        return None
    rank = len(tensor.shape)
    channels = (
        1
        if getattr(layer, "data_format", None) == "channels_first"
        else rank - 1
    )
    if norm.axis % rank != channels:
        return None
    return NormalisedOutput(layer, norm, tensor)
