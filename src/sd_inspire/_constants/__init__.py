"""Keys, file names and enumerations shared across sd-inspire."""

from __future__ import annotations

from sd_inspire._constants._constants import Key, Technology, VisiumFile

__all__ = ["Key", "Technology", "VisiumFile"]
