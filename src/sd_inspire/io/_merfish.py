"""Vizgen MERSCOPE reader (cell by gene and cell metadata csv files, optional cell boundaries).

Own code rather than :func:`spatialdata_io.merscope`, which requires the images' micron-to-pixel transform file
even when no image is read.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sd_inspire._constants import Key, MerscopeFile, Technology
from sd_inspire._constants._constants import MERFISH_DEFAULT_CELL_DIAMETER_UM
from sd_inspire._logging import logger, timed
from sd_inspire.io._build import build_spatialdata
from sd_inspire.io._utils import examples, listing, match_ids, read_id_table, resolve_file

if TYPE_CHECKING:
    import geopandas as gpd
    from spatialdata import SpatialData


def merfish(
    path: str | Path,
    *,
    dataset_id: str | None = None,
    counts_file: str | Path | None = None,
    metadata_file: str | Path | None = None,
    boundaries: bool = True,
    cell_diameter: float | None = None,
) -> SpatialData:
    r"""Read a Vizgen MERSCOPE output folder: cell by gene counts, cell metadata and, if present, cell boundaries.

    Cells are matched on their ids between the counts and the metadata, whatever the order of the rows; cells
    found in only one file are reported in a warning and left out. Blank codewords (``Blank-*``, or ``Blank.*``
    once the file went through R) are kept out of the gene counts.

    Parameters
    ----------
    path
        Folder holding ``cell_by_gene.csv`` and ``cell_metadata.csv``; the names may carry a common prefix (e.g.
        ``small_cell_by_gene.csv``).
    dataset_id
        Name of the coordinate system and of the shapes element ``"{dataset_id}_shapes"``; by default the folder's
        name.
    counts_file
        The cell by gene csv (cell ids in the first column), as a name inside ``path`` or a path; by default the one
        ``*cell_by_gene.csv`` of the folder.
    metadata_file
        The cell metadata csv (cell ids in the first column, named or not; ``center_x`` and ``center_y`` in µm); by
        default ``*cell_metadata.csv`` with the counts file's prefix.
    boundaries
        Draw the cells from ``cell_boundaries.parquet`` (with the same prefix, or without) when it is present: one
        polygon per cell, from its lowest z-plane. Otherwise, or with ``False``, cells are circles.
    cell_diameter
        Diameter (µm) of the circles; by default that of the sphere with the cell's ``volume`` (10 µm where the
        volume is missing).

    Returns
    -------
    SpatialData with shapes ``"{dataset_id}_shapes"`` (polygons or circles, in µm) and table ``"table"``: raw
    counts of the genes (sparse CSR), ``obs`` with every metadata column (``fov``, ``volume``, ``center_x``,
    ``center_y``, ...) and ``technology = "merfish"``, ``obsm["spatial"]`` (``center_x``, ``center_y``, µm), and
    ``obsm["blank_counts"]``: a DataFrame of the blank codewords' counts (no columns when there are none).

    Raises
    ------
    FileNotFoundError
        If the folder or a file is missing; the message lists what was expected and what was found.
    ValueError
        If a file cannot be parsed (the message names it), cell ids repeat, the counts hold no gene or no cell,
        several candidate files are present, or no cell is in both files.

    Examples
    --------
    A MERSCOPE region folder with the cell-by-gene counts (blank codewords are set aside) and the cell metadata:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import sd_inspire as si
    >>> region = Path(tempfile.mkdtemp()) / "region_0"
    >>> region.mkdir()
    >>> _ = (region / "cell_by_gene.csv").write_text("cell,GeneA,GeneB,Blank-1\n101,3,0,1\n102,1,2,0\n")
    >>> _ = (region / "cell_metadata.csv").write_text(
    ...     ",fov,volume,center_x,center_y\n101,0,800.0,10.0,20.0\n102,0,950.0,30.0,25.0\n"
    ... )
    >>> sdata = si.io.merfish(region)
    >>> sdata["table"].to_df()
         GeneA  GeneB
    101    3.0    0.0
    102    1.0    2.0
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"MERSCOPE folder {str(folder)!r} does not exist or is not a folder.")
    counts_path, metadata_path = _files(folder, counts_file, metadata_file)
    if dataset_id is None:
        dataset_id = folder.resolve().name
    if cell_diameter is not None and cell_diameter <= 0:
        raise ValueError(f"`cell_diameter` must be positive, got {cell_diameter}.")

    with timed(f"Reading MERSCOPE region {dataset_id!r} from {folder}"):
        counts = read_id_table(counts_path, value_dtype=np.float32)
        if counts.empty or counts.shape[1] == 0:
            raise ValueError(f"{counts_path}: no cells or no genes.")
        bad = counts.isna().any(axis=1).to_numpy()
        if bad.any():
            raise ValueError(
                f"{counts_path}: {int(bad.sum())} rows with missing values (e.g. cells {examples(counts.index[bad])})."
            )
        metadata = _read_metadata(metadata_path)
        common = match_ids(
            counts.index, metadata.index, what="cell ids", left_name=counts_path.name, right_name=metadata_path.name
        )
        counts, metadata = counts.loc[common], metadata.loc[common]
        is_blank = counts.columns.str.lower().str.startswith(MerscopeFile.BLANK_PREFIX.lower())
        if is_blank.all():
            raise ValueError(f"{counts_path}: only blank codewords, no gene.")
        genes, blanks = counts.loc[:, ~is_blank], counts.loc[:, is_blank]
        blanks.index = blanks.index.astype(str)
        coords = metadata[[MerscopeFile.X.value, MerscopeFile.Y.value]].to_numpy(dtype=np.float64)
        diameters = _diameters(metadata, cell_diameter)
        polygons = None
        boundaries_path = _boundaries_file(counts_path) if boundaries else None
        if boundaries_path is not None:
            polygons = _read_boundaries(boundaries_path, common, coords, diameters)
        logger.info("%d cells × %d genes (%d blank codewords)", genes.shape[0], genes.shape[1], blanks.shape[1])
        return build_spatialdata(
            genes.to_numpy(dtype=np.float32),
            obs_names=common,
            var_names=genes.columns,
            coords=coords,
            dataset_id=dataset_id,
            technology=Technology.MERFISH,
            shape="circle",
            size=diameters,
            polygons=polygons,
            obs=metadata,
            obsm={Key.BLANK_COUNTS: blanks},
            source=str(folder),
            reader="sd_inspire.io.merfish",
        )


