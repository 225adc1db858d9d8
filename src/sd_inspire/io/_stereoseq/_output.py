"""Building the SpatialData of a Stereo-seq file: units, metadata in ``uns`` and the shared builder."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from sd_inspire._constants import Key, StereoseqFile, Technology

if TYPE_CHECKING:
    from pathlib import Path

    import geopandas as gpd
    import numpy as np
    import pandas as pd
    from scipy import sparse
    from spatialdata import SpatialData

#: Pitch of the Stereo-seq DNB lattice in µm: coordinates are in DNB units, 0.5 µm apart (bin50 = 25 µm).
MICRONS_PER_DNB = 0.5


class _Parsed(NamedTuple):
    """What a reader takes from a Stereo-seq file, for :func:`_build`."""

    counts: sparse.csr_matrix
    obs_names: np.ndarray
    var_names: list[str]
    coords: np.ndarray
    var: pd.DataFrame | None
    file_format: str
    gene_key: str
    metadata: dict[str, object]
    bin_size: int | None  # None: segmented cells
    obs: pd.DataFrame | None = None
    polygons: gpd.GeoDataFrame | None = None


def _build(parsed: _Parsed, *, dataset_id: str, file: Path) -> SpatialData:
    """The SpatialData of a file read by any reader: units and the file's metadata in ``uns``, one shapes element."""
    from sd_inspire.io._build import build_spatialdata

    S = StereoseqFile
    bin_size, polygons = parsed.bin_size, parsed.polygons
    uns: dict[str, object] = {Key.MICRONS_PER_PIXEL: MICRONS_PER_DNB}
    if bin_size is not None:
        uns[S.BIN_SIZE] = bin_size
    uns[Technology.STEREOSEQ] = {
        str(S.FILE_FORMAT): parsed.file_format,
        str(S.GENE_KEY): str(parsed.gene_key),
        str(S.METADATA): parsed.metadata,
    }
    return build_spatialdata(
        parsed.counts,
        obs_names=parsed.obs_names,
        var_names=parsed.var_names,
        coords=parsed.coords,
        dataset_id=dataset_id,
        technology=Technology.STEREOSEQ,
        shape="square" if polygons is None and bin_size is not None else "circle",
        size=float(bin_size) if bin_size is not None else None,
        polygons=polygons,
        obs=parsed.obs,
        var=parsed.var,
        uns={str(k): v for k, v in uns.items()},
        source=str(file),
        reader="sd_inspire.io.stereoseq",
    )
