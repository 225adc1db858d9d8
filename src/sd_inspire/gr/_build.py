"""Per-slice spatial neighbour graphs built with squidpy, assembled block-diagonally."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from sd_inspire._constants import Key, Technology
from sd_inspire._docs import d
from sd_inspire._logging import log_added, quiet, timed
from sd_inspire._utils import check_unique_obs_names, get_slices, get_spatial, get_table, maybe_copy
from sd_inspire._validate import check_choice

if TYPE_CHECKING:
    from spatialdata import SpatialData

GraphMethod = Literal["auto", "grid", "knn", "radius", "delaunay"]

#: Graph built for each technology with ``method="auto"``: (method, number of neighbours).
DEFAULT_GRAPH: dict[Technology, tuple[str, int]] = {
    Technology.VISIUM: ("grid", 6),  # hexagonal lattice: the 6 adjacent spots
    Technology.STEREOSEQ: ("grid", 8),  # square bins: the 4 edge- and 4 corner-adjacent bins
    Technology.SLIDESEQ: ("knn", 8),
    Technology.MERFISH: ("knn", 8),
    Technology.XENIUM: ("knn", 8),
    Technology.UNKNOWN: ("knn", 6),
}


@d.dedent
def spatial_neighbors(
    data: AnnData | SpatialData,
    *,
    method: GraphMethod = "auto",
    n_neighs: int | None = None,
    radius: float | None = None,
    slice_key: str | None = Key.SLICE,
    spatial_key: str = Key.SPATIAL,
    table_key: str | None = None,
    key_added: str = "spatial",
    copy: bool = False,
) -> AnnData | None:
    """Build a spatial neighbour graph within each slice, never across slices.

    Each slice's graph is built by squidpy (:func:`squidpy.gr.spatial_neighbors_grid`, ``_knn``, ``_radius`` or
    ``_delaunay``) on its own coordinates, and the graphs are assembled into one block-diagonal sparse matrix in
    squidpy's layout, so :func:`squidpy.gr.nhood_enrichment` and friends read the result directly.

    With ``method="auto"`` each slice gets the graph suited to its ``obs["technology"]``: a hexagonal grid of 6
    neighbours for Visium spots, the 8 adjacent square bins for Stereo-seq, 8 nearest neighbours for Slide-seq
    beads and single-cell technologies (MERFISH, Xenium), 6 nearest neighbours otherwise.

    Parameters
    ----------
    %(data)s
    method
        ``"auto"`` (per technology, see above), ``"grid"``, ``"knn"``, ``"radius"`` or ``"delaunay"``.
    n_neighs
        Number of neighbours for ``"grid"`` and ``"knn"``; overrides the technology default.
    radius
        Distance cutoff in the units of ``obsm[spatial_key]``: required for ``"radius"``; prunes longer edges with
        ``"delaunay"``.
    %(slice_key)s ``None`` treats the table as one slice.
    spatial_key
        Key of the coordinates in :attr:`~anndata.AnnData.obsm`.
    %(table_key)s
    key_added
        Stem of the keys written, as in squidpy.
    %(copy)s

    Returns
    -------
    %(copy_returns)s, with

    - ``obsp["{key_added}_connectivities"]``: binary adjacency (sparse CSR), block-diagonal by slice;
    - ``obsp["{key_added}_distances"]``: edge lengths (grid: ring number);
    - ``uns["{key_added}_neighbors"]``: the keys above and ``params`` (method and settings of each slice).

    Raises
    ------
    KeyError
        If ``obsm[spatial_key]`` or ``obs[slice_key]`` is missing.
    ValueError
        For NaN or infinite coordinates, duplicated observation names, or ``method="radius"`` without a radius.

    Examples
    --------
    >>> import sd_inspire as si
    >>> sdata = si.datasets.simulate(2, n_spots=300)
    >>> si.gr.spatial_neighbors(sdata)
    >>> int(sdata["table"].obsp["spatial_connectivities"].sum(axis=1).max())
    6
    """
    check_choice(method, "method", ("auto", "grid", "knn", "radius", "delaunay"))
    if method == "radius" and radius is None:
        raise ValueError("`method='radius'` needs `radius=` (in the units of the coordinates).")
    if radius is not None and not radius > 0:
        raise ValueError(f"`radius` must be positive, got {radius}.")
    if n_neighs is not None and n_neighs < 1:
        raise ValueError(f"`n_neighs` must be positive, got {n_neighs}.")
    adata = maybe_copy(get_table(data, table_key), copy)
    check_unique_obs_names(adata, slice_key)
    slices = get_slices(adata, slice_key)
    coords = get_spatial(adata, spatial_key, slices=slices)[:, :2]
    techs = _technologies(adata, slices)

    with timed(f"Building spatial graphs of {len(slices.cat.categories)} slices"):
        rows, cols, conn, dist = [], [], [], []
        per_slice: dict[str, dict[str, Any]] = {}
        codes = slices.cat.codes.to_numpy()
        for code, name in enumerate(slices.cat.categories):
            idx = np.flatnonzero(codes == code)
            tech = techs[str(name)]
            m, k = DEFAULT_GRAPH[tech] if method == "auto" else (method, DEFAULT_GRAPH[Technology.UNKNOWN][1])
            k = n_neighs if n_neighs is not None else k
            try:
                c, dst, params = _slice_graph(coords[idx], m, k, radius)
            except ValueError as e:
                raise ValueError(f"Slice {str(name)!r}: {e}") from None
            per_slice[str(name)] = {"technology": tech.value, **params}
            c, dst = c.tocoo(), dst.tocsr()
            if idx.size > 1 and c.nnz == 0:
                warnings.warn(
                    f"Slice {str(name)!r}: the spatial graph has no edges ({idx.size} spots; all at one coordinate, "
                    f"or a radius below the spot spacing?), so no spot has neighbours and smoothing does nothing "
                    f"there. Check `obsm[{spatial_key!r}]` and the graph options.",
                    UserWarning,
                    stacklevel=3,
                )
            rows.append(idx[c.row])
            cols.append(idx[c.col])
            conn.append(np.ones(c.nnz, dtype=np.float32))
            edge_length = np.asarray(dst[c.row, c.col]).ravel() if c.nnz else np.zeros(0)
            dist.append(edge_length.astype(np.float32))
        n = adata.n_obs
        r, cc = np.concatenate(rows), np.concatenate(cols)
        connectivities = sparse.csr_matrix((np.concatenate(conn), (r, cc)), shape=(n, n))
        distances = sparse.csr_matrix((np.concatenate(dist), (r, cc)), shape=(n, n))
        conn_key, dist_key = f"{key_added}_connectivities", f"{key_added}_distances"
        adata.obsp[conn_key] = connectivities
        adata.obsp[dist_key] = distances
        methods = sorted({p["method"] for p in per_slice.values()})
        adata.uns[f"{key_added}_neighbors"] = {
            "connectivities_key": conn_key,
            "distances_key": dist_key,
            "params": {
                "method": methods[0] if len(methods) == 1 else "mixed",
                "coord_type": "grid" if methods == ["grid"] else "generic",
                "slice_key": slice_key or "",
                "spatial_key": spatial_key,
                "per_slice": per_slice,
            },
        }
        log_added("obsp", conn_key)
        log_added("obsp", dist_key)
        log_added("uns", f"{key_added}_neighbors")
    return adata if copy else None


def _technologies(adata: AnnData, slices: pd.Series) -> dict[str, Technology]:
    """Technology of each slice from ``obs["technology"]`` (unknown where absent or not recognised)."""
    out = {str(s): Technology.UNKNOWN for s in slices.cat.categories}
    if Key.TECHNOLOGY not in adata.obs:
        return out
    tech = adata.obs[Key.TECHNOLOGY].astype(str).str.lower()
    for s in slices.cat.categories:
        values = pd.unique(tech[(slices == s).to_numpy()])
        if len(values) == 1 and values[0] in Technology._value2member_map_:
            out[str(s)] = Technology(values[0])
    return out


def _slice_graph(
    coords: np.ndarray, method: str, n_neighs: int, radius: float | None
) -> tuple[sparse.csr_matrix, sparse.csr_matrix, dict[str, Any]]:
    """Connectivities and distances of one slice, from squidpy's builders."""
    with warnings.catch_warnings():  # squidpy's docstring templates warn (SyntaxWarning) at its first import
        warnings.simplefilter("ignore", SyntaxWarning)
        import squidpy as sq

    n = coords.shape[0]
    params: dict[str, Any] = {"method": method}
    if n < 2 or (method == "delaunay" and n < 4):
        empty = sparse.csr_matrix((n, n), dtype=np.float32)
        return empty, empty.copy(), {**params, "n_neighbors": 0}
    sub = AnnData(obs=pd.DataFrame(index=pd.RangeIndex(n).astype(str)), obsm={Key.SPATIAL: coords})
    k = min(n_neighs, n - 1)
    with warnings.catch_warnings(), quiet("spatialdata._logging"):
        warnings.filterwarnings("ignore", category=FutureWarning)
        if method == "grid":
            res = sq.gr.spatial_neighbors_grid(sub, n_neighs=k, copy=True)
            params["n_neighbors"] = k
        elif method == "knn":
            res = sq.gr.spatial_neighbors_knn(sub, n_neighs=k, copy=True)
            params["n_neighbors"] = k
        elif method == "radius":
            res = sq.gr.spatial_neighbors_radius(sub, radius=float(radius), copy=True)
            params["radius"] = float(radius)
        else:
            from scipy.spatial import QhullError

            try:
                res = sq.gr.spatial_neighbors_delaunay(sub, radius=radius, copy=True)
            except QhullError as e:  # all spots on one point or one line: no triangulation exists
                raise ValueError(
                    f"A Delaunay graph needs spots that span an area; these {n} spots lie on one point or line "
                    f"({str(e).splitlines()[0][:60]}...). Use `method='knn'` or check the coordinates."
                ) from None
            if radius is not None:
                params["radius"] = float(radius)
    conn, dist = res.connectivities.tocsr(), res.distances.tocsr()
    conn.setdiag(0)
    conn.eliminate_zeros()
    return conn, dist, params
