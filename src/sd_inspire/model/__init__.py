"""The INSPIRE model: torch module, minibatch data, trainer and the user-facing :class:`InspireModel`.

Importing :mod:`sd_inspire` does not import this package's torch code: it loads on first attribute access
(the numpy functions of the count model, :func:`expected_shares`, :func:`slice_programs` and
:func:`refine_factors`, need no torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sd_inspire.model._counts import expected_shares, slice_programs
    from sd_inspire.model._model import InspireModel
    from sd_inspire.model._posterior import refine_factors

_LAZY_IMPORTS = {
    "InspireModel": "sd_inspire.model._model",
    "expected_shares": "sd_inspire.model._counts",
    "slice_programs": "sd_inspire.model._counts",
    "refine_factors": "sd_inspire.model._posterior",
}

__all__ = ["InspireModel", "expected_shares", "refine_factors", "slice_programs"]


def __getattr__(name: str) -> Any:
    if name in _LAZY_IMPORTS:
        return getattr(importlib.import_module(_LAZY_IMPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
