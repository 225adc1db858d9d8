"""The INSPIRE model: torch module, minibatch data, trainer and the user-facing :class:`InspireModel`.

Importing :mod:`sd_inspire` does not import this package's torch code: it loads on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sd_inspire.model._model import InspireModel

_LAZY_IMPORTS = {"InspireModel": "sd_inspire.model._model"}

__all__ = ["InspireModel"]


def __getattr__(name: str) -> Any:
    if name in _LAZY_IMPORTS:
        return getattr(importlib.import_module(_LAZY_IMPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
