"""Faults in the files of ``data.source: folder``: one line naming the file, nothing half-written.

Layout faults stop the download stage; content faults (list files, images, trimaps) stop
preprocess, whose files are read there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faults.harness import (
    Project,
    assert_complete,
    assert_no_partial,
    assert_recovers,
    assert_user_error,
)


@pytest.fixture
def folder(project: Project, tiny_raw: Path) -> Path:
    """The user's copy of the data set, outside the project's outputs."""
    path = project.root / "my_pets"
    shutil.copytree(tiny_raw, path)
    project.params(source(path))
    return path


def source(path: Path) -> dict[str, str]:
    return {"data.source": "folder", "data.folder.path": str(path)}


def first_image(folder: Path) -> Path:
    return sorted((folder / "images").glob("*.jpg"))[0]


# ------------------------------------------------------------------------- download stage
def _absent(folder: Path) -> None:
    shutil.rmtree(folder)


def _no_trimaps(folder: Path) -> None:
    shutil.rmtree(folder / "annotations" / "trimaps")


def _no_jpg(folder: Path) -> None:
    for path in (folder / "images").glob("*.jpg"):
        path.unlink()


def _jpg_is_a_folder(folder: Path) -> None:
    path = first_image(folder)
    path.unlink()
    path.mkdir()


def _dangling_link(folder: Path) -> None:
    path = first_image(folder)
    path.unlink()
    path.symlink_to(folder / "nowhere.jpg")


LAYOUT = {  # case -> (the fault, what the line names besides the key)
    "absent": (_absent, "not found"),
    "no-trimaps": (_no_trimaps, "annotations/trimaps"),
    "no-jpg": (_no_jpg, "holds no .jpg file"),
    "jpg-is-a-folder": (_jpg_is_a_folder, "(a folder)"),
    "dangling-symlink": (_dangling_link, "(a broken link)"),
}


@pytest.mark.parametrize("case", sorted(LAYOUT))
def test_layout_fault_stops_download(project: Project, folder: Path, tiny_raw: Path, case: str):
    fault, needle = LAYOUT[case]
    fault(folder)
    assert_user_error(project.run("download"), "data.folder.path", needle)
    assert_no_partial(project, "download")
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(tiny_raw, folder)
    assert_recovers(project, "download", source(folder))


def test_folder_inside_the_output_is_refused(project: Project, tiny_raw: Path) -> None:
    inside = project.root / "data" / "raw" / "copy"
    shutil.copytree(tiny_raw, inside)
    project.params(source(inside))
    assert_user_error(project.run("download"), "data.folder.path", "inside the output")
    assert inside.is_dir()  # the user's files are not touched


# ----------------------------------------------------------------------- preprocess stage
def _not_utf8(folder: Path) -> None:
    (folder / "annotations" / "trainval.txt").write_bytes(b"\xff\xfe\x00 binary")


def _bad_line(folder: Path) -> None:
    path = folder / "annotations" / "trainval.txt"
    path.write_text(path.read_text() + "only_two fields\n")


def _listed_twice(folder: Path) -> None:
    test = (folder / "annotations" / "test.txt").read_text().splitlines()
    path = folder / "annotations" / "trainval.txt"
    path.write_text(path.read_text() + test[0] + "\n")


def _corrupt_jpgs(folder: Path) -> None:
    for path in sorted((folder / "images").glob("*.jpg"))[:5]:
        path.write_bytes(path.read_bytes()[:40])  # a header and nothing else


def _bad_trimap_values(folder: Path) -> None:
    for path in sorted((folder / "annotations" / "trimaps").glob("*.png"))[:5]:
        values = np.asarray(Image.open(path)).copy()
        values[0, 0] = 7
        Image.fromarray(values).save(path)


def _empty_test_list(folder: Path) -> None:
    (folder / "annotations" / "test.txt").write_text("")


CONTENT = {  # case -> (the fault, what the line names)
    "list-not-utf8": (_not_utf8, ("trainval.txt", "not UTF-8")),
    "list-bad-line": (_bad_line, ("trainval.txt:", "expected 'NAME CLASS-ID SPECIES BREED-ID'")),
    "listed-twice": (_listed_twice, ("listed twice",)),
    "corrupt-jpgs": (_corrupt_jpgs, ("unreadable image x5", "preprocess.max_bad_fraction")),
    "bad-trimaps": (_bad_trimap_values, ("bad trimap values x5", "preprocess.max_bad_fraction")),
    "empty-test": (_empty_test_list, ("split test would be empty", "test.txt")),
}


@pytest.mark.parametrize("case", sorted(CONTENT))
def test_content_fault_stops_preprocess(
    project: Project, folder: Path, tiny_raw: Path, case: str
) -> None:
    fault, needles = CONTENT[case]
    fault(folder)
    assert project.run("download").rc == 0
    assert_user_error(project.run("preprocess"), *needles)
    assert_no_partial(project, "preprocess")
    shutil.rmtree(folder)
    shutil.copytree(tiny_raw, folder)
    assert project.run("download").rc == 0
    assert_recovers(project, "preprocess", source(folder))
    assert_complete(project, "download")
