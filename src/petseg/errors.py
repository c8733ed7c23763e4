"""Errors a user can act on.

Every failure caused by input (params, files, network) raises a subclass of :class:`PetsegError`
whose message names the params key or the file and says what would fix it. The stage CLIs turn
these into one line on stderr and a non-zero exit (see :mod:`petseg.cli`); anything else is a bug
and keeps its traceback.
"""


class PetsegError(Exception):
    """Base of all user-facing errors."""


class ParamsError(PetsegError):
    """params.yaml is malformed: the message names the dotted key, the value, what is allowed."""


class DataError(PetsegError):
    """A dataset file or folder is missing, corrupt or inconsistent."""


class DownloadError(PetsegError):
    """An archive could not be fetched, verified or extracted."""
