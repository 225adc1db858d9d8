"""Technology detection and dispatch for :func:`sd_inspire.io.read`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sd_inspire._constants import MerscopeFile, SlideseqFile, StereoseqFile, Technology, VisiumFile
from sd_inspire._logging import logger
from sd_inspire.io._utils import listing

if TYPE_CHECKING:
    from collections.abc import Callable

    from spatialdata import SpatialData

#: What each reader looks for, for the error raised when a folder matches none of them.
_EXPECTED = {
    Technology.VISIUM: (
        f"a Space Ranger outs/ folder: {VisiumFile.SPATIAL_DIR}/{VisiumFile.SCALEFACTORS}, "
        f"{VisiumFile.SPATIAL_DIR}/{VisiumFile.POSITIONS_V1} or {VisiumFile.POSITIONS_V2}, and "
        f"{VisiumFile.FILTERED_COUNTS} or {VisiumFile.RAW_MTX_DIR}/"
    ),
    Technology.STEREOSEQ: (
        f"a *{StereoseqFile.GEM_SUFFIX}(.gz), *{StereoseqFile.GEF_SUFFIX} or *{StereoseqFile.CELLBIN_GEF_SUFFIX} file "
        "(or a folder holding one)"
    ),
    Technology.SLIDESEQ: (
        f"{SlideseqFile.BEADS_FOR_R}, {SlideseqFile.BEADS} or {SlideseqFile.BEADS_ALT} with "
        f"{SlideseqFile.DGE_FOR_R}, *{SlideseqFile.DGE_SUFFIX}(.gz), *{SlideseqFile.MTX_SUFFIX}(.gz) or "
        f"*{SlideseqFile.H5AD_SUFFIX}"
    ),
    Technology.MERFISH: f"*{MerscopeFile.CELL_BY_GENE} and *{MerscopeFile.CELL_METADATA}",
}

#: Names accepted by ``technology=`` besides the :class:`~sd_inspire._constants.Technology` values.
_ALIASES = {"merscope": Technology.MERFISH, "vizgen": Technology.MERFISH, "stereo-seq": Technology.STEREOSEQ}


def read(path: str | Path, *, technology: str | None = None, **kwargs: Any) -> SpatialData:
    """Read a vendor output, detecting the technology from the files present.

    The folder (or file) is matched against what each reader expects, in this order:

    - ``"visium"`` (:func:`~sd_inspire.io.visium`): ``spatial/`` with the scale factors and tissue positions, in
      ``path`` or ``path/outs``;
    - ``"stereoseq"`` (:func:`~sd_inspire.io.stereoseq`): a ``.gem``, ``.gem.gz`` or ``.gef`` file, or a folder
      holding one;
    - ``"slideseq"`` (:func:`~sd_inspire.io.slideseq`): a bead locations csv;
    - ``"merfish"`` (:func:`~sd_inspire.io.merfish`): a ``*cell_by_gene.csv`` file.

    Parameters
    ----------
    path
        Folder (or, for Stereo-seq, file) to read.
    technology
        Force a reader: ``"visium"``, ``"stereoseq"``, ``"slideseq"`` or ``"merfish"`` (alias ``"merscope"``).
    kwargs
        Passed on to the reader.

    Returns
    -------
    What the reader returns: a SpatialData with a shapes element and table ``"table"``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If no reader recognises the files (the message lists what each expects and what was found), several do,
        or ``technology`` is unknown.

    Examples
    --------
    The technology is detected from the files present; ``technology=`` forces a reader:

    >>> import sd_inspire as si
    >>> sdata = si.io.read("DLPFC/151673")  # a Space Ranger folder  # doctest: +SKIP
    >>> sdata = si.io.read("run1/sample.gem.gz", technology="stereoseq", bin_size=100)  # doctest: +SKIP

    ``sd-inspire read PATH... -o out.zarr`` does the same from a shell.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist.")
    if technology is None:
        matches = detect_technology(path)
        if not matches:
            expected = "; ".join(f"{t.value}: {what}" for t, what in _EXPECTED.items())
            raise ValueError(
                f"Cannot tell the technology of {str(path)!r}: no reader recognises its files. Expected, per "
                f"reader: {expected}. Found: {listing(path)}."
            )
        if len(matches) > 1:
            raise ValueError(
                f"{str(path)!r} matches several readers ({[t.value for t in matches]}); choose one with `technology=`."
            )
        tech = matches[0]
        logger.info("Detected %s data in %s", tech.value, path)
    else:
        tech = _parse_technology(technology)
    return _readers()[tech](path, **kwargs)


def detect_technology(path: Path) -> list[Technology]:
    """Technologies whose reader recognises the files at ``path`` (a file or a folder), in dispatch order."""
    from sd_inspire.io._merfish import find_merscope_files
    from sd_inspire.io._slideseq import find_bead_file
    from sd_inspire.io._visium import find_outs

    found = []
    if path.is_dir() and find_outs(path) is not None:
        found.append(Technology.VISIUM)
    if _is_stereoseq(path) or (path.is_dir() and any(_is_stereoseq(p) for p in path.iterdir())):
        found.append(Technology.STEREOSEQ)
    if path.is_dir() and find_bead_file(path) is not None:
        found.append(Technology.SLIDESEQ)
    if path.is_dir() and find_merscope_files(path)[0]:
        found.append(Technology.MERFISH)
    return found


def _is_stereoseq(path: Path) -> bool:
    """A GEM (``.gem``, ``.gem.gz``) or GEF (``.gef``, ``.cellbin.gef``) file."""
    return path.is_file() and (StereoseqFile.GEM_SUFFIX in path.suffixes or path.suffix == StereoseqFile.GEF_SUFFIX)


def _parse_technology(technology: str) -> Technology:
    key = str(technology).lower()
    if key in _ALIASES:
        return _ALIASES[key]
    if key in {t.value for t in _EXPECTED}:
        return Technology(key)
    raise ValueError(f"Unknown technology {technology!r}; choose from {[t.value for t in _EXPECTED]}.")


def _readers() -> dict[Technology, Callable[..., SpatialData]]:
    from sd_inspire.io._merfish import merfish
    from sd_inspire.io._slideseq import slideseq
    from sd_inspire.io._stereoseq import stereoseq
    from sd_inspire.io._visium import visium

    return {
        Technology.VISIUM: visium,
        Technology.STEREOSEQ: stereoseq,
        Technology.SLIDESEQ: slideseq,
        Technology.MERFISH: merfish,
    }
