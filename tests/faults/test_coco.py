"""Faults in a COCO instances JSON (``data.source: coco``): checked before pycocotools sees them.

``json.load`` accepts ``NaN`` and ``Infinity``, so such files occur; a NaN made the stage grow
without bound, a coordinate of 1e30 crashed pycocotools (fault 1 of issue 15).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from faults.conftest import Coco
from faults.harness import Project, assert_no_partial, assert_recovers, assert_user_error

BOX = [8.0, 6.0, 30.0, 6.0, 30.0, 30.0, 8.0, 30.0]
# case -> (index in the first polygon, value): x at even indices, y at odd ones
COORDINATES = {
    "nan": (2, math.nan),
    "inf": (2, math.inf),
    "minus-inf": (3, -math.inf),
    "1e30": (4, 1e30),
    "1e8": (4, 1e8),
    "far-negative-y": (5, -1e8),
}


@pytest.mark.parametrize("case", sorted(COORDINATES))
def test_bad_polygon_coordinate(project: Project, coco: Coco, case: str) -> None:
    index, value = COORDINATES[case]
    doc = copy.deepcopy(coco.doc)
    doc["annotations"][2]["segmentation"][0][index] = value
    project.params(coco.write(project, doc))
    axis = "x" if index % 2 == 0 else "y"
    assert_user_error(
        project.run("download"), "instances.json", "annotations[2] (id 3)", f"coordinate {axis} ="
    )
    assert_no_partial(project, "download")
    assert_recovers(project, "download", coco.write(project))


def _set(doc: dict[str, Any], where: str, key: str, value: Any) -> None:
    doc[where][0][key] = value


SIZES = {  # case -> (entry list, key, value, what the line names)
    "huge-height": ("images", "height", 10**12, "'height' = 1000000000000"),
    "width-over-limit": ("images", "width", 70000, "at most 65535"),
    "nan-height": ("images", "height", math.nan, "'height' must be a positive integer"),
    "rle-wrong-sum": (
        "annotations",
        "segmentation",
        {"size": [40, 48], "counts": [5, 5]},
        "summing to height x width",
    ),
}


@pytest.mark.parametrize("case", sorted(SIZES))
def test_bad_size_or_mask(project: Project, coco: Coco, case: str) -> None:
    where, key, value, needle = SIZES[case]
    doc = copy.deepcopy(coco.doc)
    _set(doc, where, key, value)
    project.params(coco.write(project, doc))
    assert_user_error(project.run("download"), "instances.json", f"{where}[0]", needle)
    assert_no_partial(project, "download")
    assert_recovers(project, "download", coco.write(project))
