"""The package's modules import one way: sources -> model -> entry points."""

import ast
import pathlib

import tfmaml

# Each module may import only modules listed before it.
ORDER = [
    "tfmaml.checks",
    "tfmaml.data.streams",
    "tfmaml.data.sinusoid",
    "tfmaml.data.sources",
    "tfmaml.data.episodes",
    "tfmaml.data",
    "tfmaml.inner_loop",
    "tfmaml.networks",
    "tfmaml.batches",
    "tfmaml.task_metrics",
    "tfmaml.model",
    "tfmaml.algorithms",
    "tfmaml.training",
    "tfmaml.export",
    "tfmaml.evaluation",
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
    matches = [i for i, m in enumerate(ORDER) if name.startswith(m)]
    return max(matches, default=None)


def _imports(tree):
    # Module-level imports only: a method may hand off to a later module
    # (`MAML.export` -> `tfmaml.export`), as `keras.Model.export` does.
    for node in tree.body:
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
