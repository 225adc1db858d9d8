"""The package logger: ``logging.getLogger("sd_inspire")``.

Messages at INFO level say what a function starts, which keys it adds and how long it took. Silence them with
``logging.getLogger("sd_inspire").setLevel("WARNING")``.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator


def _make_logger() -> logging.Logger:
    logger = logging.getLogger("sd_inspire")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s [sd_inspire] %(message)s"))
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:  # keep a level the user set before importing us
            logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


logger = _make_logger()


@contextmanager
def timed(message: str) -> Iterator[None]:
    """Log ``message`` at the start and the elapsed time at the end of a block."""
    logger.info("%s ...", message)
    start = time.perf_counter()
    yield
    logger.info("%s: done in %.2f s", message, time.perf_counter() - start)


def log_added(where: str, key: str) -> None:
    """Log that ``where[key]`` was written, e.g. ``log_added("obsm", "X_inspire")``."""
    logger.info("Adding `adata.%s[%r]`", where, key)


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
