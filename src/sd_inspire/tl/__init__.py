"""Tools: integration of slices and analyses of the integrated space."""

from __future__ import annotations

from sd_inspire.tl import metrics
from sd_inspire.tl._align import align
from sd_inspire.tl._differential import differential_factors
from sd_inspire.tl._domains import domains
from sd_inspire.tl._impute import impute
from sd_inspire.tl._integrate import integrate
from sd_inspire.tl._map import map_query
from sd_inspire.tl._transfer import transfer_labels

__all__ = ["align", "differential_factors", "domains", "impute", "integrate", "map_query", "metrics", "transfer_labels"]
