"""Episode pipelines: `tf.data` datasets of meta-batches of tasks."""

from tfmaml.data.sinusoid import SinusoidTasks
from tfmaml.data.sinusoid import sample_sinusoid_tasks
from tfmaml.data.sinusoid import sinusoid

__all__ = ["SinusoidTasks", "sample_sinusoid_tasks", "sinusoid"]
