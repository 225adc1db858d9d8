"""Preprocessing: combine slices, quality control, gene space and normalisation."""

from __future__ import annotations

from sd_inspire.pp._concat import concat
from sd_inspire.pp._preprocess import preprocess

__all__ = ["concat", "preprocess"]
