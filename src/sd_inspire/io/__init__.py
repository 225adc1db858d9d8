"""Readers: vendor outputs to SpatialData."""

from __future__ import annotations

from sd_inspire.io._visium import visium

__all__ = ["visium"]
