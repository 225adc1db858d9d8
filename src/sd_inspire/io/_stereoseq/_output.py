"""Building the SpatialData of a Stereo-seq file: units, metadata in ``uns`` and the shared builder."""

from __future__ import annotations

from typing import TYPE_CHECKING

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


def _build(
    counts: sparse.csr_matrix,
    *,
    obs_names: np.ndarray,
    var_names: list[str],
    coords: np.ndarray,
    dataset_id: str,
    file: Path,
    bin_size: int | None,
    var: pd.DataFrame | None,
    file_format: str,
    gene_key: str,
    metadata: dict[str, object],
    obs: pd.DataFrame | None = None,
    polygons: gpd.GeoDataFrame | None = None,
) -> SpatialData:
    from sd_inspire.io._build import build_spatialdata

    S = StereoseqFile
    uns: dict[str, object] = {Key.MICRONS_PER_PIXEL: MICRONS_PER_DNB}
    if bin_size is not None:
        uns[S.BIN_SIZE] = bin_size
    uns[Technology.STEREOSEQ] = {
        str(S.FILE_FORMAT): file_format,
        str(S.GENE_KEY): str(gene_key),
        str(S.METADATA): metadata,
    }
    return build_spatialdata(
        counts,
        obs_names=obs_names,
        var_names=var_names,
        coords=coords,
        dataset_id=dataset_id,
        technology=Technology.STEREOSEQ,
        shape="square" if polygons is None and bin_size is not None else "circle",
        size=float(bin_size) if bin_size is not None else None,
        polygons=polygons,
        obs=obs,
        var=var,
        uns={str(k): v for k, v in uns.items()},
        source=str(file),
        reader="sd_inspire.io.stereoseq",
    )
