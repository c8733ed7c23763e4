"""Atomic writes (a stage that fails leaves no half-written output behind) and file linking.

Every temporary is a hidden sibling of its target, ``.<name>.tmp-<random>``, locked
(``flock``) by the process writing it for as long as it lives. A process killed with SIGKILL
cannot clean up, so each writer first sweeps the unlocked temporaries of its target: the next
run removes what a killed one left, and never what a running one is still writing. A write that
fails for lack of space becomes a :class:`~petseg.errors.DiskFullError` naming the output.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from petseg.errors import DiskFullError

# errno values that mean "no room for this write": a full disk, a quota, a file-size limit.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_ZEROS = 1 << 20  # bytes per write where posix_fallocate is unavailable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------- disk full
def disk_full_cause(exc: BaseException) -> OSError | None:
    """The disk-full OSError behind ``exc`` (itself, or one it was raised from or during)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return exc
        exc = exc.__cause__ or exc.__context__  # torch.save re-raises it as a RuntimeError
    return None


def disk_full_error(cause: OSError, target: str | Path, removed: bool = True) -> DiskFullError:
    """One line naming the output, the reason and the fix."""
    limit = cause.errno == errno.EFBIG
    reason = "a file-size limit (ulimit -f) was reached" if limit else os.strerror(cause.errno)
    where = Path(target).resolve().parent
    kept = "; the partial output was removed" if removed else ""
    return DiskFullError(
        f"{target}: {reason} while writing it{kept}. Free space on the disk holding {where} "
        "(or lift the limit) and run again"
    )


def preallocate(path: str | Path) -> None:
    """Reserve the blocks of ``path`` up to its size, so that writing through a memory map of it
    cannot fail later: a full disk is then an ``OSError`` here, not a SIGBUS mid-write."""
    path = Path(path)
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):  # not on macOS
            try:
                os.posix_fallocate(fd, 0, size)
                return
            except OSError as exc:
                if exc.errno in DISK_FULL:
                    raise
        # No fallocate here (or not for this filesystem): zeros written through the file API.
        for offset in range(0, size, _ZEROS):
            os.pwrite(fd, bytes(min(_ZEROS, size - offset)), offset)
    finally:
        os.close(fd)


# -------------------------------------------------------------------------- temporaries
def _locked(fd: int) -> bool:
    """Take the lock on ``fd``; False if another live process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sweep_temporaries(target: str | Path) -> list[Path]:
    """Remove the temporaries of ``target`` whose writer is gone (killed); return them."""
    target = Path(target)
    swept = []
    for stale in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        try:
            fd = os.open(stale, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _locked(fd):
                _remove(stale)
                swept.append(stale)
        finally:
            os.close(fd)
    return swept


def remove_outputs(*paths: str | Path) -> None:
    """Remove outputs (files or folders) and the temporaries of killed writers of them."""
    for path in map(Path, paths):
        sweep_temporaries(path)
        _remove(path)


@contextlib.contextmanager
def stage_outputs(*paths: str | Path) -> Iterator[None]:
    """Around a stage that writes several outputs: none is left from before, and after a
    failure none is left half-done (outputs exist together, when the stage succeeded)."""
    remove_outputs(*paths)
    try:
        yield
    except BaseException:
        remove_outputs(*paths)
        raise


# -------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``path``; on success it replaces ``path``.

    On any exception the temporary folder is removed and ``path`` is left as it was (DVC removes
    declared outs before a stage runs, so in practice it is absent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    lock = os.open(tmp, os.O_RDONLY)  # held by this process (and its forks) while it writes
    try:
        _locked(lock)
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private (0700); outputs are ordinary
        try:
            yield tmp
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            cause = disk_full_cause(exc)
            if cause is not None:
                raise disk_full_error(cause, path) from exc
            raise
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        os.close(lock)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """An open binary file whose content replaces ``path`` when the block succeeds; on any
    exception ``path`` is left as it was. Lets a writer stream (``torch.save(obj, fh)``) instead
    of building the whole content in memory first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    lock = os.dup(fd)  # the lock outlives the file object, up to the rename
    try:
        _locked(lock)
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        cause = disk_full_cause(exc)
        if cause is not None:
            raise disk_full_error(cause, path) from exc
        raise
    finally:
        os.close(lock)


def create_once(path: str | Path, build: Callable[[Path], None]) -> bool:
    """Create ``path`` whole or not at all, unless it exists: ``build(tmp)`` writes a temporary
    sibling (locked as every temporary is), which is then linked into place, never over a file
    another process created meanwhile. Returns whether this call created ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    tmp = Path(name)
    try:
        _locked(fd)
        try:
            build(tmp)
        except BaseException as exc:
            cause = disk_full_cause(exc)
            if cause is not None:
                raise disk_full_error(cause, path) from exc
            raise
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link ``src`` to ``dst``, or copy it where a link is refused.

    A hard link costs no space and no time; it fails across filesystems (or where the kernel
    forbids linking another user's file), and then a copy does the same job. Only for files that
    are never modified afterwards: a link shares the data.
    """
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
