"""Flags and paths shared by the `tfmaml.train` and `tfmaml.evaluate` mains."""

import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from tfmaml import configs
from tfmaml import evaluation
from tfmaml import experiment
from tfmaml import image_tasks
from tfmaml import rl
from tfmaml import rl_tasks

DEFAULT_CONFIG = os.path.join(os.path.dirname(configs.__file__), "sinusoid.py")
MODEL_FILE = "model.keras"


def define_flags() -> None:
    """Defines `--config` (with `--config.field=value` overrides) and
    `--workdir`."""
    config_flags.DEFINE_config_file(
        "config",
        default=DEFAULT_CONFIG,
        help_string="A config file, optionally `path.py:variant`. Defaults to "
        "the sinusoid config shipped with tfmaml.",
        lock_config=True,
    )
    flags.DEFINE_string(
        "workdir",
        None,
        "Where logs, checkpoints and the trained model go. Defaults to "
        "workdirs/<config.name>.",
    )


def workdir(config) -> str:
    """The `--workdir` flag, or `workdirs/<config.name>`.

    Args:
        config: The experiment config.
    """
    return flags.FLAGS.workdir or os.path.join("workdirs", config.name)


def check_no_arguments(argv) -> None:
    """Refuses positional arguments: everything is a flag.

    Args:
        argv: `app.run`'s arguments (the program name only).
    """
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")


def evaluate_and_report(model, config, test, workdir) -> list:
    """Evaluates on the test tasks after `config.eval_step_counts` inner
    steps, prints the table (a step count whose adaptation diverged says
    so, with the remedy) and writes it to `workdir/evaluation.txt`, and the
    figures to `workdir/evaluation.json` (`{"random": [...]}`, plus
    `"within_<eval_group_by>"` for within-group episodes: one dict per step
    count); returns the results (`StepResult`s, or `StepReturn`s for
    meta-RL).

    Args:
        model: The trained model.
        config: Its config.
        test: The test split's dataset.
        workdir: Where `evaluation.txt` goes.
    """
    if experiment.is_rl(config):
        task_batch = next(iter(test))[rl.task_families.TASKS]
        results = rl_tasks.evaluate_rl_returns(model, config, task_batch)
        table = rl.format_returns(results)
        figures = {"random": results}
    else:
        results, table = _evaluate_episodes(model, config, test)
        figures = {"random": results}
        grouped = image_tasks.grouped_test(config)
        if grouped is not None:
            stream, groups = grouped
            within, within_table = _evaluate_episodes(model, config, stream)
            figures[f"within_{config.eval_group_by}"] = within
            table = (
                f"Random {config.num_ways}-way episodes:\n{table}\n\n"
                f"Within one {config.eval_group_by} "
                f"({', '.join(groups)}):\n{within_table}"
            )
    print(table)
    with open(os.path.join(workdir, "evaluation.txt"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(workdir, "evaluation.json"), "w") as f:
        json.dump(
            {k: [r._asdict() for r in v] for k, v in figures.items()},
            f,
            indent=1,
            default=float,  # NumPy scalars.
        )
    return results


def _evaluate_episodes(model, config, test):
    """The results on `test` and their table, with the divergence advice
    when a step count diverged."""
    results = evaluation.evaluate_adaptation(
        model,
        test,
        step_counts=experiment.test_step_counts(config),
        num_tasks=config.eval_tasks,
    )
    table = evaluation.format_results(results)
    diverged = [r for r in results if r.diverged_at is not None]
    if diverged:
        table += "\n" + evaluation.divergence_advice(
            model, diverged[0].steps, diverged[0].diverged_at
        )
    return results, table
