"""Meta-reinforcement learning: MAML for policies, trained with `fit`.

`MetaRL` wraps a Gaussian policy network (`gaussian_mlp`) and a task family
(`Navigation2D`, or any `TaskFamily`); `task_batches` is the dataset it
trains on; `export_policy` writes a SavedModel whose `adapt_and_act`
adapts the policy to a new task's episodes at serving time.
"""

from tfmaml.rl.evaluation import StepReturn
from tfmaml.rl.evaluation import evaluate_returns
from tfmaml.rl.evaluation import format_returns
from tfmaml.rl.export import export_policy
from tfmaml.rl.model import MetaRL
from tfmaml.rl.policies import StateIndependentLogStd
from tfmaml.rl.policies import gaussian_mlp
from tfmaml.rl.rollouts import Trajectories
from tfmaml.rl.rollouts import rollout
from tfmaml.rl.task_families import FAMILIES
from tfmaml.rl.task_families import Navigation2D
from tfmaml.rl.task_families import TaskFamily
from tfmaml.rl.task_families import task_batches

__all__ = [
    "FAMILIES",
    "MetaRL",
    "Navigation2D",
    "StateIndependentLogStd",
    "StepReturn",
    "TaskFamily",
    "Trajectories",
    "evaluate_returns",
    "export_policy",
    "format_returns",
    "gaussian_mlp",
    "rollout",
    "task_batches",
]
