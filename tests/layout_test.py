"""The package's modules import one way: sources -> model -> entry points,
with no cycle, counting imports inside functions; no module is too long."""

import ast
import pathlib

import tfmaml

# Each module may import only modules listed before it.
ORDER = [
    "tfmaml.console",
    "tfmaml.runtime",
    "tfmaml.checks",
    "tfmaml.bias_gradients",
    "tfmaml.labels",
    "tfmaml.batches",
    "tfmaml.data.streams",
    "tfmaml.data.sinusoid",
    "tfmaml.data.sources",
    "tfmaml.data.joined",
    "tfmaml.data.augmentation",
    "tfmaml.data.episodes",
    "tfmaml.data.labelled",
    "tfmaml.data",
    "tfmaml.inner_loop",
    "tfmaml.divergence",
    "tfmaml.adapted_variables",
    "tfmaml.batch_norm",
    "tfmaml.keras_graph",
    "tfmaml.cancelled_biases",
    "tfmaml.folded_batch_norm",
    "tfmaml.networks",
    "tfmaml.tasks",
    "tfmaml.task_metrics",
    "tfmaml.adaptation",
    "tfmaml.export",
    "tfmaml.meta_learner",
    "tfmaml.model",
    "tfmaml.views",
    "tfmaml.prototype_head",
    "tfmaml.balanced_assignment",
    "tfmaml.prototypes",
    "tfmaml.algorithms",
    "tfmaml.pretraining",
    "tfmaml.rl.task_families",
    "tfmaml.rl.policies",
    "tfmaml.rl.returns",
    "tfmaml.rl.rollouts",
    "tfmaml.rl.trpo",
    "tfmaml.rl.export",
    "tfmaml.rl.episodes",
    "tfmaml.rl.model",
    "tfmaml.rl.evaluation",
    "tfmaml.rl.env_pool",
    "tfmaml.rl.simulators",
    "tfmaml.rl.locomotion_envs",
    "tfmaml.rl.locomotion",
    "tfmaml.rl.metaworld_tasks",
    "tfmaml.rl",
    "tfmaml.training",
    "tfmaml.evaluation",
    "tfmaml.image_tasks",
    "tfmaml.rl_tasks",
    "tfmaml.config_pretraining",
    "tfmaml.configs",
    "tfmaml.experiment",
    "tfmaml.plots",
    "tfmaml.cli",
    "tfmaml.train",
    "tfmaml.evaluate",
]
PACKAGE = pathlib.Path(tfmaml.__file__).parent


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _rank(name):
    matches = [
        i for i, m in enumerate(ORDER) if name == m or name.startswith(m + ".")
    ]
    return max(matches, default=None)


def _imports(tree):
    # Every import, those inside functions too: a deferred import is still
    # a dependency, and a cycle hidden in a function is still a cycle.
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def test_every_module_is_placed_in_the_order():
    modules = [_module_name(p) for p in PACKAGE.rglob("*.py")]
    unplaced = [m for m in modules if m != "tfmaml" and _rank(m) is None]
    assert not unplaced, f"add these to ORDER: {unplaced}"


def test_modules_import_only_modules_before_them():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if name == "tfmaml":
            continue
        for imported in _imports(ast.parse(path.read_text())):
            rank = _rank(imported)
            if (
                imported.startswith("tfmaml")
                and rank is not None
                and not name.startswith(ORDER[rank])
                and rank > _rank(name)
            ):
                violations.append(f"{name} imports {imported}")
    assert not violations


def test_no_module_is_over_600_lines():
    lengths = {
        _module_name(p): len(p.read_text().splitlines())
        for p in PACKAGE.rglob("*.py")
    }
    assert not {m: n for m, n in lengths.items() if n > 600}
    assert lengths["tfmaml.model"] <= 500
