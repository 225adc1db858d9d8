"""Tools: integration of slices and analyses of the integrated space."""

from __future__ import annotations

__all__: list[str] = []
