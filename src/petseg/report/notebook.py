"""``report.ipynb``: the report as a notebook that recomputes itself from the pipeline's files.

The report stage writes it with every output in place (tables, figures, discussion), so it reads
like index.html without running anything. Each output belongs to a code cell that calls what the
stage calls (:func:`petseg.report.compose_report`, then :func:`show`), so running the notebook top
to bottom reloads metrics/ and plots/ and displays the same outputs again. It runs from the project
root or from the report folder: its first code cell finds the project from either.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import nbformat
from nbformat import v4

from petseg.report.figures import Chart, Example
from petseg.report.inputs import ReportPaths
from petseg.report.render import (
    KINDS,
    METRICS_NOTE,
    NO_EXAMPLES,
    NO_REG,
    NO_SEEDS,
    REG_NOTE,
    SEEDS_NOTE,
    TRANSFER_NOTE,
    TRANSFER_TITLE,
    Report,
    grid_intro,
    html_setup,
    html_table,
    legend_text,
    markdown_setup,
    markdown_table,
)
from petseg.report.tables import Table

Bundle = dict[str, str]  # one display output: MIME type -> content
SECTIONS = ("data", "preprocess", "train", "models")  # the params.yaml sections the report reads
NAME = "report.ipynb"  # in the report folder


# ------------------------------------------------------------------------------ display
def bundles(*items: Any) -> list[Bundle]:
    """The display outputs of each item: a Table, Chart or Example, the setup rows (a list of
    pairs), the discussion (a list of sentences) or a paragraph (a str); None shows nothing."""
    return [bundle for item in items if item is not None for bundle in _bundles(item)]


def _bundles(item: Any) -> list[Bundle]:
    if isinstance(item, Table):
        return [{"text/html": html_table(item, "table"), "text/plain": markdown_table(item)}]
    if isinstance(item, Chart):
        return [_image(item.png, item.title), _markdown(f"*{item.title}.* {item.caption}")]
    if isinstance(item, Example):
        return [_image(item.png, item.caption), _markdown(item.caption)]
    if isinstance(item, str):
        return [_markdown(item)]
    if item and isinstance(item[0], tuple):
        return [{"text/html": html_setup(item), "text/plain": markdown_setup(item)}]
    return [_markdown("\n".join(f"- {sentence}" for sentence in item))]


def _image(png: bytes, text: str) -> Bundle:
    return {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": f"<{text}>"}


def _markdown(text: str) -> Bundle:
    return {"text/markdown": text, "text/plain": text}


def show(*items: Any) -> None:
    """Display ``items`` in a notebook exactly as the report stage stored them."""
    from IPython.display import display  # only inside a kernel

    for bundle in bundles(*items):
        display(bundle, raw=True)


# ------------------------------------------------------------------------------- writing
def write_notebook(report: Report, paths: ReportPaths, path: Path) -> None:
    """``path``: the notebook of ``report``, whose code cells reload ``paths``."""
    nb = v4.new_notebook(cells=_cells(report, paths))
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    for k, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{k:02d}"  # not nbformat's random ids: the same inputs, the same file
    nbformat.validate(nb)
    path.write_text(nbformat.writes(nb), encoding="utf-8")


def _code(source: str, items: Sequence[Any] = ()) -> nbformat.NotebookNode:
    outputs = [v4.new_output("display_data", data=b) for b in bundles(*items)]
    return v4.new_code_cell(source, outputs=outputs)


def _cells(report: Report, paths: ReportPaths) -> list[nbformat.NotebookNode]:
    md = v4.new_markdown_cell
    intro = INTRO.format(notebook=f"{_relative(paths)[1]['out']}/{NAME}")
    cells = [
        md(f"# {report.title}\n\n{intro}"),
        _code(_find_project(paths)),
        _code(_load(paths)),
        md("## Setup"),
        _code("show(report.setup)", [report.setup]),
        md(f"## Test metrics\n\n{METRICS_NOTE}"),
        _code("show(report.metrics)", [report.metrics]),
        md("## Discussion"),
        _code("show(report.discussion)", [report.discussion]),
        md("## Figures"),
        *(_code(f"show(report.chart({_q(c.name)}))", [c]) for c in report.charts),
        md(f"## Predictions\n\n{grid_intro(report.archs)}\n\nColours: {legend_text()}."),
    ]
    if not report.examples:
        cells.append(md(NO_EXAMPLES))
    for kind, (heading, note) in KINDS.items():
        rows = report.examples_of(kind)
        if rows:
            show_rows = _code(f"show(*report.examples_of({_q(kind)}))", rows)
            cells += [md(f"### {heading}\n\n{note}"), show_rows]
    cells.append(md(f"## Across seeds\n\n{NO_SEEDS if report.seeds is None else SEEDS_NOTE}"))
    if report.seeds is not None:
        items = [report.seeds, report.seed_findings]
        cells.append(_code("show(report.seeds, report.seed_findings)", items))
    reg = [report.regularization, report.regularization_chart]
    cells.append(md(f"## Regularization\n\n{NO_REG if reg[0] is None else REG_NOTE}"))
    if reg[0] is not None:
        cells.append(_code("show(report.regularization, report.regularization_chart)", reg))
    if report.transfer is not None:
        items = [report.transfer, report.transfer_findings]
        cells.append(md(f"## {TRANSFER_TITLE}\n\n{TRANSFER_NOTE}"))
        cells.append(_code("show(report.transfer, report.transfer_findings)", items))
    return cells


INTRO = (
    "The report stage wrote this notebook with every output below already in place. Running it "
    "top to bottom (Run All in Jupyter, or `jupyter execute --inplace {notebook}`) "
    "reloads the pipeline's files — metrics/, plots/, data/prepared/manifest.json and params.yaml "
    "— and shows the same outputs again. Run it from the project root or from the report folder, "
    "with the project's environment (`.venv`) as its kernel."
)


def _relative(paths: ReportPaths) -> tuple[str, dict[str, str | None]]:
    """The way up from the report folder to the project, and every path relative to the project:
    the stage's working directory (DVC runs it at the root), else the report folder's parent."""
    out, cwd = paths.out.resolve(), Path.cwd().resolve()
    base = cwd if out.is_relative_to(cwd) and out != cwd else out.parent

    def rel(p: Path, start: Path = base) -> str:
        return Path(os.path.relpath(Path(p).resolve(), start)).as_posix()

    values = {f.name: getattr(paths, f.name) for f in fields(paths)}
    return rel(base, out), {k: None if v is None else rel(v) for k, v in values.items()}


def _q(text: str) -> str:
    """``text`` as a Python string literal (double-quoted, as the project formats its code)."""
    return json.dumps(text)


def _find_project(paths: ReportPaths) -> str:
    up, rel = _relative(paths)
    return f"""\
