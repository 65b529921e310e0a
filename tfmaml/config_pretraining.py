"""A config's whole-class pretraining, run in a workdir (`tfmaml.train`).

Why apart from `tfmaml.pretraining`: that module trains one embedding;
this one reads the config (its ensemble members, each with its own seeded
batches and head, and its time budget shared by them) and keeps the
weights in the workdir, each member's as it ends, so that a run started
again after a stop loses at most the member it stopped in.
"""

import math
import os
import shutil
import time
from collections.abc import Callable

import keras
import ml_collections

from tfmaml import image_tasks
from tfmaml import networks
from tfmaml import pretraining

PRETRAINED_WEIGHTS = "pretrained.weights.h5"
PRETRAINED_MEMBERS = "pretrained_members"


def _check_pretrain_on_validation(config, steps):
    """Refuses `pretrain_on_validation` where it would do nothing or make
    validation choose among episodic checkpoints by classes the embedding
    was trained on."""
    if not config.get("pretrain_on_validation", False):
        return
    if not steps:
        raise ValueError(
            "pretrain_on_validation=True adds the validation classes to "
            "pretraining, but pretrain_steps=0 pretrains nothing."
        )
    if config.total_steps:
        raise ValueError(
            "pretrain_on_validation=True pretrains on the validation "
            "classes, so validation cannot then score the episodes that "
            "follow (checkpoints, early stopping); use it with "
            f"total_steps=0. Received: total_steps={config.total_steps}"
        )


def pretrain(
    model: keras.Model,
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    verbose: int = 0,
    report: Callable[[str], None] | None = None,
) -> list[int]:
    """Pretrains a ProtoNet's embedding on whole classes before its episodes
    (`tfmaml.pretraining`; `config.pretrain_steps` batches, 0: nothing to
    do, or as many as fit `config.pretrain_minutes` of this run, 0: no
    limit, shared by an ensemble's members still to train; one with no
    time left trains the fewest, `BUDGET_PROBE + BUDGET_TIMED`); returns
    the steps each member trained (empty: nothing trained here). An
    embedding ensemble (`config.ensemble_size`) pretrains each member in
    turn, each with its own head and batches
    (`image_tasks.pretraining_seed`). The weights go to
    `WORKDIR/pretrained.weights.h5`; a run that finds them there (started
    again after a stop) loads them instead, so it goes on from the same
    embedding. Each member's weights are kept as it ends, in
    `WORKDIR/pretrained_members/` until the last one ends: a run stopped
    during an ensemble's pretraining loses only the member it was
    training (about 9 minutes of a Zen 5's 2 cores for the recipe's, 50
    on a Zen 1's), which then trains again from its first batch as it
    would have. TensorBoard logs go to `WORKDIR/tensorboard/pretraining`.

    Args:
        model: The config's model (`build_model`), in its strategy's scope.
        config: The experiment config.
        workdir: The run's directory.
        verbose: `fit`'s verbosity. Defaults to 0.
        report: Called with a line as each ensemble member ends (its
            minutes) or is loaded. Defaults to none.

    Raises:
        ValueError: If the config pretrains anything but a ProtoNet, names
            an unknown `pretrain_head`, sets `pretrain_on_validation`
            without `pretrain_steps` or with episodes (`total_steps`), or
            a `pretrain_minutes` that is not a number >= 0.
    """
    start = time.perf_counter()
    steps = config.get("pretrain_steps", 0)
    _check_pretrain_on_validation(config, steps)
    minutes = config.get("pretrain_minutes", 0)
    if not (isinstance(minutes, int | float) and 0 <= minutes < math.inf):
        raise ValueError(
            "pretrain_minutes must be a number of minutes >= 0 (0: no "
            f"limit). Received: pretrain_minutes={minutes!r}"
        )
    if not steps:
        return []
    if config.algorithm != "protonet":
        raise ValueError(
            "pretrain_steps pretrains a ProtoNet's embedding (a network "
            f"without a head); algorithm={config.algorithm!r} has a head "
            f"of num_ways classes. Received: pretrain_steps={steps}"
        )
    head = pretraining.check_head(  # Also when the weights are kept.
        config.get("pretrain_head", "linear"), "pretrain_head"
    )
    path = os.path.join(workdir, PRETRAINED_WEIGHTS)
    if os.path.exists(path):
        _load_kept(model.base_model, path)
        return []
    members = networks.ensemble_members(model.base_model) or [model.base_model]
    ensemble = len(members) > 1
    streams, num_classes = image_tasks.labelled_training_batches(
        config, members=len(members)
    )
    logs = os.path.join(workdir, "tensorboard", "pretraining")
    kept = os.path.join(workdir, PRETRAINED_MEMBERS)
    trained = []
    for i, (member, batches) in enumerate(zip(members, streams, strict=True)):
        member_path = os.path.join(kept, f"{member.name}.weights.h5")
        if ensemble and os.path.exists(member_path):
            _load_kept(member, member_path)
            if report:
                report(
                    f"Loaded ensemble member {member.name} ({i + 1} of "
                    f"{len(members)}), pretrained before a stop, from "
                    f"{member_path}."
                )
            continue
        member_start = time.perf_counter()
        history = pretraining.pretrain_embedding(
            member,
            batches,
            num_classes,
            steps=steps,
            learning_rate=config.pretrain_learning_rate,
            label_smoothing=config.get("pretrain_label_smoothing", 0.0),
            head=head,
            steps_per_epoch=config.steps_per_epoch,
            callbacks=[
                keras.callbacks.TensorBoard(
                    os.path.join(logs, member.name) if ensemble else logs
                )
            ],
            verbose=verbose,
            seed=image_tasks.pretraining_seed(config, i),
            seconds=(  # What is left, shared by the members left.
                max(0.0, 60 * minutes - (member_start - start))
                / (len(members) - i)
                if minutes
                else None
            ),
        )
        trained.append(history.history["steps"])
        if not ensemble:
            continue
        os.makedirs(kept, exist_ok=True)
        member.save_weights(member_path)
        if report:
            report(
                f"Pretrained ensemble member {member.name} ({i + 1} of "
                f"{len(members)}) for {trained[-1]} steps in "
                f"{(time.perf_counter() - member_start) / 60:.1f} min."
            )
    model.base_model.save_weights(path)
    if ensemble:
        shutil.rmtree(kept)  # All in `path` now.
    return trained


def _load_kept(network: keras.Model, path: str) -> None:
    """Loads pretrained weights kept in the workdir, or names the file and
    the network they do not fit (a workdir reused with another config)."""
    try:
        network.load_weights(path)
    except ValueError as error:
        raise ValueError(
            f"{path} holds pretrained weights that do not fit "
            f"{network.name!r} as this config builds it (a workdir of a run "
            f"with another config?): {error}"
        ) from error
