"""The ``download`` stage: write the official Oxford-IIIT Pet layout into ``data/raw``.

Every source produces the same layout, so everything downstream is source-blind::

    images/NAME.jpg
    annotations/trimaps/NAME.png
    annotations/{list,trainval,test}.txt

Sources (``data.source``):

- ``oxford-iiit-pet``: the two official archives, downloaded into a cache folder (resumable,
  retried, MD5-verified, tried mirror by mirror) or taken from ``data.oxford.archives_dir``
  without network, then extracted with a member check that rejects anything that would land
  outside the output.
- ``folder``: an already-extracted dataset at ``data.folder.path``, linked or copied.
- ``synthetic``: the seeded generator in :mod:`petseg.data.synthetic` (offline demo and CI).
- ``coco``: your own images and COCO instance masks (``data.coco``), converted by
  :mod:`petseg.data.coco_source`.

``out_dir`` is written through :func:`petseg.fileio.atomic_dir`: a failure leaves no half-written
folder behind, which matters because DVC would otherwise happily hash a partial dataset.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import re
import tarfile
import time
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import requests
import urllib3
from tqdm import tqdm

from petseg.config import DataParams, OxfordParams
from petseg.errors import DataError, DiskFullError, DownloadError
from petseg.fileio import DISK_FULL, atomic_dir, link_or_copy, sweep_temporaries

log = logging.getLogger(__name__)

IMAGES = "images.tar.gz"
ANNOTATIONS = "annotations.tar.gz"
LIST_FILES = ("list.txt", "trainval.txt", "test.txt")
# Relative paths every source must produce (and a folder source must already have).
LAYOUT = ("images", "annotations/trimaps", *(f"annotations/{name}" for name in LIST_FILES))

CHUNK = 1 << 20
# Seconds slept before retry n is BACKOFF_S * n: short, the point is to outlast a hiccup.
BACKOFF_S = 0.5
# Statuses a later attempt may well not see again; any other error status skips to the next mirror.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Everything a dropped or refused connection raises, from connect to the middle of the body.
TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)
OFFLINE_ADVICE = (
    f"To proceed without these mirrors, download {IMAGES} and {ANNOTATIONS} by other means into "
    "one folder and set data.oxford.archives_dir to it, or run the offline demo on generated data "
    "with data.source: synthetic (make demo)."
)


def download(params: DataParams, out_dir: Path, archives_dir: Path, progress: bool = True) -> None:
    """Write the dataset chosen by ``params.source`` into ``out_dir`` in the official layout.

    ``archives_dir`` is the download cache of the official archives (kept between runs so that a
    rerun neither downloads again nor loses a partial download; it is not a DVC out). Relative
    paths, here and in ``data.folder.path`` / ``data.oxford.archives_dir`` / ``data.coco``, are
    relative to the current working directory: DVC runs stages from the repository root.
    """
    out_dir, archives_dir = Path(out_dir), Path(archives_dir)
    sweep_temporaries(out_dir)  # a killed run's half-written copy: its room is needed now
    if params.source == "synthetic":
        # Imported lazily: the other sources must not depend on the generator's imports.
        from petseg.data.synthetic import generate

        with atomic_dir(out_dir) as tmp:
            generate(tmp, params.synthetic, progress=progress)
    elif params.source == "folder":
        src = check_folder(Path(str(params.folder.path)), out_dir)
        with atomic_dir(out_dir) as tmp:
            n = copy_layout(src, tmp)
        log.info("linked or copied %d files from %s into %s", n, src, out_dir)
    elif params.source == "coco":
        from petseg.data.coco_source import convert, plan

        items = plan(params.coco, out_dir)  # every check that needs no image decoded, first
        with atomic_dir(out_dir) as tmp:
            convert(items, tmp, params.coco.border_px, progress=progress)
        n_test = sum(item.split == "test" for item in items)
        log.info(
            "converted %d images (%d trainval, %d test) from %s into %s",
            len(items),
            len(items) - n_test,
            n_test,
            params.coco.annotations,
            out_dir,
        )
    else:
        # Both archives are fetched and verified before anything is extracted.
        archives = official_archives(params.oxford, archives_dir, progress)
        with atomic_dir(out_dir) as tmp:
            for archive in archives:
                log.info("extracting %s", archive)
                safe_extract(archive, tmp)
            missing = missing_layout(tmp)
            if missing:
                raise DownloadError(
                    f"the archives {', '.join(str(a) for a in archives)} do not hold the official "
                    f"layout: missing {', '.join(missing)} (check data.oxford.base_urls)"
                )
        log.info("extracted %s into %s", ", ".join(a.name for a in archives), out_dir)


# ------------------------------------------------------------------------------------- folder
def missing_layout(root: Path) -> list[str]:
    """The entries of :data:`LAYOUT` absent under ``root`` (empty when the layout is complete)."""
    return [
        rel
        for rel in LAYOUT
        if not ((root / rel).is_file() if rel.endswith(".txt") else (root / rel).is_dir())
    ]


def check_folder(src: Path, out_dir: Path) -> Path:
    """Check that ``src`` (``data.folder.path``) holds the official layout; return it resolved."""
    if not src.is_dir():
        raise DataError(
            f"data.folder.path = {str(src)!r}: folder {src.resolve()} not found (a relative path "
            "is relative to the working directory; DVC runs stages from the repository root)"
        )
    missing = missing_layout(src)
    if missing:
        paths = ", ".join(str(src / rel) for rel in missing)
        raise DataError(
            f"data.folder.path = {str(src)!r} is not an extracted Oxford-IIIT Pet dataset: missing "
            f"{paths} (expected images/*.jpg, annotations/trimaps/*.png and "
            f"annotations/{{{','.join(LIST_FILES)}}})"
        )
    src, out = src.resolve(), out_dir.resolve()
    # The output replaces out_dir as a whole: a source inside it would be deleted with it.
    if src == out or out in src.parents:
        raise DataError(
            f"data.folder.path = {str(src)!r} lies inside the output {out_dir}; "
            "point it at a folder outside the stage's output"
        )
    return src


def _is_junk(name: str) -> bool:
    """macOS AppleDouble files (``._NAME.png`` beside every trimap in the official archive)."""
    parts = PurePosixPath(name).parts
    return bool(parts) and (parts[-1].startswith("._") or "__MACOSX" in parts)


def copy_layout(src: Path, dest: Path) -> int:
    """Link (same filesystem) or copy the layout's files from ``src`` into ``dest``; return count.

    Only what the pipeline reads is taken: ``images/*.jpg``, ``annotations/trimaps/*.png`` and
    the three list files, never AppleDouble junk. The files are never modified afterwards, so a
    hard link shares the data safely.
    """
    groups = (
        ("images", sorted((src / "images").glob("*.jpg"))),
        ("annotations/trimaps", sorted((src / "annotations" / "trimaps").glob("*.png"))),
        ("annotations", [src / "annotations" / name for name in LIST_FILES]),
    )
    if not groups[0][1]:
        raise DataError(f"data.folder.path = {str(src)!r}: {src / 'images'} holds no .jpg file")
    n = 0
    for rel, files in groups:
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for path in files:
            if not _is_junk(path.name):
                _take(path, dest / rel / path.name)
                n += 1
    return n


def _take(path: Path, dest: Path) -> None:
    """Link or copy one file of the layout; anything but a readable regular file is an error."""
    why = "a folder" if path.is_dir() else None if path.is_file() else "a broken link"
    if why is None:
        try:
            link_or_copy(path, dest)
            return
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise
            why = exc.strerror or type(exc).__name__
    raise DataError(
        f"data.folder.path: cannot take {path} ({why}); replace it by a regular file or remove it "
        "(and its line in the list files)"
    )


# ---------------------------------------------------------------------------------- archives
def official_archives(
    params: OxfordParams, archives_dir: Path, progress: bool = True
) -> list[Path]:
    """The verified ``images.tar.gz`` and ``annotations.tar.gz``: local, cached or downloaded."""
    wanted = (
        (IMAGES, params.images_md5, "data.oxford.images_md5"),
        (ANNOTATIONS, params.annotations_md5, "data.oxford.annotations_md5"),
    )
    if params.archives_dir is not None:
        local = Path(params.archives_dir)
        paths = [local / name for name, _, _ in wanted]
        for path in paths:  # all present before hashing hundreds of megabytes
            if not path.is_file():
                raise DownloadError(
                    f"{path} not found: data.oxford.archives_dir = {params.archives_dir!r} must "
                    f"hold {IMAGES} and {ANNOTATIONS} (or set it to null to download them)"
                )
        for path, (_, md5, key) in zip(paths, wanted, strict=True):
            actual = md5sum(path)
            if actual != md5:
                raise DownloadError(
                    f"{path}: MD5 {actual} does not match {key} = {md5}; the file is damaged or "
                    f"not the official archive (data.oxford.archives_dir = {params.archives_dir!r})"
                )
        return paths
    return [
        fetch(
            mirror_urls(params.base_urls, name),
            archives_dir / name,
            md5,
            timeout_s=params.timeout_s,
            retries=params.retries,
            progress=progress,
            md5_key=key,
            advice=OFFLINE_ADVICE,
        )
        for name, md5, key in wanted
    ]


def mirror_urls(base_urls: Iterable[str], name: str) -> list[str]:
    """``base_url + name`` for each mirror; a base URL without its trailing slash is fine too."""
    return [(base if base.endswith("/") else base + "/") + name for base in base_urls]


def md5sum(path: Path) -> str:
    """Hex MD5 of a file, read in chunks (the images archive is ~800 MB).

    MD5 because that is what the dataset's authors publish; it guards against truncated or
    damaged downloads and a mirror serving something else, not against an attacker.
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _Transient(Exception):
    """A failure a later attempt at the same mirror may not see (dropped connection, 503)."""


class _MirrorFailed(Exception):
    """This mirror cannot serve the file (404, retries used up): try the next one."""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _reason(exc: BaseException) -> str:
    """A short human reason from requests' nested exception messages."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    short = re.search(r"IncompleteRead\(\d+ bytes read, (\d+) more expected\)", text)
    if short:
        return f"connection closed with {short.group(1)} bytes still to come"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return f"{type(exc).__name__}: {text}"[:300]


def fetch(
    urls: Sequence[str],
    dest: Path,
    md5: str,
    *,
    timeout_s: float = 60.0,
    retries: int = 5,
    progress: bool = True,
    md5_key: str = "md5",
    advice: str = "",
) -> Path:
    """Download ``dest`` from the first of ``urls`` that serves it, resuming, and verify its MD5.

    Why each step:

    - A complete file whose MD5 matches is returned at once: the archives are a cache.
    - Bytes go to ``dest.part`` first, so ``dest`` exists only once verified; a ``.part`` left by
      an interrupted run is resumed with ``Range: bytes=K-`` (206 appends; a server ignoring Range
      answers 200 and the file starts over; 416 means it is complete already).
    - A dropped connection or a short body (fewer bytes than Content-Length) is retried from what
      is on disk after ``BACKOFF_S * n`` seconds; ``retries`` bounds the consecutive attempts that
      add no byte, so a slow but steady link still finishes. Then the next mirror takes over.
    - A wrong MD5 deletes the file (resuming a bad file would never heal it): a mirror that
      answers 200 with other bytes (a captive portal, an HTML error page, a stale copy) is a
      failed mirror, and the next one is tried. A resumed file that fails is fetched once more
      from its first byte, as the bytes kept from before may be the wrong ones.
    - When every mirror fails, one :class:`DownloadError` lists why, then ``advice``; nothing is
      extracted by the caller.
    """
    dest = Path(dest)
    if dest.is_file():
        if md5sum(dest) == md5:
            log.info("%s already downloaded and verified", dest)
            return dest
        log.warning("%s does not match %s = %s: downloading it again", dest, md5_key, md5)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures, wrong = [], []
    for url in urls:
        try:
            actual = _fetch_checked(url, part, md5, timeout_s, retries, progress)
        except _MirrorFailed as exc:
            failures.append(f"{url}: {exc}")
            continue
        if actual is None:
            os.replace(part, dest)
            return dest
        failures.append(f"{url}: served a file with MD5 {actual}")
        wrong.append(url)
    raise DownloadError(_failed_message(dest, part, md5, md5_key, failures, len(wrong), advice))


def _fetch_checked(
    url: str, part: Path, md5: str, timeout_s: float, retries: int, progress: bool
) -> str | None:
    """Complete ``part`` from ``url`` and check it: None if its MD5 is ``md5``, else that MD5
    (the file is deleted)."""
    resumed = _size(part) > 0
    _fetch_from(url, part, timeout_s, retries, progress)
    actual = md5sum(part)
    if actual != md5 and resumed:
        log.warning(
            "%s: the resumed file has MD5 %s: fetching it again from the start", url, actual
        )
        part.unlink()
        _fetch_from(url, part, timeout_s, retries, progress)
        actual = md5sum(part)
    if actual == md5:
        return None
    part.unlink()
    return actual


def _failed_message(
    dest: Path,
    part: Path,
    md5: str,
    md5_key: str,
    failures: list[str],
    n_wrong: int,
    advice: str,
) -> str:
    """Why no mirror served ``dest`` (``n_wrong`` of them served other bytes), and what to do."""
    if failures and n_wrong == len(failures):
        return (
            f"could not download {dest.name}: every mirror served a file whose MD5 is not "
            f"{md5_key} = {md5} ({'; '.join(failures)}); nothing was kept or extracted. If the "
            f"official archive has changed, correct {md5_key}; otherwise replace these mirrors in "
            f"data.oxford.base_urls. {advice}".rstrip()
        )
    kept = f" The partial download {part} is kept and will be resumed." if _size(part) else ""
    return (
        f"could not download {dest.name}: the mirrors could not be reached or did not serve it "
        f"({'; '.join(failures)}).{kept} {advice}".rstrip()
    )


def _fetch_from(url: str, part: Path, timeout_s: float, retries: int, progress: bool) -> None:
    """Complete ``part`` from ``url``, retrying transient failures, else :class:`_MirrorFailed`."""
    failures = 0
    while True:
        before = _size(part)
        try:
            _get_once(url, part, timeout_s, progress)
            return
        except _Transient as exc:
            failures = 1 if _size(part) > before else failures + 1
            if failures > retries:
                tries = f"{failures} attempt{'s' if failures > 1 else ''}"
                raise _MirrorFailed(f"{exc} ({tries})") from None
            delay = BACKOFF_S * failures
            log.warning("%s: %s; retry %d/%d in %.1f s", url, exc, failures, retries, delay)
            time.sleep(delay)


def _write(fh: BinaryIO, chunk: bytes, part: Path) -> None:
    try:
        fh.write(chunk)
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        raise DiskFullError(
            f"{part}: {os.strerror(exc.errno)} after {_size(part)} bytes; the partial download is "
            "kept and resumed by the next run: free space on its disk (or set "
            "data.oxford.archives_dir to archives stored elsewhere) and run again"
        ) from None


def _get_once(url: str, part: Path, timeout_s: float, progress: bool) -> None:
    """One GET that appends to (206) or rewrites (200) ``part``; :class:`_Transient` if cut."""
    have = _size(part)
    # identity: the bytes on disk must be the archive itself, never a transparently gunzipped body.
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    expected = None
    try:
        with requests.get(url, headers=headers, stream=True, timeout=timeout_s) as resp:
            status = resp.status_code
            if status == 416 and have:
                log.info("%s: already complete on disk (%d bytes)", part, have)
                return
            if status == 206 and have:
                start = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
                if start and int(start.group(1)) != have:
                    part.unlink()
                    raise _Transient(f"asked for bytes {have}- but got {start.group(1)}-")
                mode = "ab"
            elif status == 200:
                if have:
                    log.info("%s ignores Range: downloading from the start", url)
                have, mode = 0, "wb"
            elif status in TRANSIENT_STATUS:
                raise _Transient(f"HTTP {status} {resp.reason}")
            else:
                raise _MirrorFailed(f"HTTP {status} {resp.reason}")
            length = resp.headers.get("Content-Length", "")
            expected = have + int(length) if length.isdigit() else None
            name = part.name.removesuffix(".part")
            bar = tqdm(
                total=expected,
                initial=have,
                desc=name,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=None if progress else True,  # None: quiet when not on a terminal
            )
            with part.open(mode) as fh, bar:
                # raw bytes, undecoded; read() without decoding never buffers what it read, so
                # every byte received before a cut is on disk and the resume asks for the rest.
                for chunk in resp.raw.stream(CHUNK, decode_content=False):
                    _write(fh, chunk, part)
                    bar.update(len(chunk))
    except TRANSIENT_ERRORS as exc:
        raise _Transient(_reason(exc)) from exc
    except requests.RequestException as exc:  # invalid URL and the like: no retry helps
        raise _MirrorFailed(_reason(exc)) from exc
    got = _size(part)
    if expected is not None and got < expected:
        raise _Transient(f"connection closed after {got} of {expected} bytes")


# -------------------------------------------------------------------------------- extraction
def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def check_member(member: tarfile.TarInfo, dest: Path, symlinks: set[str]) -> str | None:
    """Why ``member`` must not be extracted into ``dest`` (None when it is safe).

    Lexical checks that do not depend on what is already on disk: an absolute name, a ``..``
    component, a path through a symlink of the archive, a symlink or hard link whose target lies
    outside ``dest``, and device files or FIFOs (a dataset has no use for them).
    """
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in parts or ".." in name.split("\\"):
        return "'..' in the path"
    if any("/".join(parts[:i]) in symlinks for i in range(1, len(parts))):
        return "path through a symbolic link"
    if member.ischr() or member.isblk() or member.isfifo():
        return "device file or FIFO"
    root = os.path.normpath(os.path.abspath(dest))
    if member.issym():
        target = os.path.normpath(os.path.join(root, os.path.dirname(name), member.linkname))
        if member.linkname.startswith("/") or not _inside(root, target):
            return f"symbolic link to {member.linkname!r} outside the destination"
    if member.islnk():
        target = os.path.normpath(os.path.join(root, member.linkname))
        if member.linkname.startswith("/") or not _inside(root, target):
            return f"hard link to {member.linkname!r} outside the destination"
    return None


def safe_extract(archive: Path, dest: Path) -> int:
    """Extract ``archive`` into ``dest`` after checking every member; return members extracted.

    A downloaded archive is untrusted input: one member named ``../../.bashrc`` or a symlink to
    ``/etc`` would write outside the dataset. All members are checked with :func:`check_member`
    before the first byte is written; ``filter="data"`` then repeats the checks against the real
    filesystem as a second line of defence. AppleDouble ``._*`` junk is skipped.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            symlinks: set[str] = set()
            for member in members:
                why = check_member(member, dest, symlinks)
                if why:
                    raise DownloadError(
                        f"{archive}: refusing to extract member {member.name!r} ({why}); "
                        "nothing was extracted from this archive"
                    )
                if member.issym():
                    symlinks.add("/".join(PurePosixPath(member.name).parts))
            keep = [m for m in members if not _is_junk(m.name)]
            tar.extractall(dest, members=keep, filter="data")
    except tarfile.FilterError as exc:
        raise DownloadError(f"{archive}: refusing to extract ({exc})") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DownloadError(
            f"{archive}: not a readable .tar.gz ({exc}); delete it and run again"
        ) from None
    return len(keep)
