"""The page check (tests/browser.py) finds what it is there to find: pages written like DVC's, on
the offline template `make plots` uses, each broken in one way, and one not broken at all."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
from browser import check_page, vega_js
from PIL import Image

pytestmark = pytest.mark.slow  # every test here drives a headless Chromium

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / ".dvc/plots/offline.html"
SPEC = {
    "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
    "data": {"values": [{"epoch": 1, "miou": 0.3}, {"epoch": 2, "miou": 0.5}]},
    "mark": "line",
    "encoding": {
        "x": {"field": "epoch", "type": "quantitative"},
        "y": {"field": "miou", "type": "quantitative"},
    },
}


def chart(spec: dict, div_id: str = "chart") -> str:
    """A Vega-Lite chart as dvc_render's VegaRenderer writes it."""
    return (
        f'<div id = "{div_id}"><script type = "text/javascript">'
        f"var spec = {json.dumps(spec)}; vegaEmbed('#{div_id}', spec);</script></div>"
    )


def png_img() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 30, 30)).save(buffer, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def write_page(folder: Path, body: str, drop_script: str | None = None) -> Path:
    """The template filled with ``body`` and the pinned scripts beside it, as `make plots` does."""
    shutil.copytree(vega_js(), folder / "js")
    if drop_script:
        (folder / "js" / drop_script).unlink()
    page = folder / "index.html"
    page.write_text(TEMPLATE.read_text().replace("{plot_divs}", body))
    return page


def test_a_page_with_an_image_and_a_chart_that_both_draw_has_no_problems(tmp_path, chromium):
    result = check_page(chromium, write_page(tmp_path, png_img() + chart(SPEC)))
    assert result.problems == []
    assert (result.images, result.charts) == (1, 1)


BROKEN = {
    "missing image file": (
        '<img src="static/gone.png">' + chart(SPEC),
        None,
        ["failed request: file://", "image not loaded: file://"],
    ),
    "missing script": (
        chart(SPEC),
        "vega-embed.min.js",
        ["failed request: file://", "vegaEmbed is not defined", "chart not drawn: #chart"],
    ),
    "script from a CDN": (
        '<script src="https://cdn.jsdelivr.net/npm/vega@5.20.2"></script>' + chart(SPEC),
        None,
        ["remote request: https://cdn.jsdelivr.net/npm/vega@5.20.2"],
    ),
    "spec that does not compile": (
        chart({**SPEC, "mark": "no-such-mark"}),
        None,
        ["uncaught exception:", "chart not drawn: #chart"],
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_each_kind_of_breakage_is_reported(case, tmp_path, chromium):
    body, drop_script, expected = BROKEN[case]
    page = write_page(tmp_path, body, drop_script)
    problems = check_page(chromium, page, chart_timeout_ms=1_000).problems
    for text in expected:
        assert any(text in problem for problem in problems), (text, problems)
