"""The MAML family as recipes over `tfmaml.MAML` and its one inner loop.

Each class only fixes options of `MAML` (which variables adapt, which
inner-loop hyperparameters are learned) or, for Reptile, the outer update
(`compute_meta_gradients`). First-order MAML is `MAML(first_order=True)`;
the MAML++ fixes are `MAML` options (`multi_step_loss_steps`,
`learn_inner_lr="per_layer_per_step"`, `first_order_steps`) plus a Keras
`CosineDecay` schedule for the meta learning rate.

`ALGORITHMS` maps the names configs use to recipes; a new algorithm is a
class here (or anywhere: `register_algorithm`) and one registry line.
"""

from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import keras
import tensorflow as tf

from tfmaml.adapted_variables import head_layer_names
from tfmaml.batches import Episode
from tfmaml.model import MAML
from tfmaml.prototypes import ProtoMAML
from tfmaml.prototypes import ProtoNet
from tfmaml.tasks import TaskResults


@keras.saving.register_keras_serializable(package="tfmaml")
class MetaSGD(MAML):
    """Meta-SGD: a learned inner learning rate for every weight element.

    The rates start at `inner_lr` and are meta-trained with the initial
    weights; the inner step is `w - rate * grad` elementwise
    (`tfmaml.inner_loop.LearnedSGD(rates="per_parameter")`).

    Args:
        base_model: A built Keras network.
        inner_lr: The rates' initial value. Defaults to `0.01`.
        inner_steps: Inner steps in training. Defaults to `1`.
        **kwargs: Other `MAML` options.

    References:
        Li, Zhou, Chen and Li. Meta-SGD: Learning to Learn Quickly for
        Few-Shot Learning. 2017.
    """

    def __init__(
        self,
        base_model: keras.layers.Layer,
        inner_lr: float | None = None,
        inner_steps: int = 1,
        **kwargs,
    ):
        kwargs.setdefault("learn_inner_lr", "per_parameter")
        if kwargs["learn_inner_lr"] != "per_parameter":
            raise ValueError(
                "MetaSGD learns a rate per parameter. Received: "
                f"learn_inner_lr={kwargs['learn_inner_lr']!r}"
            )
        super().__init__(base_model, inner_lr, inner_steps, **kwargs)


@keras.saving.register_keras_serializable(package="tfmaml")
class ANIL(MAML):
    """ANIL (almost no inner loop): adapt only the head.

    The inner loop adapts the variables of the layers in `inner_variables`,
    by default the last layer of `base_model` that has trainable weights;
    the body is meta-learned by the outer loop only.

    Args:
        base_model: A built Keras network.
        inner_lr: Defaults to `0.01`.
        inner_steps: Defaults to `1`.
        **kwargs: Other `MAML` options.

    References:
        Raghu, Raghu, Bengio and Vinyals. Rapid Learning or Feature Reuse?
        Towards Understanding the Effectiveness of MAML. ICLR 2020.
    """

    def __init__(
        self,
        base_model: keras.layers.Layer,
        inner_lr: float | None = None,
        inner_steps: int = 1,
        **kwargs,
    ):
        if kwargs.get("inner_variables") is None:
            kwargs["inner_variables"] = head_layer_names(base_model)
        super().__init__(base_model, inner_lr, inner_steps, **kwargs)


