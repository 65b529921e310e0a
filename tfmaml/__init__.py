"""tfmaml: gradient-based meta-learning (MAML and its family) for Keras."""

from tfmaml import data
from tfmaml import inner_loop
from tfmaml import networks
from tfmaml.algorithms import ANIL
from tfmaml.algorithms import MetaSGD
from tfmaml.algorithms import Reptile
from tfmaml.model import MAML
from tfmaml.model import Episode
from tfmaml.model import TaskResults
from tfmaml.networks import BatchNormalization

__version__ = "0.1.0"

__all__ = [
    "ANIL",
    "MAML",
    "MetaSGD",
    "Reptile",
    "BatchNormalization",
    "Episode",
    "TaskResults",
    "data",
    "inner_loop",
    "networks",
]
