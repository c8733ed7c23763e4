"""The download stage against a local HTTP server on 127.0.0.1 serving archives of the sample
(tests/http_server.py: Range requests, a record of every request, cut connections, a server that
ignores Range)."""

from __future__ import annotations

import filecmp
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from http_server import closed_port_url, serve

from petseg.config import DataParams, validate
from petseg.data import download as dl
from petseg.errors import DataError, DownloadError

ROOT = Path(__file__).resolve().parents[1]
JUNK = "annotations/trimaps/._Abyssinian_1.png"  # AppleDouble file, as in the official archive
XML = "annotations/xmls/Abyssinian_1.xml"


# ------------------------------------------------------------------------------------ fixtures
@dataclass(frozen=True)
class Archives:
    folder: Path
    data: dict[str, bytes]
    md5: dict[str, str]


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="session")
def archives(pets_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Archives:
    """images.tar.gz and annotations.tar.gz in the official layout, built once from the sample."""
    folder = tmp_path_factory.mktemp("archives")
    with tarfile.open(folder / dl.IMAGES, "w:gz", compresslevel=1) as tar:
        tar.add(pets_sample / "images", arcname="images")
    with tarfile.open(folder / dl.ANNOTATIONS, "w:gz", compresslevel=1) as tar:
        tar.add(pets_sample / "annotations", arcname="annotations")
        _add_bytes(tar, JUNK, b"\x00\x05\x16\x07 AppleDouble junk")
        _add_bytes(tar, XML, b"<annotation/>")
    data = {name: (folder / name).read_bytes() for name in (dl.IMAGES, dl.ANNOTATIONS)}
    md5 = {name: hashlib.md5(blob).hexdigest() for name, blob in data.items()}
    return Archives(folder, data, md5)


@pytest.fixture
def server(archives: Archives):
    """A fresh HTTP server on 127.0.0.1 (ephemeral port) serving the archives; stopped after."""
    with serve(archives.data) as httpd:
        yield httpd


@pytest.fixture
def closed_url() -> str:
    return closed_port_url()


@pytest.fixture(autouse=True)
def _fast_and_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "BACKOFF_S", 0.0)
    for var in ("NO_PROXY", "no_proxy"):  # a proxy must never see the test server's requests
        monkeypatch.setenv(var, "127.0.0.1,localhost")


def _params(archives: Archives, base_urls: list[str], **oxford: object) -> DataParams:
    section = {
        "source": "oxford-iiit-pet",
        "oxford": {
            "base_urls": base_urls,
            "images_md5": archives.md5[dl.IMAGES],
            "annotations_md5": archives.md5[dl.ANNOTATIONS],
            "retries": 2,
            "timeout_s": 10.0,
            **oxford,
        },
    }
    return validate({"data": section}).data


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _assert_same_as_sample(out: Path, sample: Path) -> None:
    expected = _files(sample)
    got = _files(out)
    assert expected <= got, sorted(expected - got)[:5]
    _, mismatch, errors = filecmp.cmpfiles(sample, out, sorted(expected), shallow=False)
    assert not mismatch and not errors


# ------------------------------------------------------------------------------- oxford source
def test_download_extracts_official_layout_and_uses_cache(
    archives: Archives, server, closed_url: str, pets_sample: Path, tmp_path: Path
) -> None:
    # The first mirror is dead: the second one must take over.
    params = _params(archives, [closed_url, server.url], retries=0)
    out, cache = tmp_path / "raw", tmp_path / "archives"
    dl.download(params, out, cache, progress=False)

    assert dl.missing_layout(out) == []
    _assert_same_as_sample(out, pets_sample)
    assert (out / XML).is_file()  # the layout is kept as extracted...
    assert not (out / JUNK).exists()  # ...except AppleDouble junk
    for name in (dl.IMAGES, dl.ANNOTATIONS):
        assert dl.md5sum(cache / name) == archives.md5[name]
        assert not (cache / f"{name}.part").exists()
    assert [h.status for h in server.state.hits] == [200, 200]

    # A verified archive in the cache is not downloaded again.
    dl.download(params, out, cache, progress=False)
    assert len(server.state.hits) == 2
    assert dl.missing_layout(out) == []


