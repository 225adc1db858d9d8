"""Example data: simulated multi-slice tissues with ground truth."""

from __future__ import annotations

from sd_inspire.datasets._simulate import TECHNOLOGY_PRESETS, simulate

__all__ = ["TECHNOLOGY_PRESETS", "simulate"]