def find_merscope_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The ``*cell_by_gene.csv`` and ``*cell_metadata.csv`` files of a folder."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    counts = [p for p in files if p.name.endswith(MerscopeFile.CELL_BY_GENE)]
    metadata = [p for p in files if p.name.endswith(MerscopeFile.CELL_METADATA)]
    return counts, metadata


def _files(folder: Path, counts_file: str | Path | None, metadata_file: str | Path | None) -> tuple[Path, Path]:
    all_counts, all_metadata = find_merscope_files(folder)
    if counts_file is not None:
        counts: Path | None = resolve_file(folder, counts_file)
    elif len(all_counts) > 1:
        raise ValueError(
            f"{str(folder)!r} holds several count files ({[p.name for p in all_counts]}); choose one with "
            "`counts_file=`."
        )
    else:
        counts = all_counts[0] if all_counts else None
    if metadata_file is not None:
        metadata: Path | None = resolve_file(folder, metadata_file)
    elif counts is not None and (counts.parent / _with_prefix(counts, MerscopeFile.CELL_METADATA)).is_file():
        metadata = counts.parent / _with_prefix(counts, MerscopeFile.CELL_METADATA)
    elif len(all_metadata) == 1:
        metadata = all_metadata[0]
    else:
        metadata = None
    missing = []
    if counts is None:
        missing.append(f"*{MerscopeFile.CELL_BY_GENE}")
    if metadata is None:
        missing.append(f"*{MerscopeFile.CELL_METADATA}" + (" (one, or one per prefix)" if all_metadata else ""))
    if missing:
        raise FileNotFoundError(
            f"{str(folder)!r} is not a MERSCOPE folder: missing {missing}; found {listing(folder)}."
        )
    assert counts is not None
    assert metadata is not None
    return counts, metadata


