"""Reading a Stereo-seq GEF (HDF5) file: the bin1 level of a square-bin GEF, or the cells of a cell-bin GEF."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sd_inspire._constants import StereoseqFile
from sd_inspire._logging import logger
from sd_inspire.io._stereoseq._binning import _bin_keys, _bin_table, _SumByKey
from sd_inspire.io._stereoseq._files import _FORMATS
from sd_inspire.io._stereoseq._output import _Parsed

if TYPE_CHECKING:
    from pathlib import Path

    import geopandas as gpd
    import h5py
    import pandas as pd

# Tuning of the streaming (module constants so that tests can shrink them and cross chunk boundaries).
_GEF_CHUNK = 1 << 22  # rows of a GEF dataset read at a time

_BORDER_PADDING = 32767  # fills the unused vertices of cellBin/cellBorder (SHRT_MAX in geftools)
_GENE_FIELDS = (StereoseqFile.GENE, StereoseqFile.GENE_NAME, StereoseqFile.GENE_DATASET)


def _open_h5(path: Path) -> h5py.File:
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 (GEF) file: {err}") from err


def _check_counts(values: np.ndarray, file: Path, what: str) -> None:
    if values.dtype.kind == "f" and not np.array_equal(values, np.floor(values)):
        raise ValueError(f"{file}: {what} holds non-integer counts.")
    if values.size and values.min() < 0:
        raise ValueError(f"{file}: {what} holds negative counts.")


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in values.tolist()]


def _gef_genes(
    genes: np.ndarray, file: Path, where: str, gene_key: str
) -> tuple[np.ndarray, list[str], pd.DataFrame | None, str]:
    """Codes of the file's genes after merging equal identifiers, the identifiers, ``var`` and the key used."""
    import pandas as pd

    fields = genes.dtype.names or ()
    available = [f for f in _GENE_FIELDS if f in fields]
    if not available:
        raise ValueError(f"{file}: {where} has no gene field ({', '.join(_GENE_FIELDS)}); found fields {list(fields)}.")
    key = gene_key if gene_key in available else available[0]
    codes, uniques = pd.factorize(np.asarray(_decode(genes[key]), dtype=object))
    other = next((f for f in (StereoseqFile.GENE, StereoseqFile.GENE_NAME) if f != key and f in available), None)
    var = None
    if other is not None:
        first = np.full(len(uniques), -1)
        first[codes[::-1]] = np.arange(codes.size)[::-1]
        var = pd.DataFrame({str(other): np.asarray(_decode(genes[other]), dtype=object)[first]})
    return codes.astype(np.int64), [str(u) for u in uniques], var, key


def _require(group: h5py.Group, names: tuple[str, ...], file: Path) -> None:
    missing = [str(n) for n in names if n not in group]
    if missing:
        raise ValueError(f"{file}: GEF group {group.name!r} lacks {missing}; found {sorted(group)}.")


def _require_fields(dataset: h5py.Dataset, names: tuple[str, ...], file: Path) -> None:
    fields = dataset.dtype.names or ()
    missing = [str(n) for n in names if n not in fields]
    if missing:
        raise ValueError(f"{file}: GEF dataset {dataset.name!r} lacks field(s) {missing}; found {list(fields)}.")


def _attrs(attrs: h5py.AttributeManager) -> dict[str, object]:
    """Attributes as plain Python values (writable to zarr)."""
    out: dict[str, object] = {}
    for key, value in attrs.items():
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(-1)[0]
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        elif isinstance(value, np.generic):
            value = value.item()
            value = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
        if isinstance(value, str | int | float | bool):
            out[key] = value
    return out


def _read_square_gef(f: h5py.File, file: Path, bin_size: int, gene_key: str) -> _Parsed:
    S = StereoseqFile
    _require(f[S.GENE_EXP], (S.BIN1,), file)
    level = f[S.GENE_EXP][S.BIN1]
    _require(level, (S.EXPRESSION, S.GENE_DATASET), file)
    expression, gene_table = level[S.EXPRESSION], level[S.GENE_DATASET]
    _require_fields(expression, (S.X, S.Y, S.GEF_COUNT), file)
    _require_fields(gene_table, (S.OFFSET, S.GEF_COUNT), file)
    genes = gene_table[()]
    codes, names, var, key = _gef_genes(genes, file, gene_table.name, gene_key)
    starts = genes[S.OFFSET].astype(np.int64)
    lengths = genes[S.GEF_COUNT].astype(np.int64)
    n_rows = expression.shape[0]
    if n_rows == 0:
        raise ValueError(f"{file}: no counts: {expression.name!r} is empty.")
    if (
        starts.size == 0
        or starts[0] != 0
        or np.any(starts[1:] != starts[:-1] + lengths[:-1])
        or (starts[-1] + lengths[-1] != n_rows)
    ):
        raise ValueError(
            f"{file}: {gene_table.name!r} offsets and counts do not tile the {n_rows} rows of {expression.name!r}."
        )
    sums = _SumByKey(bin_size)
    fields = expression.fields([S.X, S.Y, S.GEF_COUNT])
    for a in range(0, n_rows, _GEF_CHUNK):
        rows = fields[a : min(a + _GEF_CHUNK, n_rows)]
        counts = rows[S.GEF_COUNT]
        _check_counts(counts, file, repr(expression.name))
        gene_of_row = codes[np.searchsorted(starts, np.arange(a, a + rows.size), side="right") - 1]
        sums.add(_bin_keys(rows[S.X], rows[S.Y], gene_of_row, bin_size, file), counts)
    logger.info("Read %d GEF rows, %d genes, %d counts", n_rows, len(names), sums.total)
    counts, obs_names, centres = _bin_table(sums, len(names), bin_size)
    return _Parsed(counts, obs_names, names, centres, var, _FORMATS["gef"], key, _attrs(f.attrs), bin_size)


