"""Shared fixtures. Real Oxford-IIIT Pet files are read in place from ../shared/data; pages are
opened in headless Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import launch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(
            f"real test data {path} is absent (it lives beside the project in ../shared/data)"
        )
    return path


@pytest.fixture(scope="session")
def pets_sample() -> Path:
    """228 real pairs in the official layout (read-only)."""
    return _shared("oxford-pets-sample")


@pytest.fixture(scope="session")
def pets_quirks() -> Path:
    """Two real oddities: Abyssinian_34.jpg is a GIF, Abyssinian_5.jpg an RGBA PNG (read-only)."""
    return _shared("oxford-pets-quirks")


@pytest.fixture(scope="session")
def chromium():
    """Headless Debian Chromium driven by Playwright (tests/browser.py); skips without them."""
    with launch() as browser:
        yield browser
