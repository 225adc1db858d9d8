"""Sparse neighbour propagation of features, ``Â^k X``, computed in row chunks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

from sd_inspire._chunks import DEFAULT_CHUNK_SIZE, is_lazy, matmul_rows, row_blocks
from sd_inspire._constants import Key
from sd_inspire._docs import d
from sd_inspire._graph import NORMALIZATIONS, normalized_adjacency
from sd_inspire._logging import log_added, timed
from sd_inspire._utils import get_table, maybe_copy
from sd_inspire._validate import check_choice, check_integer

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData


@d.dedent
def propagate(
    data: AnnData | SpatialData,
    *,
    n_hops: int = 1,
    use_rep: str | None = None,
    layer: str | None = None,
    use_highly_variable: bool | None = None,
    connectivity_key: str = "spatial_connectivities",
    normalization: Literal["symmetric", "mean"] = "symmetric",
    self_loops: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    table_key: str | None = None,
    key_added: str = "propagated",
    copy: bool = False,
) -> AnnData | None:
    """Smooth features over the spatial graph: ``Â^k X``, sparse and in row chunks.

    ``Â`` is the adjacency ``A`` of ``obsp[connectivity_key]``, made symmetric (``max(A, Aᵀ)``), with self-loops
    ``A + I``, and normalised symmetrically, ``D^-1/2 (A + I) D^-1/2`` (the LGCN/GCN operator), or by rows,
    ``D^-1 (A + I)`` (the mean over the spot and its neighbours). Because the graph is block-diagonal by slice,
    features never leak across slices. Memory is that of the output plus one chunk; nothing is quadratic in the
    number of spots.

    Parameters
    ----------
    %(data)s
    n_hops
        Power ``k`` of ``Â``.
    use_rep
        Key of :attr:`~anndata.AnnData.obsm` to propagate (e.g. ``"X_pca"``); by default the expression.
    layer
        Layer to propagate instead of ``X``.
    use_highly_variable
        Restrict expression to ``var["highly_variable"]`` (see :func:`sd_inspire.pp.preprocess`); by default when
        the column exists.
    connectivity_key
        Key of the graph in :attr:`~anndata.AnnData.obsp`, as written by :func:`sd_inspire.gr.spatial_neighbors`.
    normalization
        ``"symmetric"`` or ``"mean"``, see above.
    self_loops
        Add the identity to the adjacency.
    chunk_size
        Rows computed at once.
    %(table_key)s
    key_added
        Result goes to ``obsm["X_{key_added}"]``, parameters to ``uns[key_added]``.
    %(copy)s

    Returns
    -------
    %(copy_returns)s, with

    - ``obsm["X_{key_added}"]``: the propagated features (dense float32, n_obs x n_features);
    - ``uns[key_added]``: ``n_hops``, ``normalization``, ``self_loops``, ``connectivity_key``, the source and, for
      expression, the ``var_names`` of the columns.

    Raises
    ------
    KeyError
        If the graph, ``use_rep``, ``layer`` or ``var["highly_variable"]`` (with ``use_highly_variable=True``) is
        missing.

    Examples
    --------
    >>> import sd_inspire as si
    >>> adata = si.datasets.simulate(2, n_spots=300, output="anndata")
    >>> si.pp.preprocess(adata, n_top_genes=100)
    >>> si.gr.spatial_neighbors(adata)
    >>> si.gr.propagate(adata)
    >>> adata.obsm["X_propagated"].shape
    (600, 100)
    """
    n_hops = check_integer(n_hops, "n_hops", minimum=1)
    check_choice(normalization, "normalization", NORMALIZATIONS)  # before the work
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be positive, got {chunk_size}.")
    if use_rep is not None and layer is not None:
        raise ValueError("Pass at most one of `use_rep` and `layer`.")
    adata = maybe_copy(get_table(data, table_key), copy)
    if connectivity_key not in adata.obsp:
        raise KeyError(
            f"No graph `adata.obsp[{connectivity_key!r}]`; build it with `sd_inspire.gr.spatial_neighbors` first."
        )

    features, source, var_names = _features(adata, use_rep, layer, use_highly_variable)
    with timed(f"Propagating {features.shape[1]} features over {n_hops} hop(s)"):
        a_hat = normalized_adjacency(adata.obsp[connectivity_key], normalization=normalization, self_loops=self_loops)
        out = features
        for _ in range(n_hops):
            out = matmul_rows(a_hat, out, chunk_size)
        key = f"X_{key_added}"
        adata.obsm[key] = out
        adata.uns[key_added] = {
            "n_hops": n_hops,
            "normalization": normalization,
            "self_loops": self_loops,
            "connectivity_key": connectivity_key,
            "source": source,
        }
        if var_names is not None:
            adata.uns[key_added]["var_names"] = np.asarray(var_names, dtype=object)
        log_added("obsm", key)
        log_added("uns", key_added)
    return adata if copy else None


def _features(
    adata: AnnData, use_rep: str | None, layer: str | None, use_highly_variable: bool | None
) -> tuple[np.ndarray | sparse.csr_matrix, str, np.ndarray | None]:
    if use_rep is not None:
        if use_rep not in adata.obsm:
            raise KeyError(f"No `adata.obsm[{use_rep!r}]` (obsm keys: {list(adata.obsm.keys())}).")
        return np.asarray(adata.obsm[use_rep], dtype=np.float32), f"obsm[{use_rep!r}]", None
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"No `adata.layers[{layer!r}]` (layers: {list(adata.layers.keys())}).")
    x = adata.layers[layer] if layer is not None else adata.X
    has_hv = Key.HIGHLY_VARIABLE in adata.var
    if use_highly_variable and not has_hv:
        raise KeyError("`use_highly_variable=True` but `adata.var['highly_variable']` is missing; run `pp.preprocess`.")
    genes = np.ones(adata.n_vars, dtype=bool)
    if use_highly_variable or (use_highly_variable is None and has_hv):
        genes = adata.var[Key.HIGHLY_VARIABLE].to_numpy(dtype=bool)
    x = x[:, np.flatnonzero(genes)]
    if is_lazy(x):  # on disk: read in row chunks (the dense output is held in memory anyway)
        x = sparse.vstack([block for _, _, block in row_blocks(x)], format="csr")
    x = sparse.csr_matrix(x, dtype=np.float32) if sparse.issparse(x) else np.asarray(x, dtype=np.float32)
    source = f"layers[{layer!r}]" if layer is not None else "X"
    return x, source, adata.var_names[genes].to_numpy()
