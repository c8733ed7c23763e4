"""Open a local HTML page in headless Chromium and list everything that went wrong on it.

Debian's `chromium` (/usr/bin/chromium; .ci/run installs it) driven by Playwright, which is told
where the browser is and never downloads one of its own.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Route

CHROMIUM = Path("/usr/bin/chromium")
# Vega, Vega-Lite and vega-embed as `make vega-js` (part of `make install`) fetches them.
VEGA_JS = Path(__file__).resolve().parents[1] / "build" / "vega-js"
# Playwright adds --headless and a fresh temporary --user-data-dir. The rest stop Chromium from
# calling Google's hosts at start-up, which a machine without internet refuses, many at a time.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")

# DVC writes each Vega chart as a <div id=...> whose script calls vegaEmbed('#id', spec); vega-embed
# then replaces the script with the chart, which Vega draws as a <canvas> or <svg> of class "marks".
EMBED_ID = re.compile(r"""vegaEmbed\(\s*['"]#([^'"]+)['"]""")
DRAWN_JS = """ids => ids.map(id => document.getElementById(id)?.querySelector('.marks') != null)"""
IMAGES_JS = """() => [...document.images]
    .map(i => ({src: i.currentSrc || i.src, loaded: i.complete && i.naturalWidth > 0}))"""


# A4 is 210 mm wide; CSS has 96 px to the inch.
A4_WIDTH_PX = 210 / 25.4 * 96
A4_HEIGHT_PX = 297 / 25.4 * 96
# The left and right margins of the page's @page rule in px (0 without one), measured by laying out
# a box that wide.
PAGE_MARGINS_JS = """() => {
    const rules = [...document.styleSheets].flatMap(s => [...s.cssRules]);
    const page = rules.find(r => r instanceof CSSPageRule);
    const px = length => {
        if (!length) return 0;
        const box = document.createElement('div');
        box.style.width = length;
        document.body.appendChild(box);
        const width = box.getBoundingClientRect().width;
        box.remove();
        return width;
    };
    return page ? [px(page.style.marginLeft), px(page.style.marginRight)] : [0, 0];
}"""
WIDTHS_JS = """selector => ({
    page: document.documentElement.scrollWidth,
    tables: [...document.querySelectorAll(selector)]
        .filter(t => t.getClientRects().length)  // shown: not display: none
        .map(t => {
            const box = t.getBoundingClientRect();
            return {cls: t.className, left: box.left, right: box.right, width: box.width};
        }),
})"""


@dataclass
class PrintLayout:
    printable_width: float  # A4 less the @page margins, in CSS px
    page_width: float  # how wide the laid-out page is (wider than printable: something overflows)
    tables: list[dict]  # per <table> shown (display: none ones left out): cls, left, right, width
    pdf: bytes  # the page printed to A4 by Chromium


def print_layout(
    browser: Browser, path: Path, selector: str = "table", media: str = "print"
) -> PrintLayout:
    """``path`` laid out as Chromium prints it to A4: print media, a viewport as wide as the page's
    printable width (A4 less its @page margins); then printed to a PDF. ``media="screen"`` lays
    it out at that width with the screen styles instead (what printing would get without the
    print stylesheet)."""
    page = browser.new_page()
    try:
        page.goto(path.resolve().as_uri(), wait_until="load")
        page.emulate_media(media="print")
        printable = A4_WIDTH_PX - sum(page.evaluate(PAGE_MARGINS_JS))
        page.set_viewport_size({"width": int(printable), "height": int(A4_HEIGHT_PX)})
        page.emulate_media(media=media)
        widths = page.evaluate(WIDTHS_JS, selector)
        page.emulate_media(media="print")
        pdf = page.pdf(format="A4")
    finally:
        page.close()
    return PrintLayout(printable, widths["page"], widths["tables"], pdf)


@dataclass
class PageCheck:
    problems: list[str]  # empty when the page is fine
    images: int  # <img> elements on the page
    charts: int  # Vega charts on the page


@contextlib.contextmanager
def launch() -> Iterator[Browser]:
    """A headless Chromium; skips the test, saying what is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: apt-get install chromium (.ci/run installs it)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed: pip install -e '.[dev]'"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def vega_js() -> Path:
    """The folder of pinned Vega scripts that `make plots` copies beside its page; skips without."""
    if not (VEGA_JS / ".fetched").exists():
        pytest.skip(f"{VEGA_JS} is absent: `make vega-js` (part of `make install`) fetches it")
    return VEGA_JS


def check_page(browser: Browser, path: Path, chart_timeout_ms: float = 20_000) -> PageCheck:
    """Load ``path``, wait for its charts, and collect console errors, uncaught exceptions, failed
    or remote requests (remote ones are blocked: the page must work offline), images that did not
    load and charts that were not drawn."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console error: {message.text}")

    def block_remote(route: Route) -> None:
        problems.append(f"remote request: {route.request.url}")
        route.abort()

    page = browser.new_page()
    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"uncaught exception: {error}"))
    page.on(
        "requestfailed",
        lambda request: problems.append(f"failed request: {request.url} ({request.failure})"),
    )
    page.route(lambda url: not url.startswith(LOCAL_SCHEMES), block_remote)
    charts = EMBED_ID.findall(path.read_text(encoding="utf-8"))
    try:
        page.goto(path.resolve().as_uri(), wait_until="load")
        # vega-embed draws asynchronously; a chart that never draws is reported below.
        with contextlib.suppress(PlaywrightTimeout):
            page.wait_for_function(
                f"ids => ({DRAWN_JS})(ids).every(Boolean)", arg=charts, timeout=chart_timeout_ms
            )
        drawn = page.evaluate(DRAWN_JS, charts)
        images = page.evaluate(IMAGES_JS)
    finally:
        page.close()
    problems += [f"image not loaded: {i['src'][:100]}" for i in images if not i["loaded"]]
    problems += [f"chart not drawn: #{c}" for c, ok in zip(charts, drawn, strict=True) if not ok]
    return PageCheck(problems=problems, images=len(images), charts=len(charts))
