"""Finding the Stereo-seq file behind a path (a file or a folder holding one) and naming its kind."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from sd_inspire._constants import StereoseqFile
from sd_inspire.io._utils import listing

if TYPE_CHECKING:
    from pathlib import Path

_FORMATS = {"gem": "GEM", "gef": "square-bin GEF", "cellbin": "cell-bin GEF"}
_EXPECTED = (
    f"a GEM (*{StereoseqFile.GEM_SUFFIX}, *{StereoseqFile.GEM_SUFFIX}{StereoseqFile.GZIP_SUFFIX}), "
    f"a square-bin GEF (*{StereoseqFile.GEF_SUFFIX}) or a cell-bin GEF (*{StereoseqFile.CELLBIN_GEF_SUFFIX})"
)

_Kind = Literal["gem", "gef", "cellbin"]


def _kind(path: Path) -> _Kind | None:
    name = path.name.lower()
    if name.endswith(StereoseqFile.CELLBIN_GEF_SUFFIX):
        return "cellbin"
    if name.endswith(StereoseqFile.GEF_SUFFIX):
        return "gef"
    if name.endswith((StereoseqFile.GEM_SUFFIX, StereoseqFile.GEM_SUFFIX + StereoseqFile.GZIP_SUFFIX)):
        return "gem"
    return None


def _resolve(path: Path) -> tuple[Path, _Kind]:
    if not path.exists():
        raise FileNotFoundError(f"Stereo-seq input {str(path)!r} does not exist; expected {_EXPECTED}, or a folder.")
    if path.is_dir():
        candidates = sorted(p for p in path.iterdir() if p.is_file() and _kind(p) is not None)
        if not candidates:
            raise FileNotFoundError(
                f"{str(path)!r} holds no Stereo-seq file: expected {_EXPECTED}; found {listing(path)}."
            )
        if len(candidates) > 1:
            raise ValueError(
                f"{str(path)!r} holds {len(candidates)} Stereo-seq files, {[p.name for p in candidates]}: "
                "pass one of them as `path`."
            )
        path = candidates[0]
    kind = _kind(path)
    if kind is None:
        raise ValueError(f"{str(path)!r}: unknown file type; expected {_EXPECTED}.")
    return path, kind
