"""Keys, file names and enumerations shared across sd-inspire."""

from __future__ import annotations

from sd_inspire._constants._constants import Key, MerscopeFile, SlideseqFile, StereoseqFile, Technology, VisiumFile

__all__ = ["Key", "MerscopeFile", "SlideseqFile", "StereoseqFile", "Technology", "VisiumFile"]
