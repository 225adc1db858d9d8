"""STOmics Stereo-seq reader: GEM text files and square-bin or cell-bin GEF (HDF5) files, in bounded memory.

spatialdata-io's reader needs the whole SAW output tree, reads no GEM and expands bin1 in Python; this reads a single
GEM or GEF file (or a folder holding one) and sums its DNB-level counts into square bins of any size while streaming,
so memory grows with the number of non-zero (bin, gene) pairs, not with the number of lines.
"""

from __future__ import annotations

from sd_inspire.io._stereoseq._reader import stereoseq

__all__ = ["stereoseq"]
