"""Open a SpatialData zarr store with the count matrices of large tables left on disk (out of core)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sd_inspire._chunks import CHUNK_ROWS
from sd_inspire._logging import logger
from sd_inspire.io._store import SMALL_KEYS, recover_store

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

#: Above this estimated in-memory size of a table's matrices (X and layers), ``out_of_core=None`` keeps them on disk.
OUT_OF_CORE_BYTES = 2_000_000_000

_SPATIAL_KINDS = ("images", "labels", "points", "shapes")


def read_zarr(
    path: str | Path,
    *,
    out_of_core: bool | None = None,
    chunk_size: int = CHUNK_ROWS,
) -> SpatialData:
    """Read a SpatialData zarr store, keeping the count matrices of large tables on disk.

    Spatial elements are read as :func:`spatialdata.read_zarr` reads them (images, labels and points lazily). A
    table opened out of core keeps ``X`` and every layer on disk as :class:`dask.array.Array` of sparse row chunks
    (``chunk_size`` rows); ``obs``, ``var``, ``obsm``, ``varm``, ``obsp`` and ``uns`` are read into memory. Every
    function of sd-inspire streams over such a table chunk by chunk, so memory stays bounded by the per-spot
    vectors (coordinates, graph, latent space) instead of the counts. Results written by
    :func:`sd_inspire.tl.integrate` go into the store element by element; the matrices on disk are never rewritten.
    What a write killed midway left in the store (its hidden ``.sd-inspire`` staging folder) is removed first, with
    a warning; every element is then as it was before or after that write.

    Parameters
    ----------
    path
        The ``.zarr`` folder (written by :meth:`spatialdata.SpatialData.write`).
    out_of_core
        Keep the tables' matrices on disk. ``None`` does so for a table whose matrices would take more than 2 GB
        in memory.
    chunk_size
        Rows per chunk of the on-disk matrices.

    Returns
    -------
    The SpatialData, backed by ``path`` (``sdata.path``).

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a zarr store.

    Examples
    --------
    >>> import tempfile, sd_inspire as si
    >>> sdata = si.datasets.simulate(2, n_spots=200, n_genes=100)
    >>> store = f"{tempfile.mkdtemp()}/sim.zarr"
    >>> sdata.write(store)
    >>> big = si.io.read_zarr(store, out_of_core=True)
    >>> type(big["table"].X).__name__
    'Array'
    """
    import spatialdata as sd
    import zarr

    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be positive, got {chunk_size}.")
    path = Path(path)
    if not (path / "zarr.json").exists() and not (path / ".zgroup").exists():
        raise FileNotFoundError(f"{str(path)!r} is not a zarr store (no zarr.json or .zgroup).")
    recover_store(path)  # what a killed write left, before anything is read
    root = zarr.open_group(path, mode="r")
    tables = sorted(root["tables"].group_keys()) if "tables" in root else []
    big = {name: _matrix_bytes(root["tables"][name]) > OUT_OF_CORE_BYTES for name in tables}
    lazy = {name: (big[name] if out_of_core is None else bool(out_of_core)) for name in tables}
    if not any(lazy.values()):
        return sd.read_zarr(path)
    kinds = tuple(k for k in _SPATIAL_KINDS if k in root)
    sdata = sd.read_zarr(path, selection=kinds) if kinds else sd.SpatialData()
    for name in tables:
        group = root["tables"][name]
        if lazy[name]:
            logger.info("Opening table %r of %s out of core (matrices stay on disk)", name, path)
            sdata.tables[name] = _read_table_lazily(group, chunk_size)
        else:
            from anndata.io import read_elem

            table = read_elem(group)
            _normalise_attrs(table.uns)
            sdata.tables[name] = table
    sdata.path = path
    return sdata


def _read_table_lazily(group: Any, chunk_size: int) -> AnnData:
    from anndata import AnnData
    from anndata.experimental import read_elem_lazy
    from anndata.io import read_elem

    small = {key: read_elem(group[key]) for key in SMALL_KEYS if key in group}
    n_vars = len(small["var"]) if "var" in small else None

    def lazy(elem: Any) -> Any:
        shape = elem.attrs.get("shape", getattr(elem, "shape", None))
        return read_elem_lazy(elem, chunks=(chunk_size, int(shape[1] if shape is not None else n_vars)))

    x = lazy(group["X"]) if "X" in group else None
    layers = {k: lazy(group["layers"][k]) for k in group["layers"]} if "layers" in group else {}
    _normalise_attrs(small.get("uns", {}))
    return AnnData(X=x, layers=layers, **small)


def _normalise_attrs(uns: dict) -> None:
    """Make ``uns["spatialdata_attrs"]`` as read by anndata what spatialdata's reader makes of it (in place).

    Omitted keys were ``None`` and several regions a list (anndata reads them back as an array of strings, which
    spatialdata's table validation cannot hash).
    """
    attrs = uns.get("spatialdata_attrs")
    if attrs is None:
        return
    for key in ("region", "region_key", "instance_key"):
        attrs.setdefault(key, None)
    if isinstance(attrs["region"], np.ndarray):
        attrs["region"] = attrs["region"].tolist()


def _matrix_bytes(group: Any) -> int:
    """Estimated in-memory size of a table's X and layers (sparse: 8 bytes per stored value)."""
    import zarr

    elems = [group["X"]] if "X" in group else []
    if "layers" in group:
        elems += [group["layers"][k] for k in group["layers"]]
    # a sparse matrix is a group (data + indices: 8 bytes per stored value), a dense one an array
    return sum(8 * int(e["data"].shape[0]) if isinstance(e, zarr.Group) else int(e.nbytes) for e in elems)
