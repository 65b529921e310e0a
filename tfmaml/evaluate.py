"""Evaluates a trained model on fresh test tasks after 0..k inner steps.

Usage:
  python -m tfmaml.evaluate --config=configs/sinusoid.py --workdir=DIR

Reads `DIR/model.keras` (written by `tfmaml.train`), prints the mean query
loss (and accuracy for classification) with 95% confidence intervals over
`config.eval_tasks` tasks after each of `config.eval_step_counts` inner
steps, and writes them to `DIR/evaluation.txt`. For sinusoid it also draws
`DIR/sinusoid.png` (like Figure 2 of the MAML paper) when matplotlib is
installed (`pip install "tfmaml[plot]"`).
"""

import os

from absl import app
from absl import flags

from tfmaml import cli
from tfmaml import experiment

cli.define_flags()
FLAGS = flags.FLAGS


def main(argv):
    cli.check_no_arguments(argv)
    import keras

    config = FLAGS.config
    workdir = cli.workdir(config)
    path = os.path.join(workdir, cli.MODEL_FILE)
    if not os.path.exists(path):
        raise app.UsageError(
            f"No trained model at {path}: run `python -m tfmaml.train` with "
            "the same --config and --workdir first."
        )
    experiment.configure_runtime(config)
    model = keras.models.load_model(path)
    splits = experiment.build_splits(config)
    cli.evaluate_and_report(model, config, splits.test, workdir)
    if config.task == "sinusoid":
        _plot_sinusoid(model, config, os.path.join(workdir, "sinusoid.png"))


def _plot_sinusoid(model, config, path):
    try:
        from tfmaml import plots
    except ImportError:
        print(
            "Skipped the sinusoid plot: it needs matplotlib "
            '(pip install "tfmaml[plot]").'
        )
        return
    plots.plot_sinusoid_adaptation(
        model, path, num_shots=config.num_shots, seed=config.seed
    )
    print(f"Wrote {path}")


if __name__ == "__main__":
    app.run(main)
