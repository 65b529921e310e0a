"""tfmaml: gradient-based meta-learning (MAML and its family) for Keras."""

from tfmaml import console

# Before TensorFlow loads: `python -m tfmaml.train` (or `.evaluate`) keeps
# native log lines off the terminal; any other import changes nothing.
console.divert_native_stderr()

# ruff: noqa: E402
from tfmaml import runtime

# Before TensorFlow loads: its oneDNN kernels on every x86 CPU; before it
# runs anything: one thread per op (tfmaml.runtime).
runtime.request_onednn()
runtime.set_default_threads()
runtime.warn_if_onednn_off()

from tfmaml import balanced_assignment
from tfmaml import cancelled_biases
from tfmaml import data
from tfmaml import folded_batch_norm
from tfmaml import inner_loop
from tfmaml import networks
from tfmaml import prototype_head
from tfmaml import tasks
from tfmaml import views
from tfmaml.algorithms import ANIL
from tfmaml.algorithms import MetaSGD
from tfmaml.algorithms import Reptile
from tfmaml.algorithms import register_algorithm
from tfmaml.batches import Episode
from tfmaml.labels import LabelKind
from tfmaml.meta_learner import MetaLearner
from tfmaml.model import MAML
from tfmaml.networks import BatchNormalization
from tfmaml.prototypes import ProtoMAML
from tfmaml.prototypes import ProtoNet
from tfmaml.tasks import TaskResults

__version__ = "0.1.0"

__all__ = [
    "ANIL",
    "MAML",
    "MetaLearner",
    "MetaSGD",
    "ProtoMAML",
    "ProtoNet",
    "Reptile",
    "BatchNormalization",
    "Episode",
    "LabelKind",
    "TaskResults",
    "balanced_assignment",
    "cancelled_biases",
    "data",
    "folded_batch_norm",
    "inner_loop",
    "networks",
    "prototype_head",
    "register_algorithm",
    "tasks",
    "views",
]