@keras.saving.register_keras_serializable(package="tfmaml")
class Reptile(MAML):
    """Reptile: move the initial weights towards each task's adapted ones.

    Each task runs `inner_steps` inner steps on its support set; the
    "gradient" given to the compiled optimizer is the mean over tasks of
    `initial - adapted` weights (with `keras.optimizers.SGD(epsilon)` this
    is Reptile's `w += epsilon * mean(adapted - w)`). No second derivative
    and no query loss are involved; query metrics are still logged.

    Args:
        base_model: A built Keras network.
        inner_lr: Inner SGD step. Defaults to `0.01`.
        inner_steps: Inner steps per task. Defaults to `5`.
        **kwargs: Other `MAML` options, except learned inner
            hyperparameters and MAML++ loss options, which need a
            meta-gradient.

    References:
        Nichol, Achiam and Schulman. On First-Order Meta-Learning
        Algorithms. 2018.
    """

    def __init__(
        self,
        base_model: keras.layers.Layer,
        inner_lr: float | None = None,
        inner_steps: int = 5,
        **kwargs,
    ):
        for name in (
            "learn_inner_lr",
            "learn_inner_momentum",
            "multi_step_loss_steps",
            "first_order_steps",
        ):
            if kwargs.get(name):
                raise ValueError(
                    f"Reptile has no meta-gradient to learn `{name}` with. "
                    f"Received: {name}={kwargs[name]!r}"
                )
        kwargs["first_order"] = True
        super().__init__(base_model, inner_lr, inner_steps, **kwargs)
        learned = getattr(self.inner_optimizer, "trainable_weights", None)
        if learned:
            raise ValueError(
                "Reptile has no meta-gradient to learn the inner optimiser's "
                f"weights {[w.path for w in learned]} with."
            )

    def compute_meta_gradients(
        self, episode: Episode
    ) -> tuple[list[tf.Tensor], TaskResults]:
        """The mean over tasks of `initial - adapted` weights."""
        results = self.solve_tasks(
            episode,
            steps=self.inner_steps,
            first_order=True,
            training=True,
            with_fast_weights=True,
            with_pre_predictions=self.pre_metrics_in_training,
        )
        sums = [
            tf.cast(tf.shape(fast)[0], fast.dtype) * tf.convert_to_tensor(v)
            - tf.reduce_sum(fast, axis=0)
            for v, fast in zip(
                self.trainable_variables, results.fast_weights, strict=True
            )
        ]
        return self.mean_over_tasks(sums, tf.shape(results.loss)[0]), results


class Recipe(NamedTuple):
    """How a config's `algorithm` name builds a model.

    Attributes:
        model_class: A `MAML` subclass (or `MAML`).
        options: Constructor options the name fixes (e.g. `first_order`).
    """

    model_class: type
    options: dict


ALGORITHMS: dict[str, Recipe] = {
    "maml": Recipe(MAML, {}),
    "fomaml": Recipe(MAML, {"first_order": True}),
    "reptile": Recipe(Reptile, {}),
    "meta_sgd": Recipe(MetaSGD, {}),
    "anil": Recipe(ANIL, {}),
    "protonet": Recipe(ProtoNet, {}),
    "proto_maml": Recipe(ProtoMAML, {}),
}


def register_algorithm(
    name: str, model_class: Callable[..., Any], **options: Any
) -> None:
    """Makes `name` usable as a config's `algorithm`.

    Args:
        name: The name configs use.
        model_class: A `MAML` subclass (or any callable with its
            constructor's signature).
        **options: Constructor options the name fixes.

    Raises:
        ValueError: If `name` is taken.
    """
    if name in ALGORITHMS:
        raise ValueError(
            f"Algorithm {name!r} is registered already; known algorithms: "
            f"{sorted(ALGORITHMS)}."
        )
    ALGORITHMS[name] = Recipe(model_class, dict(options))


def build_algorithm(
    name: str, base_model: keras.layers.Layer, **options: Any
) -> MAML:
    """The model of algorithm `name` around `base_model`.

    Args:
        name: A key of `ALGORITHMS`.
        base_model: A built Keras network.
        **options: Constructor options; the recipe's own take precedence.

    Raises:
        ValueError: If `name` is unknown (the known names are listed).
    """
    if name not in ALGORITHMS:
        raise ValueError(
            f"Unknown `algorithm` {name!r}; known algorithms: "
            f"{sorted(ALGORITHMS)}."
        )
    recipe = ALGORITHMS[name]
    if recipe.model_class is Reptile:
        options.pop("first_order", None)  # Reptile is first order.
    return recipe.model_class(base_model, **{**options, **recipe.options})
