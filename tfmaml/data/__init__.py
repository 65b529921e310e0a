"""Episode pipelines: `tf.data` datasets of meta-batches of tasks."""

from tfmaml.data import sources
from tfmaml.data.augmentation import AffineAugmentation
from tfmaml.data.episodes import DeviceEpisodes
from tfmaml.data.episodes import episodes
from tfmaml.data.episodes import grouped_classes
from tfmaml.data.image_preprocessing import prepare
from tfmaml.data.image_preprocessing import preprocessing
from tfmaml.data.ink_centring import InkCentring
from tfmaml.data.joined import join_classes
from tfmaml.data.labelled import labelled_batches
from tfmaml.data.labelled import labelled_classes
from tfmaml.data.sinusoid import SinusoidTasks
from tfmaml.data.sinusoid import sample_sinusoid_tasks
from tfmaml.data.sinusoid import sinusoid
from tfmaml.data.sources import ClassIndexedImages
from tfmaml.data.sources import Splits

__all__ = [
    "AffineAugmentation",
    "ClassIndexedImages",
    "DeviceEpisodes",
    "InkCentring",
    "SinusoidTasks",
    "Splits",
    "episodes",
    "grouped_classes",
    "join_classes",
    "labelled_batches",
    "labelled_classes",
    "prepare",
    "preprocessing",
    "sample_sinusoid_tasks",
    "sinusoid",
    "sources",
]
