"""Meta-trains a config with `model.fit`, evaluates it, and exports it.

Usage:
  python -m tfmaml.train [--config=configs/sinusoid.py[:variant]]
      [--config.field=value ...] [--workdir=DIR] [--export_dir=DIR]

The workdir holds TensorBoard logs (`tensorboard/`), checkpoints
(`checkpoints/latest.keras`, `checkpoints/best.keras`), the log (`log.txt`:
what the terminal does not show, see `tfmaml.console`), the backup that lets a
killed run started again with the same command resume at the exact step it
reached (`backup/`, every `config.backup_every` steps; see
`tfmaml.training`), the final
model (`model.keras`), how long training took (`training.json`: the step
reached, the step resumed from, the seconds of `fit`) and the evaluation
(`evaluation.txt`, and `evaluation.json` for scripts). The model is
exported as a SavedModel that adapts itself at serving time (see
`tfmaml.export`) to `--export_dir`, by default `saved_models/<config.name>/`.
"""

import json
import os
import time

from absl import app
from absl import flags
from absl import logging

from tfmaml import cli
from tfmaml import config_pretraining
from tfmaml import console
from tfmaml import experiment
from tfmaml import training

cli.define_flags()
flags.DEFINE_string(
    "export_dir",
    None,
    "Where the trained model is exported. Defaults to "
    "saved_models/<config.name>.",
)
flags.DEFINE_integer(
    "fit_verbose", 1, "Keras `fit` verbosity: 0 silent, 1 bar, 2 one line."
)
FLAGS = flags.FLAGS


def main(argv):
    cli.check_no_arguments(argv)
    import keras

    config = FLAGS.config
    workdir = cli.workdir(config)
    export_dir = FLAGS.export_dir or os.path.join("saved_models", config.name)
    os.makedirs(workdir, exist_ok=True)
    log = console.log_to_workdir(workdir)
    print(f"Config:\n{config}")
    with open(os.path.join(workdir, "config.txt"), "w") as f:
        f.write(str(config))

    experiment.configure_runtime(config)
    strategy = experiment.build_strategy(config)
    chief = experiment.is_chief(strategy)
    if not chief:
        # Other workers train in step but write only to their own folder.
        workdir = os.path.join(
            workdir, f"worker_{strategy.cluster_resolver.task_id}"
        )
    keras.utils.set_random_seed(config.seed)
    splits = experiment.build_splits(config)
    with strategy.scope():
        model = experiment.build_model(config)
    model.summary(print_fn=logging.info)

    checkpoints = os.path.join(workdir, "checkpoints")
    callbacks = [
        keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(checkpoints, "latest.keras")
        ),
        keras.callbacks.ModelCheckpoint(
            os.path.join(checkpoints, "best.keras"),
            monitor=experiment.checkpoint_monitor(config)[0],
            mode=experiment.checkpoint_monitor(config)[1],
            save_best_only=True,
        ),
        *experiment.early_stopping(config),
    ]
    fit_start = time.perf_counter()
    with strategy.scope():
        pretrained = config_pretraining.pretrain(
            model, config, workdir, verbose=FLAGS.fit_verbose, report=print
        )
        if pretrained:
            scores = model.evaluate(
                splits.validation, verbose=0, return_dict=True
            )
            counts = pretrained if len(set(pretrained)) > 1 else pretrained[:1]
            minutes = (time.perf_counter() - fit_start) / 60
            print(
                "Pretrained the embedding for "
                + " / ".join(map(str, counts))
                + f" steps in {minutes:.1f} min; validation"
                + (
                    " (classes pretrained on)"
                    if config.get("pretrain_on_validation", False)
                    else ""
                )
                + ": "
                + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
            )
    resumed_at = training.fit_resumable(
        model,
        lambda start: experiment.build_splits(config, train_start=start).train,
        total_steps=config.total_steps,
        steps_per_epoch=config.steps_per_epoch,
        backup_dir=os.path.join(workdir, "backup"),
        save_freq=config.backup_every,
        callbacks=callbacks,
        validation_data=splits.validation,
        shuffle=False,  # A stream of fresh tasks; nothing to shuffle.
        verbose=FLAGS.fit_verbose,
    )
    if resumed_at:
        print(f"Resumed from the backup at step {resumed_at}.")
    fit_seconds = time.perf_counter() - fit_start
    steps = training.optimizer_step(model)
    print(f"Meta-trained to step {steps} in {fit_seconds / 60:.1f} min.")
    with open(os.path.join(workdir, "training.json"), "w") as f:
        json.dump(
            {"steps": steps, "resumed_at": resumed_at, "seconds": fit_seconds},
            f,
        )
    model.save(os.path.join(workdir, cli.MODEL_FILE))
    if not chief:
        return

    cli.evaluate_and_report(model, config, splits.test, workdir)

    signatures = experiment.export_model(model, config, export_dir)
    print(f"Exported a SavedModel to {export_dir} (signatures {signatures})")
    print(f"Wrote the run to {workdir}" + (f" (log: {log})" if log else ""))


if __name__ == "__main__":
    app.run(main)
