"""The two renderings of one :class:`Report`: self-contained HTML and Markdown with PNG files."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field

from petseg import CLASSES, ERROR_COLOUR, PALETTE
from petseg.report.figures import Chart, Example
from petseg.report.tables import Table, transposed

# Colours of the prediction grids, as hex for the legend.
LEGEND = {c: "#{:02x}{:02x}{:02x}".format(*rgb) for c, rgb in zip(CLASSES, PALETTE, strict=True)}
ERROR_HEX = "#{:02x}{:02x}{:02x}".format(*ERROR_COLOUR)
LEGEND_WORDS = {"pet": "orange", "background": "dark grey", "border": "pale yellow"}


@dataclass(frozen=True)
class Report:
    title: str
    setup: list[tuple[str, str]]
    metrics: Table
    discussion: list[str]
    charts: list[Chart]
    archs: list[str]
    examples: list[Example]
    regularization: Table | None
    regularization_chart: Chart | None = None
    seeds: Table | None = None  # make compare: mean ± std over training seeds
    seed_findings: list[str] = field(default_factory=list)
    transfer: Table | None = None  # from scratch vs pretrained; None: no backbone anywhere
    transfer_findings: list[str] = field(default_factory=list)

    def chart(self, name: str) -> Chart:
        return next(c for c in self.charts if c.name == name)

    def examples_of(self, kind: str) -> list[Example]:
        return [ex for ex in self.examples if ex.kind == kind]


# What the title says the networks were trained on, per data.source.
TITLE_DATA = {
    "oxford-iiit-pet": "Oxford-IIIT Pet trimaps",
    "folder": "trimaps in the Oxford-IIIT Pet layout, read from a folder",
    "coco": "COCO-annotated images",
    "synthetic": "synthetic pets-like scenes (offline demo data)",
}
METRICS_NOTE = (
    "Test split at the training resolution unless noted. ↑ higher is better, ↓ lower is better; "
    "the best value of each column is in bold with ★. Train step × and Inference × are each "
    "network's time relative to the fastest, timed in turn in one process (the ranking to trust); "
    "(wall) columns are single wall-clock measurements, which other jobs on the machine move."
)
PRINT_NOTE = (
    "Printed, the table is turned to fit the page: one row per metric, one column per "
    "architecture, the best value of each row in bold with ★."
)
REG_NOTE = (
    "Test mIoU per regularization variant and architecture: mean ± sample standard deviation over "
    "runs (seeds). baseline trains without augmentation, dropout, weight decay or label smoothing; "
    "each variant turns one of them on, all turns on all four (DVC experiments of make sweep, "
    "collected from dvc exp show into plots/experiments.csv)."
)
SEEDS_NOTE = (
    "Test scores over the training seeds of make compare (DVC experiments cmp-s<seed>): mean ± "
    "sample standard deviation per network."
)
NO_SEEDS = (
    'This report rests on one training seed. make compare SEEDS="0 1 2" trains the comparison '
    "with more seeds (queued DVC experiments) and fills this section."
)
NO_REG = (
    "No regularization experiments were run (plots/experiments.csv is absent or empty): "
    "make sweep runs them."
)
NO_EXAMPLES = "The evaluate stage wrote no prediction images."
TRANSFER_TITLE = "From scratch vs pretrained"
TRANSFER_NOTE = (
    "Encoders side by side: each network's own (scratch) and torchvision backbones "
    "(models.<arch>.encoder), starting from ImageNet weights or from random ones. From: dvc repro "
    "is this report's own networks, make transfer the DVC experiments of plots/transfer.csv; "
    "runs of one setting (seeds) are averaged. Test split at the training resolution; s/epoch is "
    "the wall-clock training seconds over the epochs, which other jobs on the machine move."
)


def title(archs: Sequence[str], source: str) -> str:
    """The page title: the networks compared (from the results) and the data they saw."""
    return f"petseg: {' vs '.join(archs)} on {TITLE_DATA.get(source, source)}"


def grid_intro(archs: Sequence[str]) -> str:
    order = " | ".join(["input", "ground truth", *archs])
    return (
        f"Columns, labelled in each image: {order}, each prediction with the image's mIoU. Under "
        f"each prediction, its error map: the input dimmed to grey, every wrongly labelled pixel "
        f"in red ({ERROR_HEX}). The caption repeats the image name and the scores "
        "(plots/eval/per_image.csv)."
    )


# The two kinds of grid rows (plots/eval/examples.csv), each under its own heading.
KINDS = {
    "fixed": (
        "Fixed test images",
        "Evenly spaced over the test split and chosen without looking at any score, so every run "
        "shows the same images (plots/predictions/fixed_*.png).",
    ),
    "hardest": (
        "Hardest test images",
        "The test images with the lowest per-image mIoU averaged over the networks, in this run "
        "(plots/predictions/hardest_*.png, hardest first).",
    ),
}


def legend_text() -> str:
    return ", ".join(f"{c} {LEGEND_WORDS[c]} ({LEGEND[c]})" for c in CLASSES)


# ------------------------------------------------------------------------------------- HTML
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { background: #fff4d6; }
table.setup th { text-align: left; vertical-align: top; white-space: nowrap; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: .9em; }
img.grid { image-rendering: pixelated; }
.swatch { display: inline-block; width: 1em; height: 1em; border: 1px solid #888;
          vertical-align: middle; margin: 0 .3em 0 .8em; }
.note { color: #555; font-size: .9em; }
div.wide { overflow-x: auto; } .print-only { display: none; }
@page { size: A4; margin: 12mm; }
@media print {
  /* A4 portrait: every table fits the printable width at full scale, so nothing is cut off or
     shrunk: the metrics table turned (as wide as there are architectures, whatever the number of
     metrics), small type, tight cells, headers wrapped between words, numbers never broken. */
  .print-only { display: block; } table.print-only { display: table; }
  table.metrics { display: none; }
  body { max-width: none; margin: 0; padding: 0; font-size: 9.5pt; line-height: 1.3; }
  h1 { font-size: 1.4em; } h2 { margin-top: 1.2em; break-after: avoid; }
  h3, p.note { break-after: avoid; }
  /* Prints leave out backgrounds: the legend swatches and the best cells need theirs. */
  .swatch, td.best, th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  table { width: 100%; font-size: 7.5pt; }
  th, td { padding: .15em .3em; } th { overflow-wrap: break-word; }
  tr, li, figure { break-inside: avoid; }
  figure { margin: .8em 0; } figure img { max-height: 200mm; }
  img.grid { image-rendering: auto; }
}
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def html_table(table: Table, cls: str) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in table.header)
    body = []
    for i, row in enumerate(table.rows):
        cells = []
        for j, cell in enumerate(row):
            classes = (["num"] if j >= table.numeric_from else []) + (
                ["best"] if (i, j) in table.best else []
            )
            attr = f' class="{" ".join(classes)}"' if classes else ""
            text = f"<strong>{e(cell)} ★</strong>" if (i, j) in table.best else e(cell)
            cells.append(f"<td{attr}>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="{cls}">\n<tr>{head}</tr>\n' + "\n".join(body) + "\n</table>"


def _html_figure(chart: Chart) -> str:
    e = html.escape
    return (
        f'<figure id="{chart.name}"><img src="{_data_uri(chart.png)}" alt="{e(chart.title)}">'
        f"<figcaption><b>{e(chart.title)}.</b> {e(chart.caption)}</figcaption></figure>"
    )


def html_setup(rows: Sequence[tuple[str, str]]) -> str:
    e = html.escape
    body = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    return f'<table class="setup">\n{body}\n</table>'


def render_html(report: Report) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        f'<head><meta charset="utf-8"><title>{e(report.title)}</title><style>{CSS}</style></head>',
        "<body>",
        f"<h1>{e(report.title)}</h1>",
        '<p class="note">Generated by the report stage from metrics/, plots/ and '
        "data/prepared/manifest.json. Self-contained: every figure is embedded. The same report "
        "as a notebook: report.ipynb.</p>",
        "<h2>Setup</h2>",
        html_setup(report.setup),
        "<h2>Test metrics</h2>",
        f'<p class="note">{e(METRICS_NOTE)}</p>',
        f'<div class="wide">{html_table(report.metrics, "metrics")}</div>',
        f'<p class="note print-only">{e(PRINT_NOTE)}</p>',
        html_table(transposed(report.metrics), "metrics-print print-only"),
        "<h2>Discussion</h2>",
        '<ul class="discussion">',
        *(f"<li>{e(s)}</li>" for s in report.discussion),
        "</ul>",
        "<h2>Figures</h2>",
        *(_html_figure(chart) for chart in report.charts),
    ]
    parts += _html_predictions(report) + _html_seeds(report) + _html_regularization(report)
    parts += _html_transfer(report)
    return "\n".join([*parts, "</body>", "</html>", ""])


def _html_predictions(report: Report) -> list[str]:
    e = html.escape
    legend = "".join(
        f'<span class="swatch" style="background:{LEGEND[c]}"></span>{e(c)} ({LEGEND_WORDS[c]})'
        for c in CLASSES
    )
    parts = [
        "<h2>Predictions</h2>",
        f"<p>{e(grid_intro(report.archs))}</p>",
        f"<p>Colours:{legend}</p>",
    ]
    if not report.examples:
        parts.append(f"<p>{e(NO_EXAMPLES)}</p>")
    for kind, (heading, note) in KINDS.items():
        rows = report.examples_of(kind)
        if rows:
            parts += [f"<h3>{e(heading)}</h3>", f'<p class="note">{e(note)}</p>']
        parts += [
            f'<figure class="grid"><img class="grid" src="{_data_uri(ex.png)}" '
            f'alt="{e(ex.caption)}"><figcaption>{e(ex.caption)}</figcaption></figure>'
            for ex in rows
        ]
    return parts


def _html_seeds(report: Report) -> list[str]:
    if report.seeds is None:
        return ["<h2>Across seeds</h2>", f"<p>{html.escape(NO_SEEDS)}</p>"]
    items = "".join(f"<li>{html.escape(s)}</li>" for s in report.seed_findings)
    return [
        "<h2>Across seeds</h2>",
        f'<p class="note">{html.escape(SEEDS_NOTE)}</p>',
        html_table(report.seeds, "seeds"),
        f"<ul>{items}</ul>",
    ]


def _html_regularization(report: Report) -> list[str]:
    e = html.escape
    if report.regularization is None:
        return ["<h2>Regularization</h2>", f"<p>{e(NO_REG)}</p>"]
    parts = [
        "<h2>Regularization</h2>",
        f'<p class="note">{e(REG_NOTE)}</p>',
        html_table(report.regularization, "regularization"),
    ]
    if report.regularization_chart is not None:
        parts.append(_html_figure(report.regularization_chart))
    return parts


def _html_transfer(report: Report) -> list[str]:
    if report.transfer is None:
        return []
    items = "".join(f"<li>{html.escape(s)}</li>" for s in report.transfer_findings)
    return [
        f"<h2>{TRANSFER_TITLE}</h2>",
        f'<p class="note">{html.escape(TRANSFER_NOTE)}</p>',
        f'<div class="wide">{html_table(report.transfer, "transfer")}</div>',
        f"<ul>{items}</ul>",
    ]


# --------------------------------------------------------------------------------- Markdown
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(table: Table) -> str:
    align = ["---" if j < table.numeric_from else "--:" for j in range(len(table.header))]
    lines = ["| " + " | ".join(map(_md_cell, table.header)) + " |", "|" + "|".join(align) + "|"]
    for i, row in enumerate(table.rows):
        cells = [
            f"**{_md_cell(c)} ★**" if (i, j) in table.best else _md_cell(c)
            for j, c in enumerate(row)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_setup(rows: Sequence[tuple[str, str]]) -> str:
    lines = ["| | |", "|---|---|"]
    return "\n".join(lines + [f"| **{_md_cell(k)}** | {_md_cell(v)} |" for k, v in rows])


def _md_figure(chart: Chart) -> list[str]:
    image = f"![{chart.title}](figures/{chart.name}.png)"
    return [image, "", f"*{chart.title}.* {chart.caption}", ""]


def render_markdown(report: Report) -> str:
    lines = [
        f"# {report.title}",
        "",
        "Generated by the report stage; a self-contained version with the "
        "same content is `index.html`, and a notebook that recomputes it is `report.ipynb`.",
        "",
        "## Setup",
        "",
        markdown_setup(report.setup),
    ]
    lines += ["", "## Test metrics", "", METRICS_NOTE, "", markdown_table(report.metrics), ""]
    lines += ["## Discussion", "", *(f"- {s}" for s in report.discussion), "", "## Figures", ""]
    for chart in report.charts:
        lines += _md_figure(chart)
    lines += [
        "## Predictions",
        "",
        grid_intro(report.archs),
        "",
        f"Colours: {legend_text()}.",
        "",
    ]
    if not report.examples:
        lines += [NO_EXAMPLES, ""]
    for kind, (heading, note) in KINDS.items():
        rows = report.examples_of(kind)
        if rows:
            lines += [f"### {heading}", "", note, ""]
        for ex in rows:
            lines += [f"![{ex.filename}](figures/predictions/{ex.filename})", "", ex.caption, ""]
    lines += ["## Across seeds", ""]
    if report.seeds is None:
        lines += [NO_SEEDS, ""]
    else:
        lines += [SEEDS_NOTE, "", markdown_table(report.seeds), ""]
        lines += [f"- {s}" for s in report.seed_findings] + [""]
    lines += ["## Regularization", ""]
    if report.regularization is None:
        lines += [NO_REG, ""]
    else:
        lines += [REG_NOTE, "", markdown_table(report.regularization), ""]
        if report.regularization_chart is not None:
            lines += _md_figure(report.regularization_chart)
    if report.transfer is not None:
        lines += [f"## {TRANSFER_TITLE}", "", TRANSFER_NOTE, "", markdown_table(report.transfer)]
        lines += ["", *(f"- {s}" for s in report.transfer_findings), ""]
    return "\n".join(lines)
