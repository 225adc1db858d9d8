"""Plotting: spatial maps of every slice."""

from __future__ import annotations

from sd_inspire.pl._spatial import spatial

__all__ = ["spatial"]
