"""``sd_inspire.settings``: how much the package says, as scanpy's ``sc.settings`` does."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from enum import IntEnum
from typing import TYPE_CHECKING

from sd_inspire._logging import HINT, logger

if TYPE_CHECKING:
    from collections.abc import Iterator


class Verbosity(IntEnum):
    """How much the package logs: errors only, warnings, milestones, every key written, everything."""

    error = 0
    warning = 1
    info = 2
    hint = 3
    debug = 4


_LEVELS = {
    Verbosity.error: logging.ERROR,
    Verbosity.warning: logging.WARNING,
    Verbosity.info: logging.INFO,
    Verbosity.hint: HINT,
    Verbosity.debug: logging.DEBUG,
}


class Settings:
    """Package-wide settings: ``import sd_inspire as si; si.settings.verbosity = "hint"``.

    Messages go to the standard :mod:`logging` logger ``"sd_inspire"`` and propagate to the root logger, so an
    application's own logging configuration (``logging.basicConfig``, a file handler) receives them; importing the
    package adds no handler. Without any logging configuration Python shows warnings and errors only.
    """

    def __init__(self) -> None:
        #: Whether the functions of :mod:`sd_inspire.pl` show their figure (and return ``None``) when not told by
        #: their ``show`` argument; ``False`` makes them return the figure, e.g. in scripts and tests.
        self.autoshow = True
        self._handler: logging.Handler | None = None
        # a level set on the "sd_inspire" logger before the import is kept (and shown as the verbosity)
        known = {level: v for v, level in _LEVELS.items()}
        self._verbosity = known.get(logger.level, Verbosity.info)
        if logger.level == logging.NOTSET:
            logger.setLevel(_LEVELS[self._verbosity])

    @property
    def verbosity(self) -> Verbosity:
        """How much the package logs (a :class:`Verbosity`; set it with a name or a number).

        ``"error"`` (0), ``"warning"`` (1), ``"info"`` (2, the default: milestones, such as a step starting and the
        time it took), ``"hint"`` (3: also every key written, e.g. ``Adding `adata.obsm['X_inspire']```) or
        ``"debug"`` (4). Setting it sets the level of the ``"sd_inspire"`` logger and, when logging is not
        configured (the root logger has no handler), adds one handler that writes the package's messages to
        stderr, so that they are seen in a notebook or a script; setting ``"warning"`` or ``"error"`` removes it.
        """
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int | str | Verbosity) -> None:
        self._verbosity = _as_verbosity(value)
        logger.setLevel(_LEVELS[self._verbosity])
        wanted = self._verbosity >= Verbosity.info and not logging.getLogger().handlers
        if wanted and self._handler is None:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(levelname)s [sd_inspire] %(message)s"))
            logger.addHandler(handler)
            logger.propagate = False  # the root logger has no handler: nothing is lost, nothing printed twice
            self._handler = handler
        elif not wanted and self._handler is not None:
            logger.removeHandler(self._handler)
            logger.propagate = True
            self._handler = None

    @contextmanager
    def override(self, *, verbosity: int | str | Verbosity) -> Iterator[None]:
        """Change the verbosity inside a ``with`` block; everything is as before after it.

        Examples
        --------
        >>> import sd_inspire as si
        >>> with si.settings.override(verbosity="warning"):
        ...     adata = si.datasets.simulate(2, n_spots=50, n_genes=100, output="anndata")
        """
        state = (self._verbosity, self._handler, logger.level, logger.propagate)
        try:
            self.verbosity = verbosity
            yield
        finally:
            if self._handler is not None and self._handler is not state[1]:
                logger.removeHandler(self._handler)
            self._verbosity, self._handler = state[0], state[1]
            logger.setLevel(state[2])
            logger.propagate = state[3]

    def __repr__(self) -> str:
        return f"sd_inspire.settings(verbosity={self._verbosity.name!r}, autoshow={self.autoshow})"


def _as_verbosity(value: int | str | Verbosity) -> Verbosity:
    if isinstance(value, str):
        try:
            return Verbosity[value.lower()]
        except KeyError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return Verbosity(value)
        except ValueError:
            pass
    names = ", ".join(f"{v.name!r} ({v.value})" for v in Verbosity)
    raise ValueError(f"`verbosity` must be one of {names}, got {value!r}.")


settings = Settings()
