"""Preprocessing: combine slices, quality control, gene space and normalisation."""

from __future__ import annotations

from sd_inspire.pp._concat import concat, split
from sd_inspire.pp._preprocess import preprocess
from sd_inspire.pp._reset import reset_counts

__all__ = ["concat", "preprocess", "reset_counts", "split"]
