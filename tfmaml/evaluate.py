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
from tfmaml import console
from tfmaml import experiment
from tfmaml import rl_tasks

cli.define_flags()
flags.DEFINE_string(
    "pretrained_workdir",
    None,
    "Meta-RL: the workdir of a run with `--config.inner_steps=0` (the "
    "`pretrained` variant), evaluated beside the model as the paper's "
    "'pretrained' baseline.",
)
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
    console.log_to_workdir(workdir)
    experiment.configure_runtime(config)
    model = keras.models.load_model(path)
    splits = experiment.build_splits(config)
    results = cli.evaluate_and_report(model, config, splits.test, workdir)
    if any(getattr(r, "diverged_at", None) is not None for r in results):
        raise SystemExit(1)  # The table says where and what to do.
    if config.task == "sinusoid":
        _plot_sinusoid(model, config, os.path.join(workdir, "sinusoid.png"))
    if experiment.is_rl(config):
        _compare_rl_baselines(model, results, config, splits.test, workdir)


def _compare_rl_baselines(model, results, config, test, workdir):
    """Evaluates the random-initialisation baseline (and the pretrained one
    if given) beside the model's `results`; writes the tables and, with
    matplotlib, the return-vs-steps and paths figures."""
    import keras

    from tfmaml import rl

    task_batch = next(iter(test))[rl.task_families.TASKS]
    keras.utils.set_random_seed(config.seed + 1)
    baselines = {"random init": experiment.build_model(config)}
    if FLAGS.pretrained_workdir:
        baselines["pretrained"] = keras.models.load_model(
            os.path.join(FLAGS.pretrained_workdir, cli.MODEL_FILE)
        )
    results = {"MAML": results}
    for name, baseline in baselines.items():
        results[name] = rl_tasks.evaluate_rl_returns(
            baseline, config, task_batch
        )
    tables = [rl.format_returns(results[name], name) for name in baselines]
    print("\n\n".join(tables))
    with open(os.path.join(workdir, "evaluation.txt"), "a") as f:
        f.write("\n" + "\n\n".join(tables) + "\n")
    try:
        from tfmaml import plots
    except ImportError:
        print('Skipped the figures: they need matplotlib ("tfmaml[plot]").')
        return
    if config.task == "navigation2d":
        written = plots.plot_navigation_figures(
            model,
            results,
            task_batch,
            workdir,
            num_trajectories=config.eval_num_trajectories,
            seed=config.seed,
            title=config.name,
        )
    else:  # Paths are drawn for 2D navigation only.
        written = [os.path.join(workdir, "returns.png")]
        plots.plot_returns(results, written[0], title=config.name)
    print(f"Wrote {' and '.join(written)}")


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
