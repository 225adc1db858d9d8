"""The package logger: ``logging.getLogger("sd_inspire")``.

Messages at INFO level are milestones (a step starting, the time it took); at HINT level (15, between DEBUG and
INFO) every key a function writes. They propagate to the root logger: importing the package adds no handler, so an
application's logging configuration decides where they go. :data:`sd_inspire.settings` sets the level (and, when
logging is not configured, adds a handler on request).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Level of the messages that name each key written (scanpy's "hint" verbosity).
HINT = 15
logging.addLevelName(HINT, "HINT")

logger = logging.getLogger("sd_inspire")


@contextmanager
def timed(message: str) -> Iterator[None]:
    """Log ``message`` at the start and the elapsed time at the end of a block."""
    logger.info("%s ...", message)
    start = time.perf_counter()
    yield
    logger.info("%s: done in %.2f s", message, time.perf_counter() - start)


def log_added(where: str, key: str) -> None:
    """Log that ``where[key]`` was written, e.g. ``log_added("obsm", "X_inspire")``."""
    logger.log(HINT, "Adding `adata.%s[%r]`", where, key)


@contextmanager
def quiet(name: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the level of another package's logger inside a block (e.g. squidpy's per-call INFO lines)."""
    other = logging.getLogger(name)
    previous = other.level
    other.setLevel(level)
    try:
        yield
    finally:
        other.setLevel(previous)
