"""The normalised adjacency of a spatial graph: what ``gr.propagate``, the model's input and ``tl`` smooth with."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from sd_inspire._validate import check_choice

#: Normalisations of :func:`normalized_adjacency`: ``D^-1/2 (A + I) D^-1/2`` or ``D^-1 (A + I)``.
NORMALIZATIONS = ("symmetric", "mean")


def normalized_adjacency(
    adjacency: sparse.spmatrix, *, normalization: str = "symmetric", self_loops: bool = True
) -> sparse.csr_matrix:
    """The normalised adjacency ``Â`` of a graph: ``D^-1/2 (A + I) D^-1/2`` or ``D^-1 (A + I)``.

    The matrix :func:`sd_inspire.gr.propagate` smooths with (and the model's encoder input is built from): ``A`` made symmetric
    (``max(A, Aᵀ)``, self-edges of the input dropped), self-loops ``I`` added, ``D`` the degrees of ``A + I``.

    Parameters
    ----------
    adjacency
        Square sparse graph, e.g. ``adata.obsp["spatial_connectivities"]`` (edge weights are kept).
    normalization
        ``"symmetric"``: ``D^-1/2 (A + I) D^-1/2`` (GCN's); ``"mean"``: ``D^-1 (A + I)``, rows sum to 1.
    self_loops
        Add ``I`` (each spot keeps its own value in the smoothing).

    Returns
    -------
    ``Â`` as float32 CSR; a node without edges (and without self-loop) has an empty row.

    Raises
    ------
    ValueError
        If ``adjacency`` is not square.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import sparse
    >>> from sd_inspire._graph import normalized_adjacency
    >>> path = sparse.csr_matrix(np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]]))
    >>> normalized_adjacency(path, normalization="mean").sum(axis=1).A1.round(6).tolist()
    [1.0, 1.0, 1.0]
    """
    check_choice(normalization, "normalization", NORMALIZATIONS)
    a = sparse.csr_matrix(adjacency, dtype=np.float32)
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"The graph must be square, got shape {a.shape}.")
    a = a.maximum(a.T).tocsr()
    a.setdiag(0)
    a.eliminate_zeros()
    if self_loops:
        a = (a + sparse.identity(a.shape[0], dtype=np.float32, format="csr")).tocsr()
    deg = np.asarray(a.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        inv = np.where(deg > 0, 1.0 / deg, 0.0)
    rows = np.repeat(np.arange(a.shape[0]), np.diff(a.indptr))
    if normalization == "symmetric":
        scale = np.sqrt(inv)
        a.data *= (scale[rows] * scale[a.indices]).astype(np.float32)
    else:
        a.data *= inv[rows].astype(np.float32)
    return a
