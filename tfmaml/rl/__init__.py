"""Meta-reinforcement learning: MAML for policies, trained with `fit`.

`MetaRL` wraps a Gaussian policy network (`gaussian_mlp`) and a task family
(`Navigation2D` in the graph; `HalfCheetahDirection`, `HalfCheetahVelocity`
and `MetaWorld` simulated in worker processes; your own Gymnasium
environment through `GymnasiumFamily`; or any `TaskFamily`);
`task_batches` is the dataset it trains on; `export_policy` writes a
SavedModel whose `adapt_and_act` adapts the policy to a new task's
episodes at serving time.
"""

from tfmaml.rl.evaluation import StepReturn
from tfmaml.rl.evaluation import evaluate_returns
from tfmaml.rl.evaluation import format_returns
from tfmaml.rl.export import export_policy
from tfmaml.rl.locomotion import HalfCheetahDirection
from tfmaml.rl.locomotion import HalfCheetahVelocity
from tfmaml.rl.metaworld_tasks import MetaWorld
from tfmaml.rl.model import MetaRL
from tfmaml.rl.policies import StateIndependentLogStd
from tfmaml.rl.policies import gaussian_mlp
from tfmaml.rl.rollouts import Trajectories
from tfmaml.rl.rollouts import rollout
from tfmaml.rl.simulators import GymnasiumFamily
from tfmaml.rl.simulators import SimulatorFamily
from tfmaml.rl.task_families import Navigation2D
from tfmaml.rl.task_families import TaskFamily
from tfmaml.rl.task_families import task_batches

# A config's `task` -> its family's class (each takes `horizon` and the
# config's `family_args`).
FAMILIES = {
    "navigation2d": Navigation2D,
    "cheetah_direction": HalfCheetahDirection,
    "cheetah_velocity": HalfCheetahVelocity,
    "metaworld": MetaWorld,
}

__all__ = [
    "FAMILIES",
    "GymnasiumFamily",
    "HalfCheetahDirection",
    "HalfCheetahVelocity",
    "MetaRL",
    "MetaWorld",
    "Navigation2D",
    "SimulatorFamily",
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
