"""The whole DVC pipeline on a copy of the project with a tiny preset: seven stages, then none;
then `make plots` on its outputs, and the report and the plots page opened in headless Chromium.

This is what `make demo` does (preset + `dvc repro`), on the tests' tiny preset (conftest.TINY).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from browser import check_page, vega_js
from conftest import git_copy

from petseg.config import ARCH_SECTIONS

ARCHITECTURES = tuple(ARCH_SECTIONS)

ROOT = Path(__file__).resolve().parents[1]
STAGES = (
    "download",
    "preprocess",
    "train_strided",
    "train_unpool",
    "train_unet",
    "train_unet_noskip",
    "evaluate",
    "report",
)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_preset) -> Path:
    """A git copy of the tracked project files (what a fresh clone holds)."""
    dest = git_copy(tmp_path_factory.mktemp("clone") / "petseg")
    tiny_preset(dest)
    return dest


@pytest.fixture(scope="module")
def first_repro(project) -> subprocess.CompletedProcess:
    """The one whole-pipeline run; the tests below check what it wrote."""
    return _run([sys.executable, "-m", "dvc", "repro"], project)


@pytest.mark.slow
def test_repro_runs_every_stage_then_nothing(project, first_repro, tiny_params):
    n_test = tiny_params["data.synthetic.n_test"]
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first_repro.stdout
    for arch in ARCHITECTURES:
        assert (project / f"models/{arch}.pt").exists()
        test = json.loads((project / f"metrics/test/{arch}.json").read_text())
        assert 0 <= test["miou"] <= 1 and test["n_test"] == n_test
    summary = json.loads((project / "metrics/summary.json").read_text())
    intervals = summary["intervals"]  # evaluate.bootstrap is on by default
    assert intervals["over"] == f"{n_test} test images"
    pairs = {f"{a}-{b}" for i, a in enumerate(ARCHITECTURES) for b in ARCHITECTURES[i + 1 :]}
    assert set(intervals["diff"]) == pairs  # every pair, in architecture order
    assert summary["cost"]["reference"].keys() == {"train_step", "inference_batch"}
    for arch, row in summary["architectures"].items():
        low, high = intervals["miou"][arch]["low"], intervals["miou"][arch]["high"]
        assert low <= row["miou"] <= high
    assert (project / "report/index.html").exists() and (project / "report/README.md").exists()
    assert list((project / "plots/predictions").glob("*.png"))
    assert (project / "mlflow.db").exists()

    second = _run([sys.executable, "-m", "dvc", "repro"], project)
    assert "Running stage" not in second.stdout
    status = _run([sys.executable, "-m", "dvc", "status"], project)
    assert "up to date" in status.stdout


@pytest.fixture(scope="module")
def plots_page(project, first_repro) -> Path:
    """`make plots` in the copy. `-o install`: the copy has no venv of its own (dvc comes first on
    PATH from this one) and uses the Vega scripts that `make install` fetched here."""
    out = _run(["make", "plots", "-o", "install", f"VEGA_JS={vega_js()}"], project)
    page = project / "dvc_plots/index.html"
    assert f"plots: {page}" in out.stdout
    return page


@pytest.mark.slow
def test_make_plots_writes_a_page_with_its_scripts_and_images_beside_it(project, plots_page):
    html = plots_page.read_text(encoding="utf-8")
    scripts = re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", html)
    assert scripts == ["js/vega.min.js", "js/vega-lite.min.js", "js/vega-embed.min.js"]
    assert all((plots_page.parent / src).stat().st_size > 10_000 for src in scripts)
    images = re.findall(r"<img src=\"([^\"]+)\"", html)
    predictions = [p.name for p in (project / "plots/predictions").glob("*.png")]
    assert len(images) == len(predictions)  # DVC copies them into static/ under longer names
    assert all(any(src.endswith(name) for src in images) for name in predictions)
    assert all((plots_page.parent / src).is_file() for src in images)


@pytest.mark.slow
def test_report_and_plots_pages_open_in_chromium_without_errors(project, plots_page, chromium):
    report = project / "report/index.html"
    checked = check_page(chromium, report)
    assert checked.problems == []
    assert checked.images == report.read_text(encoding="utf-8").count("<img ") > 0

    checked = check_page(chromium, plots_page)
    assert checked.problems == []
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
    top = sum(isinstance(d, dict) for d in pipeline["plots"])  # the rest are images
    # Each stage's own plots: a chart per CSV file (the prediction folder holds images).
    own = [p if isinstance(p, str) else next(iter(p)) for st in pipeline["stages"].values()
           for p in st.get("plots", [])]  # fmt: skip
    assert checked.charts == top + sum(name.endswith(".csv") for name in own)
    assert checked.images == len(list((project / "plots/predictions").glob("*.png")))


@pytest.mark.slow
def test_a_pretrained_encoder_experiment_retrains_only_the_unets(
    project, first_repro, torch_home, monkeypatch
):
    """The issue's command, with the stand-in weights of the torch_home fixture as the cache."""
    import hashlib

    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    exp = _run(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", "models.unet.encoder=resnet18",
         "-S", "models.unet.pretrained=true"],
        project,
    )  # fmt: skip
    ran = set(re.findall(r"Running stage '(\w+)'", exp.stdout))
    assert ran == {"train_unet", "train_unet_noskip", "evaluate", "report"}
    weights = torch_home / "hub/checkpoints/resnet18-f37072fd.pth"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    for arch in ("unet", "unet_noskip"):
        metrics = json.loads((project / f"metrics/train/{arch}.json").read_text())
        assert metrics["encoder_weights_sha256"] == sha
    assert "encoder_weights_sha256" not in (project / "metrics/train/strided.json").read_text()
    report = (project / "report/README.md").read_text()
    section = report.split("## From scratch vs pretrained\n", 1)[1]
    assert "| dvc repro | unet | resnet18 | ImageNet | 1 |" in section
    assert "| dvc repro | strided | scratch | random (own encoder) | 1 |" in section
    assert "No network here started from pretrained weights" not in section
