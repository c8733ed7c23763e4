"""Shared plumbing of the thin stage CLIs in ``stages/``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from petseg.errors import PetsegError

EXIT_USER_ERROR = 2


def run(main: Callable[[], None]) -> None:
    """Call a stage's ``main``; a :class:`PetsegError` becomes one clear line and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except PetsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