def test_cut_connection_resumes_without_refetching(
    archives: Archives, server, tmp_path: Path
) -> None:
    size = len(archives.data[dl.IMAGES])
    cut = size // 3
    server.state.cut_at[dl.IMAGES] = [cut]
    dest = dl.fetch(
        dl.mirror_urls([server.url], dl.IMAGES),
        tmp_path / dl.IMAGES,
        archives.md5[dl.IMAGES],
        retries=1,
        timeout_s=10,
        progress=False,
    )
    assert dest.read_bytes() == archives.data[dl.IMAGES]
    hits = server.state.served(dl.IMAGES)
    assert [(h.range, h.status) for h in hits] == [(None, 200), (f"bytes={cut}-", 206)]
    assert sum(h.sent for h in hits) == size  # no byte was served twice


def test_partial_file_from_earlier_run_is_resumed(
    archives: Archives, server, tmp_path: Path
) -> None:
    data = archives.data[dl.ANNOTATIONS]
    (tmp_path / f"{dl.ANNOTATIONS}.part").write_bytes(data[:1000])
    dl.fetch(
        dl.mirror_urls([server.url], dl.ANNOTATIONS),
        tmp_path / dl.ANNOTATIONS,
        archives.md5[dl.ANNOTATIONS],
        progress=False,
    )
    assert [(h.range, h.sent) for h in server.state.hits] == [("bytes=1000-", len(data) - 1000)]
    assert (tmp_path / dl.ANNOTATIONS).read_bytes() == data


def test_complete_partial_file_gets_416_and_is_verified(
    archives: Archives, server, tmp_path: Path
) -> None:
    data = archives.data[dl.ANNOTATIONS]
    (tmp_path / f"{dl.ANNOTATIONS}.part").write_bytes(data)
    dl.fetch(
        dl.mirror_urls([server.url], dl.ANNOTATIONS),
        tmp_path / dl.ANNOTATIONS,
        archives.md5[dl.ANNOTATIONS],
        progress=False,
    )
    assert [h.status for h in server.state.hits] == [416]
    assert (tmp_path / dl.ANNOTATIONS).read_bytes() == data


def test_cached_archive_with_wrong_md5_is_downloaded_again(
    archives: Archives, server, tmp_path: Path
) -> None:
    (tmp_path / dl.ANNOTATIONS).write_bytes(b"stale")
    url = dl.mirror_urls([server.url], dl.ANNOTATIONS)
    dl.fetch(url, tmp_path / dl.ANNOTATIONS, archives.md5[dl.ANNOTATIONS], progress=False)
    assert [(h.range, h.status) for h in server.state.hits] == [(None, 200)]
    assert (tmp_path / dl.ANNOTATIONS).read_bytes() == archives.data[dl.ANNOTATIONS]


