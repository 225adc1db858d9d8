"""Argument checks shared by the public functions: one message per kind of mistake, naming the argument."""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Collection


def is_integer(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or NumPy), not a bool: what :func:`check_integer` accepts."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def _bound(value: int, label: str | None) -> str:
    return f"{label} ({value})" if label else str(value)


def check_integer(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    minimum_label: str | None = None,
    maximum_label: str | None = None,
    optional: bool = False,
    type_error: bool = False,
) -> int | None:
    """``value`` as an ``int`` if it is an integer (not a bool) within ``[minimum, maximum]``; else ``ValueError``.

    ``minimum_label`` and ``maximum_label`` say what a bound is when it is not a constant, e.g. ``"the number of
    spots"``: the message then reads "between 1 and the number of spots (300)". With ``optional``, ``None`` is
    accepted and returned as is. With ``type_error``, a value that is not an integer raises a ``TypeError`` (a value
    outside the bounds still raises a ``ValueError``).
    """
    if optional and value is None:
        return None
    if not is_integer(value):
        kind = "an integer or None" if optional else "an integer"
        raise (TypeError if type_error else ValueError)(f"`{name}` must be {kind}, got {value!r}.")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low, high = _bound(minimum, minimum_label), _bound(maximum, maximum_label)
        bounds = (
            f"between {low} and {high}"
            if minimum is not None and maximum is not None
            else (f"at least {low}" if minimum is not None else f"at most {high}")
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


def check_choice(value: Any, name: str, choices: Collection) -> Any:
    """``value`` if it is one of ``choices``; else a ``ValueError`` that lists them."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")
    return value
