"""The ``report`` stage: tables, figures and a discussion computed from the evaluate outputs.

Three renderings of the same content are written atomically into one folder:

``index.html``    self-contained: inline CSS (with a print stylesheet for A4), every figure a base64
                  ``data:`` URI, no script and no external reference, so it can be mailed or opened
                  offline.
``README.md``     Markdown for a repository browser, figures as PNG files under ``figures/``.
``report.ipynb``  a notebook with the same sections and outputs, whose code cells recompute them
                  from the pipeline's files (:mod:`petseg.report.notebook`).

Every number comes from the metrics JSON and plot CSVs of the evaluate stage, read through
:mod:`petseg.results`; the discussion is a pure function of ``metrics/summary.json``
(:func:`discussion`) that states what the numbers show and nothing more.

``inputs``      what is read, validated   ``discussion``  the sentences
``figures``     charts and grid captions  ``tables``      metrics, regularization, setup
``render``      HTML and Markdown         ``notebook``    the notebook
``seeds``       make compare: across seeds
``transfer``    from scratch vs pretrained
"""

from __future__ import annotations

from pathlib import Path

from petseg.config import DataParams, ModelsParams, PreprocessParams, TrainParams
from petseg.fileio import atomic_dir
from petseg.report.discussion import discussion
from petseg.report.figures import charts, examples, regularization_chart
from petseg.report.inputs import ReportPaths, load_inputs
from petseg.report.notebook import NAME as NOTEBOOK
from petseg.report.notebook import write_notebook
from petseg.report.render import LEGEND, Report, render_html, render_markdown, title
from petseg.report.seeds import seed_sentences, seeds_table
from petseg.report.tables import metrics_table, regularization_table, setup_rows
from petseg.report.transfer import own_rows, transfer_runs, transfer_sentences, transfer_table

__all__ = [
    "LEGEND",
    "ReportPaths",
    "build_report",
    "compose_report",
    "discussion",
    "load_inputs",
    "setup_rows",
    "title",
]


def build_report(
    paths: ReportPaths,
    data: DataParams,
    preprocess: PreprocessParams,
    train: TrainParams,
    models: ModelsParams,
) -> Path:
    """Read the evaluate outputs, write ``paths.out`` atomically; returns the index.html path."""
    write_report(compose_report(paths, data, preprocess, train, models), paths)
    return paths.out / "index.html"


def compose_report(
    paths: ReportPaths,
    data: DataParams,
    preprocess: PreprocessParams,
    train: TrainParams,
    models: ModelsParams,
) -> Report:
    """Everything the report shows, computed from the files ``paths`` names (the notebook's code
    cells call this too)."""
    inputs = load_inputs(paths)
    exps = inputs.experiments
    return Report(
        title=title(inputs.archs, data.source),
        setup=setup_rows(inputs, data, preprocess, train, models),
        metrics=metrics_table(inputs.test),
        discussion=discussion(
            inputs.summary,
            counts=inputs.manifest["counts"],
            data_source=data.source,
            seed=train.seed,
            unpool_upsample=models.unpool.upsample,
        ),
        charts=charts(inputs),
        archs=inputs.archs,
        examples=examples(inputs.predictions, inputs.examples, inputs.per_image, inputs.archs),
        regularization=None if exps is None else regularization_table(exps),
        regularization_chart=None if exps is None else regularization_chart(exps),
        **_across_seeds(inputs),
        **_transfer(inputs, models, train.seed),
    )


def _transfer(inputs, models: ModelsParams, seed: int) -> dict:
    runs = transfer_runs(own_rows(inputs.test, models, seed), inputs.transfer)
    if runs is None:
        return {}
    return {"transfer": transfer_table(runs), "transfer_findings": transfer_sentences(runs)}


def _across_seeds(inputs) -> dict:
    if inputs.seeds is None:
        return {}
    return {
        "seeds": seeds_table(inputs.seeds),
        "seed_findings": seed_sentences(inputs.seeds, inputs.seed_diffs),
    }


def write_report(report: Report, paths: ReportPaths) -> None:
    """``paths.out``: index.html, README.md with the PNG files it links to, and report.ipynb."""
    with atomic_dir(paths.out) as tmp:
        figures = tmp / "figures"
        (figures / "predictions").mkdir(parents=True)
        for chart in [*report.charts, report.regularization_chart]:
            if chart is not None:
                (figures / f"{chart.name}.png").write_bytes(chart.png)
        for ex in report.examples:
            (figures / "predictions" / ex.filename).write_bytes(ex.png)
        (tmp / "index.html").write_text(render_html(report), encoding="utf-8")
        (tmp / "README.md").write_text(render_markdown(report), encoding="utf-8")
        write_notebook(report, paths, tmp / NOTEBOOK)
