"""Spatial graphs: per-slice neighbour graphs (squidpy) and sparse neighbour propagation of features."""

from __future__ import annotations

from sd_inspire.gr._build import spatial_neighbors
from sd_inspire.gr._propagate import propagate

__all__ = ["propagate", "spatial_neighbors"]
