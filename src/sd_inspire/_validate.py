"""Argument checks shared by the public functions: one message per kind of mistake, naming the argument."""

from __future__ import annotations

import math
import numbers
from typing import Any


def check_integer(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) within ``[minimum, maximum]``; else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be an integer, got {value!r}.")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = (
            f"between {minimum} and {maximum}"
            if minimum is not None and maximum is not None
            else (f"at least {minimum}" if minimum is not None else f"at most {maximum}")
        )
        raise ValueError(f"`{name}` must be {bounds}, got {value}.")
    return value


def check_number(value: Any, name: str, *, minimum: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite ``float`` (not a bool), ``> 0`` if ``positive``, ``>= minimum``; else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    value = float(value)
    if positive and value <= 0:
        raise ValueError(f"`{name}` must be positive, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value!r}.")
    return value
