"""The project's shape, read from the source with ``ast`` (nothing is imported).

- no import cycles among the modules of src/petseg;
- nothing that only predicts or reports reaches the training module or MLflow, and only
  petseg.tracking imports mlflow;
- each DVC stage's ``.py`` deps are exactly the project files its script runs.

Imports inside functions count (a lazy import still runs when its function does); the body of
``if TYPE_CHECKING:`` does not (it never runs).
"""

from __future__ import annotations

import ast
import re
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

from petseg.config import ARCH_SECTIONS as ARCHITECTURES

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "petseg"
# Modules (or packages, with all their submodules) that only predict or report.
PREDICT_ONLY = ("petseg.evaluate", "petseg.report", "petseg.predict", "petseg.export")
TRAINING = ("petseg.train", "petseg.tracking", "mlflow")
TRACKING = "petseg.tracking"  # the only module that may import mlflow

Graph = dict[str, dict[str, int]]  # module -> {imported module or external name: line}


# -------------------------------------------------------------------------- the import walker
def module_index(src: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file for every module of ``package`` under ``src``; a package's
    ``__init__.py`` stands for the package itself."""
    index = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        index[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return index


class _ImportStatements(ast.NodeVisitor):
    """Every ``import`` and ``from ... import`` as (module, level, names, line)."""

    def __init__(self) -> None:
        self.found: list[tuple[str, int, tuple[str, ...], int]] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, 0, (), node.lineno) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        names = tuple(alias.name for alias in node.names)
        self.found.append((node.module or "", node.level, names, node.lineno))


def imports(path: Path, name: str, index: dict[str, Path]) -> dict[str, int]:
    """What the module ``name`` (file ``path``) imports -> the line of its first import.

    ``from a.b import c`` is ``a.b.c`` when that is a module of ``index``, else ``a.b``; relative
    imports are resolved against ``name``. Names outside ``index`` (third-party, stdlib) are kept
    as written, e.g. ``mlflow.exceptions``.
    """
    visitor = _ImportStatements()
    visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: dict[str, int] = {}
    for module, level, names, line in visitor.found:
        if level:
            if level - 1 >= len(package):
                raise ValueError(f"{path}:{line}: relative import beyond the top-level package")
            base = package[: len(package) - (level - 1)]
            module = ".".join([*base, module] if module else base)
        targets = [f"{module}.{n}" if f"{module}.{n}" in index else module for n in names]
        for target in targets or [module]:
            found.setdefault(target, line)
    return found


def import_graph(index: dict[str, Path]) -> Graph:
    return {name: imports(path, name, index) for name, path in index.items()}


def cycles(graph: Graph) -> list[list[str]]:
    """Every import cycle: the strongly connected components (Tarjan) of more than one module, or
    of one module that imports itself; each sorted, the list sorted."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        for nxt in graph.get(node, {}):
            if nxt not in graph:
                continue  # not a module of the package
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return sorted(found)


def shortest_chains(graph: Graph, start: str) -> dict[str, list[str]]:
    """Every name reachable from ``start`` -> the shortest import chain to it (breadth-first)."""
    chains = {start: [start]}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, {})):
            if nxt not in chains:
                chains[nxt] = [*chains[node], nxt]
                queue.append(nxt)
    return chains


def run_graph(graph: Graph) -> Graph:
    """``graph`` plus what Python runs besides: importing ``a.b.c`` first runs the packages ``a``
    and ``a.b`` (their ``__init__.py``)."""
    runs: Graph = {}
    for node, targets in graph.items():
        runs[node] = dict(targets)
        for target, line in targets.items():
            parts = target.split(".")
            for k in range(1, len(parts)):
                parent = ".".join(parts[:k])
                if parent in graph:
                    runs[node].setdefault(parent, line)
    return runs


def within(names: Iterable[str], prefix: str) -> bool:
    """Whether ``names`` holds ``prefix`` itself or a submodule of it."""
    return any(n == prefix or n.startswith(prefix + ".") for n in names)


def _where(index: dict[str, Path], module: str, target: str, graph: Graph) -> str:
    """``file:line`` of the import of ``target`` in ``module``."""
    path = index[module]
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return f"{shown}:{graph[module][target]}"


