"""Shared plumbing of the thin stage CLIs in ``stages/``: how a stage ends when something fails.

- A fault the user can fix (a :class:`PetsegError`: params, input files, network, disk, the
  tracking store) ends with one line on stderr, ``error: <file or key>: <what is wrong and the
  fix>``, and exit code 2.
- A stop by a signal (Ctrl-C, SIGTERM, SIGHUP) is raised where the process was
  (:class:`~petseg.errors.Stopped`), so temporaries are removed and the MLflow run is marked
  KILLED; the process then ends by that same signal, as if it had not been caught.
- No traceback for either unless asked: ``--debug`` anywhere on a stage's command line, or the
  environment variable ``PETSEG_DEBUG=1``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from petseg.errors import PetsegError, Stopped
from petseg.fileio import disk_full_cause, disk_full_error

EXIT_USER_ERROR = 2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def debug_requested() -> bool:
    """``--debug`` was given (it is taken off ``sys.argv``) or ``PETSEG_DEBUG`` is set."""
    if "--debug" in sys.argv[1:]:
        sys.argv.remove("--debug")
        return True
    return os.environ.get("PETSEG_DEBUG", "") not in ("", "0")


# Stop signals received inside stop_deferred(), raised at its end; None outside it.
_deferred: list[int] | None = None


def _stop(signum: int, frame: FrameType | None) -> None:
    if _deferred is not None and not _deferred:  # the first one waits; a second one does not
        _deferred.append(signum)
        return
    raise Stopped(signum, signal.Signals(signum).name)


@contextlib.contextmanager
def stop_deferred() -> Iterator[None]:
    """A stop signal that arrives inside the block takes effect at its end: for the few
    seconds of work that an exception in the middle would leave unusable (MLflow creating its
    store, a module half imported). A second signal stops at once (a store locked by another
    process may keep the block waiting up to ``tracking.wait_s``). Outside a stage's handlers,
    or off the main thread, the block runs as it is."""
    global _deferred
    if _deferred is not None or threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferred = []
    try:
        yield
    finally:
        pending, _deferred = _deferred, None
    if pending:
        raise Stopped(pending[0], signal.Signals(pending[0]).name)


def stop_on_signals() -> dict[int, Any]:
    """Turn the stop signals into :class:`Stopped`, raised in the main thread; returns the
    handlers they replace.

    Not in forked workers (preprocess, the synthetic generator's pool): the stage's process ends
    them, and a Stopped raised in each would only print their tracebacks.
    """
    previous = {sig: signal.signal(sig, _stop) for sig in STOP_SIGNALS}
    _fork_hook()
    return previous


@functools.cache  # once per process: a hook cannot be unregistered
def _fork_hook() -> None:
    os.register_at_fork(after_in_child=_worker_signals)


def _worker_signals() -> None:
    if signal.getsignal(signal.SIGTERM) is not _stop:  # forked outside a stage's run
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def run(main: Callable[[], None]) -> None:
    """Call a stage's ``main`` and end the process as the module docstring says (called in
    process, as tests do, it leaves the signal handlers as it found them)."""
    debug = debug_requested()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    previous = stop_on_signals()
    try:
        _run(main, debug)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(main: Callable[[], None], debug: bool) -> None:
    try:
        main()
    except PetsegError as exc:
        _fail(str(exc), debug)
    except KeyboardInterrupt as exc:
        _end_by_signal(exc, debug)
    except Exception as exc:
        cause = disk_full_cause(exc)  # a write outside the atomic helpers
        if cause is None:
            raise
        _fail(str(disk_full_error(cause, cause.filename or "a file", removed=False)), debug)


def _fail(message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    line = " ".join(message.split())  # one line, whatever a message embeds (a path, a reason)
    print(f"error: {line}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _end_by_signal(exc: KeyboardInterrupt, debug: bool) -> None:
    signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
    if debug:
        traceback.print_exc()
    name = signal.Signals(signum).name
    print(
        f"stopped by {name}: nothing half-written was kept; run again to continue", file=sys.stderr
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # The caller (a shell, DVC, torchrun) must see the signal, not an ordinary exit status.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    sys.exit(128 + signum)  # only if the signal did not end the process