def test_server_ignoring_range_restarts_and_is_still_correct(
    archives: Archives, server, tmp_path: Path
) -> None:
    size = len(archives.data[dl.IMAGES])
    server.state.ignore_range = True
    server.state.cut_at[dl.IMAGES] = [size // 2]
    dest = dl.fetch(
        dl.mirror_urls([server.url], dl.IMAGES),
        tmp_path / dl.IMAGES,
        archives.md5[dl.IMAGES],
        retries=1,
        progress=False,
    )
    assert dl.md5sum(dest) == archives.md5[dl.IMAGES]
    hits = server.state.served(dl.IMAGES)
    assert [(h.range, h.status) for h in hits] == [(None, 200), (f"bytes={size // 2}-", 200)]
    assert dest.stat().st_size == size


def test_checksum_mismatch_deletes_file_and_extracts_nothing(
    archives: Archives, server, tmp_path: Path
) -> None:
    params = _params(archives, [server.url], images_md5="0" * 32)
    out, cache = tmp_path / "raw", tmp_path / "archives"
    with pytest.raises(DownloadError) as err:
        dl.download(params, out, cache, progress=False)
    msg = str(err.value)
    assert dl.IMAGES in msg and "data.oxford.images_md5" in msg
    assert "0" * 32 in msg and archives.md5[dl.IMAGES] in msg
    assert not out.exists()
    assert list(cache.iterdir()) == []  # neither the bad file nor a .part is kept
    assert list(tmp_path.glob(".raw*")) == []


def test_http_404_is_not_retried_and_the_next_mirror_serves(
    archives: Archives, server, tmp_path: Path
) -> None:
    urls = [f"{server.url}/missing.tar.gz", f"{server.url}/{dl.ANNOTATIONS}"]
    dest = dl.fetch(urls, tmp_path / dl.ANNOTATIONS, archives.md5[dl.ANNOTATIONS], progress=False)
    assert [h.status for h in server.state.hits] == [404, 200]
    assert dest.read_bytes() == archives.data[dl.ANNOTATIONS]


def test_retries_used_up_keep_the_part_for_the_next_run(
    archives: Archives, server, tmp_path: Path
) -> None:
    # Progress resets the retry count; attempts that add nothing use it up.
    server.state.cut_at[dl.IMAGES] = [1000, 0]
    url = dl.mirror_urls([server.url], dl.IMAGES)
    md5 = archives.md5[dl.IMAGES]
    with pytest.raises(DownloadError, match="could not download") as err:
        dl.fetch(url, tmp_path / dl.IMAGES, md5, retries=1, progress=False)
    assert [h.range for h in server.state.hits] == [None, "bytes=1000-"]
    part = tmp_path / f"{dl.IMAGES}.part"
    assert part.stat().st_size == 1000 and str(part) in str(err.value)

    dl.fetch(url, tmp_path / dl.IMAGES, md5, retries=1, progress=False)  # the next run resumes
    assert server.state.hits[-1].range == "bytes=1000-"
    assert sum(h.sent for h in server.state.hits) == len(archives.data[dl.IMAGES])


def test_archives_dir_uses_no_network(
    archives: Archives, server, pets_sample: Path, tmp_path: Path
) -> None:
    params = _params(archives, [server.url], archives_dir=str(archives.folder))
    out = tmp_path / "raw"
    dl.download(params, out, tmp_path / "cache", progress=False)
    assert server.state.hits == []
    _assert_same_as_sample(out, pets_sample)
    assert not (tmp_path / "cache").exists()


def test_archives_dir_missing_file_names_it_and_the_key(
    archives: Archives, server, tmp_path: Path
) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / dl.IMAGES).write_bytes(archives.data[dl.IMAGES])
    params = _params(archives, [server.url], archives_dir=str(tmp_path / "local"))
    with pytest.raises(DownloadError) as err:
        dl.download(params, tmp_path / "raw", tmp_path / "cache", progress=False)
    assert str(tmp_path / "local" / dl.ANNOTATIONS) in str(err.value)
    assert "data.oxford.archives_dir" in str(err.value)
    assert server.state.hits == []
    assert not (tmp_path / "raw").exists()


def test_archives_dir_wrong_md5_is_reported_and_the_file_kept(
    archives: Archives, tmp_path: Path
) -> None:
    local = tmp_path / "local"
    local.mkdir()
    (local / dl.IMAGES).write_bytes(archives.data[dl.IMAGES])
    (local / dl.ANNOTATIONS).write_bytes(b"not the archive")
    params = _params(archives, ["http://127.0.0.1:1/"], archives_dir=str(local))
    with pytest.raises(DownloadError, match="data.oxford.annotations_md5") as err:
        dl.download(params, tmp_path / "raw", tmp_path / "cache", progress=False)
    assert str(local / dl.ANNOTATIONS) in str(err.value)
    assert (local / dl.ANNOTATIONS).exists()  # the user's own file is never deleted
    assert not (tmp_path / "raw").exists()


def test_no_network_gives_one_clear_error(
    archives: Archives, closed_url: str, tmp_path: Path
) -> None:
    params = _params(archives, [closed_url, closed_url + "mirror2/"], retries=1)
    out = tmp_path / "raw"
    with pytest.raises(DownloadError) as err:
        dl.download(params, out, tmp_path / "cache", progress=False)
    msg = str(err.value)
    assert "could not be reached" in msg and "Connection refused" in msg
    assert closed_url + dl.IMAGES in msg and closed_url + "mirror2/" + dl.IMAGES in msg
    assert "data.oxford.archives_dir" in msg and "data.source: synthetic" in msg
    assert not out.exists()