def _read_cellbin_gef(f: h5py.File, file: Path, gene_key: str) -> _Parsed:
    import pandas as pd
    from scipy import sparse

    S = StereoseqFile
    group = f[S.CELL_BIN]
    _require(group, (S.CELL, S.GENE_DATASET, S.CELL_EXP), file)
    cells = group[S.CELL][()]
    _require_fields(group[S.CELL], (S.X, S.Y, S.OFFSET, S.GENE_COUNT), file)
    _require_fields(group[S.CELL_EXP], (S.GENE, S.GEF_COUNT), file)
    if cells.size == 0:
        raise ValueError(f"{file}: no cells: {group[S.CELL].name!r} is empty.")
    codes, names, var, key = _gef_genes(group[S.GENE_DATASET][()], file, group[S.GENE_DATASET].name, gene_key)
    starts = cells[S.OFFSET].astype(np.int64)
    lengths = cells[S.GENE_COUNT].astype(np.int64)
    expression = group[S.CELL_EXP]
    nnz = expression.shape[0]
    if starts[0] != 0 or np.any(starts[1:] != starts[:-1] + lengths[:-1]) or starts[-1] + lengths[-1] != nnz:
        raise ValueError(f"{file}: cell offsets and gene counts do not tile the {nnz} rows of {expression.name!r}.")
    indices = np.empty(nnz, np.int32)
    data = np.empty(nnz, np.float32)
    fields = expression.fields([S.GENE, S.GEF_COUNT])
    for a in range(0, nnz, _GEF_CHUNK):
        rows = fields[a : min(a + _GEF_CHUNK, nnz)]
        _check_counts(rows[S.GEF_COUNT], file, repr(expression.name))
        gene = rows[S.GENE].astype(np.int64)
        if gene.size and (gene.min() < 0 or gene.max() >= codes.size):
            raise ValueError(f"{file}: {expression.name!r} refers to genes beyond the {codes.size} of the file.")
        indices[a : a + rows.size] = codes[gene]
        data[a : a + rows.size] = rows[S.GEF_COUNT]
    indptr = np.concatenate((starts, [nnz]))
    counts = sparse.csr_matrix((data, indices, indptr), shape=(cells.size, len(names)))
    counts.sum_duplicates()  # sorts the genes of each cell; sums genes merged under one name
    counts.eliminate_zeros()
    centres = np.column_stack((cells[S.X], cells[S.Y])).astype(np.float64)
    obs_names = np.arange(cells.size).astype(str)
    if S.CELL_ID in (cells.dtype.names or ()) and np.unique(cells[S.CELL_ID]).size == cells.size:
        obs_names = cells[S.CELL_ID].astype(str)
    skip = {S.CELL_ID, S.X, S.Y, S.OFFSET}
    obs = pd.DataFrame({name: cells[name] for name in cells.dtype.names if name not in skip})
    polygons = None
    if S.CELL_BORDER in group:
        polygons, n_without = _cell_polygons(group[S.CELL_BORDER][()], centres)
        if n_without:
            logger.info("%d cells have fewer than 3 border points: drawn as 1-DNB squares", n_without)
    else:
        logger.info("No %s in %s: cells drawn as circles", S.CELL_BORDER, file)
    return _Parsed(
        counts, obs_names, names, centres, var, _FORMATS["cellbin"], key, _attrs(f.attrs), None, obs, polygons
    )


def _cell_polygons(border: np.ndarray, centres: np.ndarray) -> tuple[gpd.GeoDataFrame, int]:
    """Cell outlines from the padded border offsets; cells with fewer than 3 points become 1-DNB squares."""
    import geopandas as gpd
    import shapely

    valid = (border != _BORDER_PADDING).all(axis=2)
    n_points = valid.sum(axis=1)
    ok = n_points >= 3
    geometries = shapely.box(centres[:, 0] - 0.5, centres[:, 1] - 0.5, centres[:, 0] + 0.5, centres[:, 1] + 0.5)
    if ok.any():
        points = border[valid & ok[:, None]].astype(np.float64)
        points += np.repeat(centres[ok], n_points[ok], axis=0)
        rings = shapely.linearrings(points, indices=np.repeat(np.arange(ok.sum()), n_points[ok]))
        geometries[ok] = shapely.polygons(rings)
    return gpd.GeoDataFrame(geometry=geometries), int((~ok).sum())