# The project: the working directory, or {up} from it when Jupyter starts in the report folder.
import importlib.util
import sys
from pathlib import Path

candidates = [Path.cwd(), (Path.cwd() / {_q(up)}).resolve()]
ROOT = next((p for p in candidates if (p / {_q(rel["summary"])}).is_file()), None)
if ROOT is None:
    raise FileNotFoundError(
        "run this notebook from the project root or from its report folder, after dvc repro"
    )
if importlib.util.find_spec("petseg") is None:  # a kernel without petseg: the project's source
    sys.path.insert(0, str(ROOT / "src"))
"""


def _load(paths: ReportPaths) -> str:
    """The cell that reloads everything: the paths the report stage was given, as in dvc.yaml."""
    _, rel = _relative(paths)
    args = "\n".join(
        f"    {k}=None," if v is None else f"    {k}=ROOT / {_q(v)}," for k, v in rel.items()
    )
    return f"""\
# Read and validate the pipeline's outputs (petseg.results), as the report stage does.
from petseg import config
from petseg.report import ReportPaths, compose_report
from petseg.report.notebook import show

paths = ReportPaths(
{args}
)
sections = ({", ".join(map(_q, SECTIONS))})
params = {{s: config.load_section(paths.params, s) for s in sections}}
report = compose_report(paths, **params)
"""
