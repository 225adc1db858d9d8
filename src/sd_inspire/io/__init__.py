"""Readers of vendor outputs into SpatialData, and zarr stores read and written."""

from __future__ import annotations

from sd_inspire.io._merfish import merfish
from sd_inspire.io._read import read
from sd_inspire.io._slideseq import slideseq
from sd_inspire.io._stereoseq import stereoseq
from sd_inspire.io._store import write_zarr
from sd_inspire.io._visium import visium
from sd_inspire.io._zarr import read_zarr

__all__ = ["merfish", "read", "read_zarr", "slideseq", "stereoseq", "visium", "write_zarr"]
