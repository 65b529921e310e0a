"""Half-cheetah direction and velocity (Finn et al. 2017, section 5.3) as
task families: Gymnasium's MuJoCo HalfCheetah v5 in worker processes
(`tfmaml.rl.locomotion_envs`), through `GymnasiumFamily`.

Observations are 17 numbers (joint positions without the x position, and
velocities), actions 6 torques in [-1, 1]; the paper's horizon is 200.
Direction tasks are +1 (run forward) or -1 (backward), each with
probability 1/2; velocity tasks are a goal velocity uniform in [0, 2].
"""

import keras

from tfmaml.rl.simulators import GymnasiumFamily

# "module:id": Gymnasium imports the module (which registers the ids).
_ENVS = "tfmaml.rl.locomotion_envs:tfmaml/HalfCheetah{}-v5"


class _HalfCheetah(GymnasiumFamily):
    def __init__(self, objective, *, horizon, num_workers, **tasks):
        super().__init__(
            _ENVS.format(objective),
            17,
            6,
            horizon=horizon,
            num_workers=num_workers,
            **tasks,
        )

    def get_config(self) -> dict:
        return {"horizon": self.horizon, "num_workers": self.num_workers}


@keras.saving.register_keras_serializable(package="tfmaml")
class HalfCheetahDirection(_HalfCheetah):
    """Run forward or backward: reward = direction x forward velocity -
    0.05 |a|^2.

    Args:
        horizon: Steps per episode. Defaults to `200`.
        num_workers: Worker processes; defaults to one per CPU core.
    """

    def __init__(self, *, horizon: int = 200, num_workers: int | None = None):
        super().__init__(
            "Direction",
            horizon=horizon,
            num_workers=num_workers,
            task_choices=[[-1.0], [1.0]],
        )


@keras.saving.register_keras_serializable(package="tfmaml")
class HalfCheetahVelocity(_HalfCheetah):
    """Run at a goal velocity uniform in [0, 2]: reward = -|velocity -
    goal| - 0.05 |a|^2.

    Args:
        horizon: Steps per episode. Defaults to `200`.
        num_workers: Worker processes; defaults to one per CPU core.
    """

    def __init__(self, *, horizon: int = 200, num_workers: int | None = None):
        super().__init__(
            "Velocity",
            horizon=horizon,
            num_workers=num_workers,
            task_low=[0.0],
            task_high=[2.0],
        )
