"""The half-cheetah tasks of Finn et al. (2017) as Gymnasium environments.

Gymnasium's MuJoCo `HalfCheetah` (v5) with a task: a direction (+1
forward, -1 backward; reward = direction x forward velocity - control
cost) or a goal velocity (reward = -|forward velocity - goal| - control
cost). The control cost is 0.05 |a|^2, the original rllab environments'
`0.5 * 1e-1 * sum(a^2)` (Gymnasium's own default weight is 0.1). Set the
task with `set_task(task)` before `reset`; registered as
`tfmaml/HalfCheetahDirection-v5` and `tfmaml/HalfCheetahVelocity-v5`.
"""

import gymnasium as gym
import numpy as np
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

OBJECTIVES = ("direction", "velocity")
CONTROL_COST = 0.05


class HalfCheetahTaskEnv(HalfCheetahEnv):
    """HalfCheetah v5 whose reward depends on a task (see the module).

    Args:
        objective: `"direction"` or `"velocity"`.
        **kwargs: `HalfCheetahEnv` arguments (`ctrl_cost_weight` defaults
            to the original's 0.05).

    Raises:
        ValueError: If `objective` is unknown, or a task is out of range.
    """

    def __init__(self, objective: str = "direction", **kwargs):
        if objective not in OBJECTIVES:
            raise ValueError(
                f"`objective` must be one of {list(OBJECTIVES)}. "
                f"Received: objective={objective!r}"
            )
        kwargs.setdefault("ctrl_cost_weight", CONTROL_COST)
        super().__init__(**kwargs)
        self.objective = objective
        self.task = 1.0 if objective == "direction" else 0.0

    def set_task(self, task) -> None:
        """The direction (+1 / -1) or the goal velocity, a 1-vector."""
        task = np.asarray(task, np.float64).reshape(-1)
        if task.shape != (1,) or not np.isfinite(task[0]):
            raise ValueError(
                f"A half-cheetah task is one finite number. Received: {task}"
            )
        if self.objective == "direction" and abs(task[0]) != 1.0:
            raise ValueError(
                f"A direction task is +1 or -1. Received: {task[0]}"
            )
        self.task = float(task[0])

    def _get_rew(self, x_velocity, action):
        ctrl_cost = self.control_cost(action)
        if self.objective == "direction":
            forward = self.task * x_velocity
        else:
            forward = -abs(x_velocity - self.task)
        return forward - ctrl_cost, {
            "reward_forward": forward,
            "reward_ctrl": -ctrl_cost,
        }


for _objective in OBJECTIVES:
    _id = f"tfmaml/HalfCheetah{_objective.capitalize()}-v5"
    if _id not in gym.registry:
        gym.register(
            _id,
            entry_point=HalfCheetahTaskEnv,
            kwargs={"objective": _objective},
        )
