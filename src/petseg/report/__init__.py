"""The ``report`` stage: tables, figures and a discussion computed from the evaluate outputs.

Two renderings of the same content are written atomically into one folder:

``index.html``  self-contained: inline CSS, every figure a base64 ``data:`` URI, no script and no
                external reference, so it can be mailed or opened offline.
``README.md``   Markdown for a repository browser, figures as PNG files under ``figures/``.

Every number comes from the metrics JSON and plot CSVs of the evaluate stage, read through
:mod:`petseg.results`; the discussion is a pure function of ``metrics/summary.json``
(:func:`discussion`) that states what the numbers show and nothing more.

``inputs``      what is read, validated   ``discussion``  the sentences
``figures``     charts and grid captions  ``tables``      metrics, regularization, setup
``render``      HTML and Markdown
"""

from __future__ import annotations

from pathlib import Path

from petseg.config import DataParams, ModelsParams, PreprocessParams, TrainParams
from petseg.fileio import atomic_dir
from petseg.report.discussion import discussion
from petseg.report.figures import charts, examples, regularization_chart
from petseg.report.inputs import ReportPaths, load_inputs
from petseg.report.render import LEGEND, Report, render_html, render_markdown, title
from petseg.report.tables import metrics_table, regularization_table, setup_rows

__all__ = [
    "LEGEND",
    "ReportPaths",
    "build_report",
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
    inputs = load_inputs(paths)
    exps = inputs.experiments
    report = Report(
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
    )
    write_report(report, paths.out)
    return paths.out / "index.html"


def write_report(report: Report, out: Path) -> None:
    """``out``: index.html, README.md and the PNG files the Markdown links to."""
    with atomic_dir(out) as tmp:
        figures = tmp / "figures"
        (figures / "predictions").mkdir(parents=True)
        for chart in [*report.charts, report.regularization_chart]:
            if chart is not None:
                (figures / f"{chart.name}.png").write_bytes(chart.png)
        for ex in report.examples:
            (figures / "predictions" / ex.filename).write_bytes(ex.png)
        (tmp / "index.html").write_text(render_html(report), encoding="utf-8")
        (tmp / "README.md").write_text(render_markdown(report), encoding="utf-8")
