"""Meta-training that resumes exactly and stops on a non-finite loss.

Keras' `BackupAndRestore` restores the epoch, not the step within it: a run
killed mid-epoch repeats part of that epoch. tfmaml's pipelines are seeded by
batch index (`tfmaml.data.streams`), so a run can instead continue at the
exact step it reached: `fit_resumable` restores the weights and optimizer
state of the last backup, restarts the data stream at the restored
`optimizer.iterations`, finishes the interrupted epoch, then goes on with the
epochs of an uninterrupted run. With op determinism on, the final weights are
those of a run that was never killed.
"""

import math
import os
from collections.abc import Callable
from collections.abc import Sequence

import keras
import tensorflow as tf

BACKUP_FILE = "latest.weights.h5"


def optimizer_step(model: keras.Model) -> int:
    """The optimizer's step count (a mirrored variable under a strategy).

    Args:
        model: A compiled model.
    """
    return int(model.optimizer.iterations.numpy())


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `FloatingPointError` as soon as the loss is NaN or infinite.

    Raising (rather than setting `stop_training`) ends `fit` at once, before
    any later callback or the end of the epoch can save the broken weights:
    list it first, so checkpoints and backups keep the last good state.
    """

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            step = optimizer_step(self.model)
            raise FloatingPointError(
                f"The training loss became {float(loss)} at step {step} "
                f"(epoch batch {batch}); training stopped before saving "
                "anything, so the last checkpoint and backup are the last "
                "good state."
            )


class StepBackup(keras.callbacks.Callback):
    """Saves weights and optimizer state every `save_freq` optimizer steps.

    The file is written beside and then moved over the previous one, so a
    kill while saving leaves the previous backup whole.

    Args:
        backup_dir: Where `latest.weights.h5` goes.
        save_freq: Optimizer steps between backups; with
            `steps_per_execution`, use a multiple of it.
    """

    def __init__(self, backup_dir: str, save_freq: int):
        super().__init__()
        if save_freq < 1:
            raise ValueError(
                f"`save_freq` must be >= 1. Received: save_freq={save_freq}"
            )
        self.backup_dir = backup_dir
        self.save_freq = save_freq
        self.path = os.path.join(backup_dir, BACKUP_FILE)
        self._last_saved = None

    def restore(self, model: keras.Model) -> int:
        """Loads the backup into `model`, if there is one.

        Returns:
            The optimizer step the model is at: that of the backup, or the
            model's own if there is none.
        """
        if model.optimizer is not None and not model.optimizer.built:
            with model.distribute_strategy.scope():
                model.optimizer.build(model.trainable_variables)
        if os.path.exists(self.path):
            model.load_weights(self.path)
        self._last_saved = optimizer_step(model)
        return self._last_saved

    def on_train_batch_end(self, batch, logs=None):
        step = optimizer_step(self.model)
        if self._last_saved is None:
            self._last_saved = step
        if step - self._last_saved >= self.save_freq:
            os.makedirs(self.backup_dir, exist_ok=True)
            partial = os.path.join(self.backup_dir, "partial.weights.h5")
            self.model.save_weights(partial, overwrite=True)
            os.replace(partial, self.path)
            self._last_saved = step

    def clear(self) -> None:
        """Deletes the backup (after a run has finished)."""
        if os.path.exists(self.path):
            os.remove(self.path)


def epoch_count(total_steps: int, steps_per_epoch: int) -> int:
    """Epochs of a run of `total_steps`: the last one may be short."""
    return -(-total_steps // steps_per_epoch)


def fit_resumable(
    model: keras.Model,
    make_train_data: Callable[[int], tf.data.Dataset],
    *,
    total_steps: int,
    steps_per_epoch: int,
    backup_dir: str,
    save_freq: int,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    **fit_kwargs,
) -> int:
    """`model.fit` for `total_steps`, resumable at the exact step.

    Args:
        model: A compiled model.
        make_train_data: `make_train_data(start)` returns the training
            stream from batch index `start` on.
        total_steps: Optimizer steps of the whole run, rounded up to whole
            epochs.
        steps_per_epoch: Steps between epoch ends (validation, logs,
            checkpoints).
        backup_dir: Where the step backups go; deleted when the run ends.
        save_freq: Steps between backups.
        callbacks: More callbacks, run after the non-finite loss guard and
            before the backup.
        **fit_kwargs: Passed to `fit` (`validation_data`, `verbose`, ...).

    Returns:
        The step the run resumed from (0 for a fresh run).

    Raises:
        FloatingPointError: If the loss becomes NaN or infinite; the step
            is named and nothing is saved after it.
    """
    backup = StepBackup(backup_dir, save_freq)
    start = backup.restore(model)
    epochs = epoch_count(total_steps, steps_per_epoch)
    epoch, offset = divmod(start, steps_per_epoch)
    everything = [StopOnNonFiniteLoss(), *callbacks, backup]
    if offset and epoch < epochs:
        # Finish the interrupted epoch first, from the step it reached.
        model.fit(
            make_train_data(start),
            initial_epoch=epoch,
            epochs=epoch + 1,
            steps_per_epoch=steps_per_epoch - offset,
            callbacks=everything,
            **fit_kwargs,
        )
        epoch += 1
    if epoch < epochs:
        model.fit(
            make_train_data(epoch * steps_per_epoch),
            initial_epoch=epoch,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=everything,
            **fit_kwargs,
        )
    backup.clear()
    return start
