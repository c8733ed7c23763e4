"""Errors a user can act on.

Every failure caused by input (params, files, network, disk, the tracking store) raises a subclass
of :class:`PetsegError` whose message names the params key or the file and says what would fix it.
The stage CLIs turn these into one line on stderr and exit code 2 (see :mod:`petseg.cli`); anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PetsegError(Exception):
    """Base of all user-facing errors."""


class ParamsError(PetsegError):
    """params.yaml is malformed: the message names the dotted key, the value, what is allowed."""


class DataError(PetsegError):
    """A dataset file or folder is missing, corrupt or inconsistent."""


class DownloadError(PetsegError):
    """An archive could not be fetched, verified or extracted."""


class DiskFullError(PetsegError):
    """A write failed for lack of space (or a file-size limit); the partial output is gone."""


class TrackingError(PetsegError):
    """The MLflow store is unusable (corrupt, locked for too long, unreachable)."""


class Stopped(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP, raised where the process was so that every ``finally`` and
    temporary-file cleanup runs; a KeyboardInterrupt, so code that handles Ctrl-C handles all."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(name)
        self.signum, self.name = signum, name