def _with_prefix(counts: Path, name: str) -> str:
    """``name`` with the prefix of the counts file, e.g. ``small_`` + ``cell_metadata.csv``."""
    return counts.name.removesuffix(MerscopeFile.CELL_BY_GENE) + name


def _read_metadata(file: Path) -> pd.DataFrame:
    metadata = read_id_table(file)
    required = [MerscopeFile.X.value, MerscopeFile.Y.value]
    absent = [c for c in required if c not in metadata.columns]
    if absent:
        raise ValueError(f"{file}: missing columns {absent}; found {list(metadata.columns)}.")
    xy = metadata[required].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{file}: {int(bad.sum())} cells with missing or non-numeric {required} (e.g. "
            f"{examples(metadata.index[bad])})."
        )
    metadata[required] = xy
    return metadata


def _diameters(metadata: pd.DataFrame, cell_diameter: float | None) -> np.ndarray:
    """Circle diameter per cell: ``cell_diameter``, or the diameter of the sphere of the cell's volume."""
    n = len(metadata)
    if cell_diameter is not None:
        return np.full(n, float(cell_diameter))
    if MerscopeFile.VOLUME not in metadata.columns:
        return np.full(n, MERFISH_DEFAULT_CELL_DIAMETER_UM)
    volume = pd.to_numeric(metadata[MerscopeFile.VOLUME.value], errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        diameter = np.cbrt(6 * volume / np.pi)
    return np.where(np.isfinite(diameter) & (diameter > 0), diameter, MERFISH_DEFAULT_CELL_DIAMETER_UM)


def _boundaries_file(counts: Path) -> Path | None:
    for name in (_with_prefix(counts, MerscopeFile.BOUNDARIES), MerscopeFile.BOUNDARIES):
        if (counts.parent / name).is_file():
            return counts.parent / name
    return None


def _read_boundaries(file: Path, ids: pd.Index, coords: np.ndarray, diameters: np.ndarray) -> gpd.GeoDataFrame:
    """One polygon per cell of ``ids`` (lowest z-plane); circles for cells without one, with a warning."""
    import geopandas as gpd
    import shapely

    try:
        frame = pd.read_parquet(file)
    except (OSError, ValueError) as e:  # pyarrow's errors derive from these
        raise ValueError(f"{file}: not a readable parquet file ({e}).") from e
    geometry_column = MerscopeFile.GEOMETRY.value
    if MerscopeFile.METADATA_CELL_ID not in frame.columns or geometry_column not in frame.columns:
        raise ValueError(
            f"{file}: expected columns {[MerscopeFile.METADATA_CELL_ID.value, MerscopeFile.GEOMETRY.value]}, "
            f"found {list(frame.columns)}."
        )
    if MerscopeFile.Z_INDEX in frame.columns:
        frame = frame.sort_values(MerscopeFile.Z_INDEX.value, kind="stable")
    frame = frame.drop_duplicates(MerscopeFile.METADATA_CELL_ID.value, keep="first")
    try:
        shapes = shapely.from_wkb(frame[geometry_column].to_numpy())
    except (shapely.errors.GEOSException, TypeError, ValueError) as e:
        raise ValueError(f"{file}: column {geometry_column!r} does not hold WKB polygons ({e}).") from e
    by_id = pd.Series(shapes, index=frame[MerscopeFile.METADATA_CELL_ID.value].astype(str).to_numpy())
    polygons = np.array(
        [g if isinstance(g, shapely.Geometry) else None for g in by_id.reindex(ids.astype(str))], dtype=object
    )
    missing = shapely.is_missing(polygons) | shapely.is_empty(polygons)
    if missing.all():
        raise ValueError(f"{file}: no boundary for any of the {len(ids)} cells (e.g. {examples(ids)}).")
    if missing.any():
        warnings.warn(
            f"{file.name}: {int(missing.sum())} of {len(ids)} cells have no boundary (e.g. {examples(ids[missing])}); "
            "they are drawn as circles.",
            UserWarning,
            stacklevel=3,  # the caller of merfish()
        )
        polygons[missing] = shapely.buffer(shapely.points(coords[missing]), diameters[missing] / 2)
    return gpd.GeoDataFrame(geometry=list(polygons), index=pd.RangeIndex(len(ids)))
