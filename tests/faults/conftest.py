"""Fixtures of the fault-injection suite: tiny inputs built once, a fresh project per case."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from faults.harness import BASE, Project
from petseg.config import PreprocessParams, SyntheticParams
from petseg.data import download as dl
from petseg.data.preprocess import preprocess
from petseg.data.synthetic import generate


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TINY's synthetic data set in the official layout (read-only: copy it)."""
    raw = tmp_path_factory.mktemp("faults") / "raw"
    raw.mkdir()
    synthetic = {k.split(".")[-1]: v for k, v in BASE.items() if k.startswith("data.synthetic.")}
    generate(raw, SyntheticParams(**synthetic), progress=False)
    return raw


@pytest.fixture(scope="session")
def tiny_prepared(tiny_raw: Path) -> Path:
    """tiny_raw prepared at TINY's size (read-only: copy it)."""
    out = tiny_raw.parent / "prepared"
    size = BASE["preprocess.image_size"]
    preprocess(tiny_raw, out, PreprocessParams(image_size=size, workers=1), progress=False)
    return out


@pytest.fixture(scope="session")
def heavy_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 pairs that take preprocess seconds, not milliseconds: one 800 px photo stored as PNG
    (no reduced-size JPEG decoding) under every name, hard links all (read-only: link it)."""
    raw = tmp_path_factory.mktemp("heavy") / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "annotations" / "trimaps").mkdir(parents=True)
    rng = np.random.default_rng(0)
    photo, trimap = raw / "photo.png", raw / "trimap.png"
    Image.fromarray(rng.integers(0, 255, (800, 800, 3), dtype=np.uint8)).save(photo)
    Image.fromarray(rng.integers(1, 4, (800, 800), dtype=np.uint8)).save(trimap)
    names = [f"heavy_{i}" for i in range(150)]
    for name in names:
        os.link(photo, raw / "images" / f"{name}.jpg")
        os.link(trimap, raw / "annotations" / "trimaps" / f"{name}.png")
    lines = [f"{name} 1 1 1\n" for name in names]
    for list_name, part in (("trainval", lines[:120]), ("test", lines[120:]), ("list", lines)):
        (raw / "annotations" / f"{list_name}.txt").write_text("".join(part))
    return raw


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """An empty project with BASE's params.yaml."""
    proj = Project(tmp_path / "project")
    proj.root.mkdir()
    proj.params()
    return proj


@pytest.fixture
def raw_project(project: Project, tiny_raw: Path) -> Project:
    """A project whose download stage has run: data/raw holds tiny_raw."""
    shutil.copytree(tiny_raw, project.root / "data" / "raw")
    return project


@pytest.fixture
def prepared_project(project: Project, tiny_prepared: Path) -> Project:
    """A project whose preprocess stage has run: data/prepared holds tiny_prepared."""
    shutil.copytree(tiny_prepared, project.root / "data" / "prepared")
    return project


# ---------------------------------------------------------------------------- archives
@dataclass(frozen=True)
class Archives:
    data: dict[str, bytes]  # images.tar.gz, annotations.tar.gz
    md5: dict[str, str]

    def params(self, base_urls: list[str], **oxford: Any) -> dict[str, Any]:
        """Overrides for the oxford source: these mirrors, the archives' MD5s, short waits."""
        return {
            "data.source": "oxford-iiit-pet",
            "data.oxford.base_urls": base_urls,
            "data.oxford.images_md5": self.md5[dl.IMAGES],
            "data.oxford.annotations_md5": self.md5[dl.ANNOTATIONS],
            "data.oxford.retries": 1,
            "data.oxford.timeout_s": 1.0,
            **{f"data.oxford.{k}": v for k, v in oxford.items()},
        }


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="session")
def archives(tiny_raw: Path) -> Archives:
    """The two official archives, holding tiny_raw."""
    files = {p.relative_to(tiny_raw).as_posix(): p for p in tiny_raw.rglob("*") if p.is_file()}
    images = {n: p.read_bytes() for n, p in files.items() if n.startswith("images/")}
    notes = {n: p.read_bytes() for n, p in files.items() if n.startswith("annotations/")}
    data = {dl.IMAGES: tar_gz(images), dl.ANNOTATIONS: tar_gz(notes)}
    return Archives(data, {n: hashlib.md5(b).hexdigest() for n, b in data.items()})


# -------------------------------------------------------------------------------- coco
@dataclass(frozen=True)
class Coco:
    """A COCO instances JSON of six 40x48 photos (three cats, three dogs), one box each."""

    doc: dict[str, Any]
    images: Path

    def write(self, project: Project, doc: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON (``doc`` or the good one) into the project; returns the params overrides."""
        path = project.root / "coco" / "instances.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(doc or self.doc))  # json writes NaN and Infinity as such
        return {
            "data.source": "coco",
            "data.coco.annotations": str(path),
            "data.coco.images": str(self.images),
            "data.coco.categories": {"cat": "pet", "dog": "pet"},
            "data.coco.test_fraction": 0.34,
            "data.coco.border_px": 2,
        }


@pytest.fixture(scope="session")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Coco:
    folder = tmp_path_factory.mktemp("coco")
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(6):
        name = f"photo_{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / name)
        images.append({"id": i + 1, "file_name": name, "height": 40, "width": 48})
        box = [8.0, 6.0, 30.0, 6.0, 30.0, 30.0, 8.0, 30.0]
        annotations.append(
            {"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 2, "segmentation": [box]}
        )
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    doc = {"images": images, "annotations": annotations, "categories": categories}
    return Coco(doc, folder)