# ------------------------------------------------------------------- the walker on a fake package
def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_walker_resolves_relative_and_from_imports(tmp_path):
    src = _write(
        tmp_path,
        {
            "pkg/__init__.py": "from .sub import c\n",
            "pkg/a.py": "import os\nfrom pkg import VERSION, b\n",
            "pkg/b.py": "def later():\n    from .sub.c import helper\n",
            "pkg/sub/__init__.py": "from . import c\nfrom .. import a\n",
            "pkg/sub/c.py": (
                "from typing import TYPE_CHECKING\nfrom ..a import thing\nimport pkg.sub\n"
                "if TYPE_CHECKING:\n    import pkg.b\nelse:\n    import json\n"
            ),
        },
    )
    index = module_index(src, "pkg")
    assert sorted(index) == ["pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"]
    graph = import_graph(index)
    assert graph["pkg"] == {"pkg.sub.c": 1}
    assert graph["pkg.a"] == {"os": 1, "pkg": 2, "pkg.b": 2}
    assert graph["pkg.b"] == {"pkg.sub.c": 2}  # inside a function, relative to pkg
    assert graph["pkg.sub"] == {"pkg.sub.c": 1, "pkg.a": 2}  # a package's own dot is itself
    assert graph["pkg.sub.c"] == {"typing": 1, "pkg.a": 2, "pkg.sub": 3, "json": 7}
    assert run_graph(graph)["pkg.b"] == {"pkg.sub.c": 2, "pkg": 2, "pkg.sub": 2}


