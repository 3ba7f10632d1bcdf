"""The package has no import cycles, and computing never imports drawing.

The import graph is built statically with :mod:`ast` over every module of
``pyrocollapse`` (including ``pyrocollapse.models``, which lives in ``models/``):
every ``import`` and ``from ... import`` at any depth counts (module level and
inside functions alike), except those under ``if TYPE_CHECKING:``. Importing
``a.b.c`` also runs the ``__init__`` of ``a.b``, so that edge is added too;
a module's own parent packages are not (they are already being imported when it
runs). Relative imports are resolved against the importing module.
"""

from __future__ import annotations

import ast
import configparser
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pyrocollapse"
# Package name -> source folder (``pyrocollapse.models`` is installed from ``models/``).
SOURCES = {PACKAGE: ROOT / "pyrocollapse", f"{PACKAGE}.models": ROOT / "models"}


# Modules that compute (reports, schedules, training, objectives, diagnostics, priors):
# importing one must not load the drawing code.
COMPUTING = (
    "pyrocollapse.report",
    "pyrocollapse.schedules",
    "pyrocollapse.diagnostics",
    "pyrocollapse.train",
    "pyrocollapse.elbo",
    "pyrocollapse.priors",
)
DRAWING = ("pyrocollapse.plots", "matplotlib")


def _module_files() -> dict[str, Path]:
    """Every module of the package, by dotted name (packages by their ``__init__``)."""
    files: dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if name.startswith(f"{PACKAGE}.models") and package == PACKAGE:
                continue  # a stray ``pyrocollapse/models`` would shadow nothing; skip it
            files[name] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    """Whether an ``if`` test is ``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imported_names(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """The dotted names a module imports at run time (absolute, unfiltered)."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # the ``else:`` branch runs at run time
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            # ``from a import b`` imports the submodule ``a.b`` when there is one.
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph() -> dict[str, set[str]]:
    """The package's run-time import graph: module -> modules of the package it imports."""
    files = _module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        own_ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        for name in _imported_names(tree, module, path.name == "__init__.py"):
            parts = name.split(".")
            # The module itself and every parent package whose __init__ runs first.
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in files and target != module and target not in own_ancestors:
                    edges.add(target)
        graph[module] = edges
    return graph


def strongly_connected_components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively: the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    components.append(component)
    return components


def shortest_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One shortest cycle through the component's first module, as ``[a, b, ..., a]``."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in seen:
                    seen.add(child)
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")  # pragma: no cover


def test_graph_sees_the_package() -> None:
    """The static graph covers the modules and edges it should (guards against a blind test)."""
    graph = import_graph()
    assert "pyrocollapse.train" in graph
    assert "pyrocollapse.models.base" in graph
    assert "pyrocollapse.priors" in graph
    # models.base imports priors, so that edge must be seen.
    assert "pyrocollapse.priors" in graph["pyrocollapse.models.base"]


def test_imports_inside_functions_and_type_checking() -> None:
    """Function-level imports count; ``if TYPE_CHECKING:`` imports do not; parents count."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from pyrocollapse.report import CollapseReport\n"
        "def f():\n"
        "    from .diagnostics import kl\n"
        "    import pyrocollapse.models.base\n"
    )
    names = _imported_names(ast.parse(source), "pyrocollapse.plots", is_package=False)
    assert "pyrocollapse.report" not in names
    assert "pyrocollapse.diagnostics" in names and "pyrocollapse.diagnostics.kl" in names
    assert "pyrocollapse.models.base" in names


def test_cycle_finder_finds_a_cycle() -> None:
    """The cycle search reports a planted cycle, path closed on its first module."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    (component,) = strongly_connected_components(graph)
    assert component == {"a", "b", "c"}
    assert shortest_cycle(graph, component) == ["a", "b", "c", "a"]


def test_no_import_cycles() -> None:
    """No run-time import cycle inside the package."""
    graph = import_graph()
    problems = []
    for component in strongly_connected_components(graph):
        cycle = " -> ".join(shortest_cycle(graph, component))
        problems.append(f"{cycle}   (all modules in the loop: {', '.join(sorted(component))})")
    assert not problems, "import cycles:\n" + "\n".join(problems)


@pytest.mark.parametrize("module", COMPUTING)
def test_computing_never_imports_drawing(module: str) -> None:
    """Importing a computing module loads neither ``pyrocollapse.plots`` nor matplotlib."""
    code = (
        "import sys\n"
        f"import {module}\n"
        f"loaded = [name for name in {DRAWING!r} if name in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.strip()
    assert not loaded, f"importing {module} loaded drawing modules: {loaded}"


def test_every_package_is_shipped():
    """Every package folder (one with an ``__init__.py``) is listed in setup.cfg, so a wheel
    holds it (a split module such as ``pyrocollapse/priors/`` is otherwise left out)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    listed = set(cfg["options"]["packages"].split())
    packages = {name for name, path in _module_files().items() if path.name == "__init__.py"}
    missing = sorted(packages - listed)
    assert missing == [], f"packages missing from setup.cfg [options] packages: {missing}"


def test_plots_draw_data_without_importing_the_computing_modules():
    """plots reads schedules and traversals by their attributes: drawing them loads none of
    the modules that compute them, and an object without those attributes is refused."""
    code = """
import sys
import types

import numpy as np

from pyrocollapse import plots

class Ramp:  # a schedule by duck typing: values(steps)
    def values(self, steps):
        return np.minimum(np.arange(steps) / 4.0, 1.0)

fig = plots.plot_schedule(Ramp(), 8)
assert list(fig.axes[0].lines[0].get_ydata()) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
traversal = types.SimpleNamespace(
    site="z", dims=np.array([0]), values=np.array([-1.0, 1.0]), means=np.zeros((1, 2, 4))
)
fig = plots.plot_traversals(traversal, (2, 2))
assert len(fig.axes) == 2
try:
    plots.plot_schedule(object(), 8)
except TypeError as e:
    assert str(e).startswith("schedule must be a Schedule"), e
else:
    raise AssertionError("an object without values() was drawn")
computing = ("report", "train", "schedules", "diagnostics", "elbo", "priors")
print(",".join(m for m in computing if f"pyrocollapse.{m}" in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"drawing loaded: {result.stdout.strip()}"
