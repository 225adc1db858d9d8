"""Plotting: spatial maps of every slice, factors, gene programs, training curves, domains and 3D alignment."""

from __future__ import annotations

from sd_inspire.pl._alignment import alignment
from sd_inspire.pl._differential import differential_factors
from sd_inspire.pl._domains import domains
from sd_inspire.pl._factors import factors, loadings
from sd_inspire.pl._history import history
from sd_inspire.pl._spatial import spatial

__all__ = ["alignment", "differential_factors", "domains", "factors", "history", "loadings", "spatial"]