def test_walker_finds_every_cycle_and_the_shortest_chain(tmp_path):
    src = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "def f():\n    import pkg.c\n",
            "pkg/c.py": "from .a import x\nimport pkg.d\n",
            "pkg/d.py": "import pkg.e\n",
            "pkg/e.py": "import pkg.d\nimport mlflow\n",
            "pkg/f.py": "from . import f\n",
            "pkg/g.py": "from pkg.a import y\n",
        },
    )
    graph = import_graph(module_index(src, "pkg"))
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.d", "pkg.e"], ["pkg.f"]]
    chains = shortest_chains(graph, "pkg.g")
    assert chains["mlflow"] == ["pkg.g", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.e", "mlflow"]
    assert "pkg.f" not in chains


# ------------------------------------------------------------------------------- the project
INDEX = module_index(SRC)
GRAPH = import_graph(INDEX)


def test_no_import_cycles_in_src():
    problems = []
    for component in cycles(GRAPH):
        edges = [
            f"  {a} -> {b} ({_where(INDEX, a, b, GRAPH)})"
            for a in component
            for b in sorted(GRAPH[a])
            if b in component
        ]
        problems.append(f"import cycle among {', '.join(component)}:\n" + "\n".join(edges))
    if problems:
        pytest.fail(
            "\n".join(problems) + "\nbreak each cycle: move what both sides need into a module "
            "that imports neither, or move the import that closes the loop",
            pytrace=False,
        )


def test_predicting_and_reporting_never_reach_training_or_mlflow():
    starts = [m for m in INDEX if any(within([m], p) for p in PREDICT_ONLY)]
    for required in ("petseg.evaluate", "petseg.report"):
        assert within(starts, required), f"{required} (module or package) not found in {SRC}"
    problems = []
    for start in starts:
        chains = shortest_chains(GRAPH, start).values()
        # Third-party names by their distribution: mlflow.exceptions is mlflow.
        bad = {(*c[:-1], c[-1] if c[-1] in INDEX else c[-1].split(".")[0]) for c in chains}
        bad = [list(c) for c in bad if any(within([c[-1]], t) for t in TRAINING)]
        # A chain that another extends says nothing more: report the longest ones only.
        for chain in sorted(bad, key=lambda c: (-len(c), c)):
            if not any(other[: len(chain)] == chain for other in bad if other is not chain):
                first = _where(INDEX, chain[0], chain[1], GRAPH)
                problems.append(f"{' -> '.join(chain)} (first import at {first})")
    for module, targets in GRAPH.items():
        for target in targets:
            if within([target], "mlflow") and not within([module], TRACKING):
                where = _where(INDEX, module, target, GRAPH)
                problems.append(f"{module} imports {target} at {where}: only {TRACKING} may")
    if problems:
        pytest.fail(
            f"modules that only predict or report ({', '.join(PREDICT_ONLY)}) must not import "
            f"{', '.join(TRAINING)}, even through other modules:\n  " + "\n  ".join(problems),
            pytrace=False,
        )


# The model registry imports an architecture's module when it builds one (petseg.models.registry):
# a stage runs petseg.models.<arch> when its cmd passes --arch <arch> or it loads models/<arch>.pt;
# one that is handed the whole folder (--models models) loads every architecture's file.
DYNAMIC = re.compile(r"--arch\s+(\w+)|\bmodels/(\w+)\.pt\b")
EVERY = re.compile(r"--models\s")


def _script_stages() -> dict[str, tuple[Path, list[str], list[str]]]:
    """Stage name -> (the ``stages/*.py`` its cmd runs, its deps, the architecture modules the
    registry imports for it) for every such stage."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    found = {}
    for name, stage in stages.items():
        cmd, deps = str(stage.get("cmd", "")), [str(d) for d in stage.get("deps", [])]
        match = re.search(r"(?:^|\s)python3?\s+(stages/[\w/]+\.py)\b", cmd)
        if match:
            archs = {a or b for a, b in DYNAMIC.findall(" ".join([cmd, *deps]))}
            if EVERY.search(cmd):
                archs |= set(ARCHITECTURES)
            built = sorted(
                f"{PACKAGE}.models.{a}" for a in archs if f"{PACKAGE}.models.{a}" in INDEX
            )
            found[name] = (ROOT / match.group(1), deps, built)
    return found


def project_files_run(
    script: Path, index: dict[str, Path] = INDEX, built: Iterable[str] = ()
) -> dict[str, str]:
    """Project files (relative to ROOT) that ``python <script>`` runs -> the import chain that
    runs each; ``built`` are modules imported at run time by name (the registry's architectures).
    Siblings of the script are importable by their bare name, as Python allows."""
    index = index | {p.stem: p for p in script.parent.glob("*.py") if p != script}
    graph = import_graph(index)
    main = str(script.relative_to(ROOT))
    graph[main] = imports(script, "__main__", index) | {m: 0 for m in built}
    chains = shortest_chains(run_graph(graph), main)
    return {
        str(index[name].relative_to(ROOT)) if name in index else main: " -> ".join(chain)
        for name, chain in chains.items()
        if name in index or name == main
    }


STAGES = _script_stages()


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_dvc_stage_deps_are_the_files_its_script_runs(stage):
    script, deps, built = STAGES[stage]
    listed = {str(Path(d)) for d in deps if d.endswith(".py")}
    run = project_files_run(script, built=built)
    missing = [f"  missing from deps: {f}  ({run[f]})" for f in sorted(set(run) - listed)]
    extra = [f"  listed in deps but never run: {f}" for f in sorted(listed - set(run))]
    if missing or extra:
        pytest.fail(
            f"dvc.yaml stage {stage!r}: its .py deps differ from the project files that "
            f"`python {script.relative_to(ROOT)}` runs (every file under stages/ and src/petseg/ "
            "whose code runs, package __init__.py files included):\n" + "\n".join(missing + extra),
            pytrace=False,
        )


def test_every_script_stage_is_checked():
    # Guards the regex above: a stage whose cmd it misread would escape the deps check.
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    scripted = {n for n, s in stages.items() if "stages/" in str(s.get("cmd", ""))}
    assert scripted == set(STAGES) and STAGES


def test_each_stage_runs_the_architectures_it_builds():
    # Guards DYNAMIC: a train stage builds its own architecture only; evaluate loads all of them.
    archs = sorted(f"{PACKAGE}.models.{a}" for a in ARCHITECTURES)
    assert {n: STAGES[n][2] for n in STAGES if n.startswith("train_")} == {
        f"train_{a}": [f"{PACKAGE}.models.{a}"] for a in ARCHITECTURES
    }
    assert STAGES["evaluate"][2] == archs
    assert STAGES["preprocess"][2] == []