# ---------------------------------------------------------------------------------- extraction
def _evil_archive(path: Path, member: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        _add_bytes(tar, "images/ok.jpg", b"fine")
        if member.isfile():
            tar.addfile(member, io.BytesIO(b"x" * member.size))
        else:
            tar.addfile(member)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, 4 if kind == tarfile.REGTYPE else 0
    return info


EVIL = {  # case -> (member, the reason the first line of defence must give)
    "dotdot": (_member("images/../../evil.txt"), "'..' in the path"),
    "absolute": (_member("/tmp/petseg-evil-absolute.txt"), "absolute path"),
    "symlink-out": (_member("images/link", tarfile.SYMTYPE, "../../outside"), "symbolic link"),
    "symlink-abs": (_member("images/link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    "hardlink-out": (_member("images/hard", tarfile.LNKTYPE, "../outside"), "hard link"),
    "device": (_member("images/dev", tarfile.CHRTYPE), "device file"),
}


@pytest.mark.parametrize("case", sorted(EVIL))
def test_safe_extract_rejects_members_escaping_the_destination(case: str, tmp_path: Path) -> None:
    member, why = EVIL[case]
    archive = _evil_archive(tmp_path / "evil.tar.gz", member)
    dest = tmp_path / "box" / "dest"
    with pytest.raises(DownloadError) as err:
        dl.safe_extract(archive, dest)
    msg = str(err.value)
    assert str(archive) in msg and repr(member.name) in msg and why in msg
    assert list(dest.iterdir()) == []  # checked before anything was written
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["box", "dest", "evil.tar.gz"]
    assert not Path("/tmp/petseg-evil-absolute.txt").exists()


def test_safe_extract_rejects_a_path_through_an_archive_symlink(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(_member("images/up", tarfile.SYMTYPE, "."))  # harmless alone...
        _add_bytes(tar, "images/up/x.jpg", b"data")  # ...but a path through it is not checked
    with pytest.raises(DownloadError, match="symbolic link"):
        dl.safe_extract(archive, tmp_path / "dest")


def test_data_filter_is_the_second_line_of_defence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dl, "check_member", lambda *args: None)  # first line down
    archive = _evil_archive(tmp_path / "evil.tar.gz", EVIL["symlink-out"][0])
    with pytest.raises(DownloadError, match="refusing to extract"):
        dl.safe_extract(archive, tmp_path / "box" / "dest")
    assert not (tmp_path / "outside").exists()


def test_evil_archive_served_stops_the_stage(archives: Archives, server, tmp_path: Path) -> None:
    evil = _evil_archive(tmp_path / "evil.tar.gz", EVIL["dotdot"][0]).read_bytes()
    server.state.files[dl.IMAGES] = evil
    params = _params(archives, [server.url], images_md5=hashlib.md5(evil).hexdigest())
    out = tmp_path / "work" / "raw"
    with pytest.raises(DownloadError, match="refusing to extract member"):
        dl.download(params, out, tmp_path / "cache", progress=False)
    assert not out.exists() and not (tmp_path / "evil.txt").exists()
    assert list((tmp_path / "work").iterdir()) == []


def test_corrupt_archive_is_a_download_error(tmp_path: Path) -> None:
    (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DownloadError, match="not a readable"):
        dl.safe_extract(tmp_path / "bad.tar.gz", tmp_path / "dest")


# ------------------------------------------------------------------------ folder and synthetic
def test_folder_source_copies_the_layout(pets_sample: Path, tmp_path: Path) -> None:
    params = validate({"data": {"source": "folder", "folder": {"path": str(pets_sample)}}}).data
    out = tmp_path / "raw"
    dl.download(params, out, tmp_path / "unused", progress=False)
    assert _files(out) == _files(pets_sample)
    _assert_same_as_sample(out, pets_sample)
    assert not (tmp_path / "unused").exists()


def test_folder_relative_path_and_junk(
    pets_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    for rel in ("images", "annotations/trimaps"):
        (src / rel).mkdir(parents=True)
    (src / "images" / "a.jpg").write_bytes(b"jpg")
    (src / "images" / "._a.jpg").write_bytes(b"junk")
    (src / "annotations" / "trimaps" / "a.png").write_bytes(b"png")
    for name in dl.LIST_FILES:
        (src / "annotations" / name).write_text("a 1 1 1\n")
    monkeypatch.chdir(tmp_path)
    params = validate({"data": {"source": "folder", "folder": {"path": "src"}}}).data
    dl.download(params, Path("raw"), Path("archives"), progress=False)
    assert _files(tmp_path / "raw") == {
        "images/a.jpg",
        "annotations/trimaps/a.png",
        *(f"annotations/{name}" for name in dl.LIST_FILES),
    }


def test_folder_missing_annotations_names_the_path(pets_sample: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    params = validate({"data": {"source": "folder", "folder": {"path": str(src)}}}).data
    with pytest.raises(DataError) as err:
        dl.download(params, tmp_path / "raw", tmp_path / "archives", progress=False)
    assert str(src / "annotations" / "trimaps") in str(err.value)
    assert str(src / "annotations" / "list.txt") in str(err.value)
    assert "data.folder.path" in str(err.value)
    assert not (tmp_path / "raw").exists()


def test_folder_that_does_not_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = validate({"data": {"source": "folder", "folder": {"path": "nowhere"}}}).data
    with pytest.raises(DataError, match="data.folder.path = 'nowhere'") as err:
        dl.download(params, Path("raw"), Path("archives"), progress=False)
    assert str(tmp_path / "nowhere") in str(err.value) and "working directory" in str(err.value)


def test_folder_inside_the_output_is_refused(pets_sample: Path, tmp_path: Path) -> None:
    params = validate({"data": {"source": "folder", "folder": {"path": str(pets_sample)}}}).data
    with pytest.raises(DataError, match="inside the output"):
        dl.download(params, pets_sample.parent, tmp_path, progress=False)


def test_synthetic_source_is_written_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def generate(out_dir: Path, params: object, progress: bool = True) -> None:
        calls.append((params, progress))
        (out_dir / "images").mkdir()
        (out_dir / "images" / "x.jpg").write_bytes(b"x")
        if len(calls) == 2:
            raise RuntimeError("generator failed half-way")

    fake = types.ModuleType("petseg.data.synthetic")
    fake.generate = generate  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "petseg.data.synthetic", fake)
    params = validate({"data": {"source": "synthetic", "synthetic": {"seed": 3}}}).data
    dl.download(params, tmp_path / "raw", tmp_path / "archives", progress=False)
    assert calls == [(params.synthetic, False)]
    assert _files(tmp_path / "raw") == {"images/x.jpg"}

    with pytest.raises(RuntimeError):
        dl.download(params, tmp_path / "other", tmp_path / "archives", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_synthetic_source_writes_the_layout(tmp_path: Path) -> None:
    pytest.importorskip("petseg.data.synthetic", reason="petseg.data.synthetic is not written yet")
    section = {"n_trainval": 2, "n_test": 1, "n_breeds": 1, "min_size": 32, "max_size": 48}
    params = validate({"data": {"source": "synthetic", "synthetic": section}}).data
    dl.download(params, tmp_path / "raw", tmp_path / "archives", progress=False)
    assert dl.missing_layout(tmp_path / "raw") == []
    assert len(list((tmp_path / "raw" / "images").glob("*.jpg"))) == 3


# ---------------------------------------------------------------------------------- stage CLI
def _run_stage(tmp_path: Path, params_text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "params.yaml").write_text(params_text)
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    cmd = [sys.executable, str(ROOT / "stages" / "download.py"), "--params", "params.yaml"]
    cmd += ["--out", "data/raw", "--archives", "data/archives"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def _error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in proc.stderr
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def test_stage_cli_bad_params_key(tmp_path: Path) -> None:
    proc = _run_stage(tmp_path, "data:\n  oxford:\n    mirrors: []\n")
    assert proc.returncode == 2
    [line] = _error_lines(proc)
    assert "unknown key data.oxford.mirrors" in line
    assert not (tmp_path / "data").exists()


def test_stage_cli_unreachable_mirror(tmp_path: Path, closed_url: str) -> None:
    proc = _run_stage(
        tmp_path, f"data:\n  oxford:\n    base_urls: [{closed_url}]\n    retries: 0\n"
    )
    assert proc.returncode == 2
    [line] = _error_lines(proc)
    assert "could not be reached" in line and "data.oxford.archives_dir" in line
    assert not (tmp_path / "data" / "raw").exists()
    assert list((tmp_path / "data").glob(".raw*")) == []
