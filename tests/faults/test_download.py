"""Network faults of the download stage, against local HTTP servers on 127.0.0.1: mirrors that
serve the wrong bytes, stall, cut the connection, fail or are not there, and bad archives."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_server import closed_port_url, serve

from faults.conftest import Archives, tar_gz
from faults.harness import Project, assert_no_partial, assert_recovers, assert_user_error
from petseg.data import download as dl

PORTAL = b"<html><body>Please log in to the hotel Wi-Fi</body></html>"


@pytest.fixture
def good(archives: Archives) -> Iterator:
    with serve(archives.data) as httpd:
        yield httpd


@pytest.fixture
def portal() -> Iterator:
    """A mirror that answers 200 with a page instead of the archives (a captive portal)."""
    with serve(dict.fromkeys((dl.IMAGES, dl.ANNOTATIONS), PORTAL)) as httpd:
        yield httpd


def parts(project: Project) -> list[str]:
    return sorted(p.name for p in (project.root / "data" / "archives").glob("*.part"))


# Fault 4 of issue 15: a 200 with the wrong bytes must not stop the stage while a mirror is left.
def test_bad_mirror_then_good_mirror(project: Project, archives: Archives, portal, good) -> None:
    project.params(archives.params([portal.url, good.url]))
    done = project.run("download")
    assert done.rc == 0, done.stderr[-3000:]
    assert [h.name for h in portal.state.hits] == [dl.IMAGES, dl.ANNOTATIONS]
    assert [h.status for h in good.state.hits] == [200, 200]
    assert_recovers(project, "download", archives.params([portal.url, good.url]))  # cached now
    assert len(good.state.hits) == 2


def test_every_mirror_serving_wrong_bytes_says_what_to_change(
    project: Project, archives: Archives, portal, good
) -> None:
    project.params(archives.params([portal.url, portal.url + "/again"]))
    line = assert_user_error(
        project.run("download"), dl.IMAGES, "data.oxford.images_md5", "data.oxford.base_urls"
    )
    assert "run again" not in line.lower()  # it would fail the same way
    assert_no_partial(project, "download")
    assert parts(project) == []  # nothing wrong is kept to be resumed
    assert_recovers(project, "download", archives.params([portal.url, good.url]))


def test_stalled_mirror_times_out_and_the_next_serves(
    project: Project, archives: Archives, good
) -> None:
    with serve(archives.data) as stalled:
        stalled.state.stall_s = {dl.IMAGES: [30.0] * 5}
        project.params(archives.params([stalled.url, good.url]))
        done = project.run("download")
    assert done.rc == 0, done.stderr[-3000:]
    assert [h.name for h in stalled.state.hits].count(dl.IMAGES) == 2  # retries: 1
    assert "timed out" in done.stderr


def test_every_mirror_stalling_keeps_nothing_but_the_cache(
    project: Project, archives: Archives, good
) -> None:
    good.state.stall_s = {dl.IMAGES: [30.0] * 2}
    project.params(archives.params([good.url]))
    assert_user_error(project.run("download"), dl.IMAGES, "timed out", "data.oxford.archives_dir")
    assert_no_partial(project, "download")
    assert_recovers(project, "download", archives.params([good.url]))


def test_cut_connection_is_resumed_where_it_broke(
    project: Project, archives: Archives, good
) -> None:
    size = len(archives.data[dl.IMAGES])
    good.state.cut_at = {dl.IMAGES: [size // 3]}
    project.params(archives.params([good.url]))
    done = project.run("download")
    assert done.rc == 0, done.stderr[-3000:]
    hits = good.state.served(dl.IMAGES)
    assert [h.range for h in hits] == [None, f"bytes={size // 3}-"]
    assert sum(h.sent for h in hits) == size


def test_cut_every_time_keeps_the_part_and_the_next_run_resumes(
    project: Project, archives: Archives, good
) -> None:
    good.state.cut_at = {dl.IMAGES: [1000, 0, 0]}
    project.params(archives.params([good.url]))
    line = assert_user_error(project.run("download"), dl.IMAGES, "kept and will be resumed")
    assert "data/archives/images.tar.gz.part" in line
    assert_no_partial(project, "download")
    assert parts(project) == [f"{dl.IMAGES}.part"]
    assert_recovers(project, "download", archives.params([good.url]))
    assert good.state.served(dl.IMAGES)[-1].range == "bytes=1000-"


@pytest.mark.parametrize("status", [404, 500])
def test_error_status_moves_to_the_next_mirror(
    project: Project, archives: Archives, good, status: int
) -> None:
    with serve(archives.data) as failing:
        failing.state.status = {dl.IMAGES: [status] * 3}
        project.params(archives.params([failing.url, good.url]))
        done = project.run("download")
    assert done.rc == 0, done.stderr[-3000:]
    tries = [h.status for h in failing.state.served(dl.IMAGES)]
    assert tries == ([404] if status == 404 else [500, 500])  # only a 5xx may pass: retried
    assert [h.status for h in good.state.served(dl.IMAGES)] == [200]


def test_no_mirror_reachable(project: Project, archives: Archives, good) -> None:
    project.params(archives.params([closed_port_url(), closed_port_url()]))
    assert_user_error(
        project.run("download"), "could not be reached", "Connection refused", "archives_dir"
    )
    assert_no_partial(project, "download")
    assert_recovers(project, "download", archives.params([good.url]))


def _served(archives: Archives, images: bytes) -> tuple[dict[str, bytes], dict[str, str]]:
    """Files where images.tar.gz is ``images``, and the params that expect exactly them."""
    files = {**archives.data, dl.IMAGES: images}
    return files, {"images_md5": hashlib.md5(images).hexdigest()}


BAD_ARCHIVES = {  # case -> (the images archive served, with a matching MD5; what the line names)
    "not-gzip": (b"\x1f\x8b not really gzip", "not a readable .tar.gz"),
    "dotdot": (tar_gz({"images/../../evil.jpg": b"x"}), "refusing to extract member"),
    "absolute": (tar_gz({"/tmp/petseg-evil.jpg": b"x"}), "absolute path"),
    "no-images": (tar_gz({"readme.txt": b"x"}), "missing images"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_bad_archive_extracts_nothing(
    project: Project, archives: Archives, good, case: str
) -> None:
    images, needle = BAD_ARCHIVES[case]
    files, md5 = _served(archives, images)
    with serve(files) as bad:
        project.params(archives.params([bad.url], **md5))
        assert_user_error(project.run("download"), needle)
    assert_no_partial(project, "download")
    assert not (project.root.parent / "evil.jpg").exists()
    assert not Path("/tmp/petseg-evil.jpg").exists()
    (project.root / "data" / "archives" / dl.IMAGES).unlink()  # what the message asks for
    assert_recovers(project, "download", archives.params([good.url]))


def test_archives_dir_without_the_archives(project: Project, archives: Archives, good) -> None:
    local = project.root / "downloads"
    local.mkdir()
    (local / dl.IMAGES).write_bytes(archives.data[dl.IMAGES])
    project.params(archives.params([good.url], archives_dir=str(local)))
    assert_user_error(project.run("download"), str(local / dl.ANNOTATIONS), "archives_dir")
    assert_no_partial(project, "download")
    assert good.state.hits == []
    (local / dl.ANNOTATIONS).write_bytes(archives.data[dl.ANNOTATIONS])
    assert_recovers(project, "download", archives.params([good.url], archives_dir=str(local)))
