"""Model inputs from a preprocessed table, and minibatches stratified over slices.

Only small per-spot matrices are kept dense (a fixed linear reduction of the expression and its neighbour
propagation); counts stay sparse and each minibatch densifies only its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import linalg, sparse

from sd_inspire._constants import Key
from sd_inspire._utils import get_slices, measured_mask
from sd_inspire.gr._propagate import chunked_matmul, normalized_adjacency

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anndata import AnnData

#: Rows densified at once to accumulate the Gram matrix of the large-data PCA.
_GRAM_CHUNK = 4096


@dataclass
class ModelData:
    """Everything the trainer reads, aligned on the rows of the table."""

    features: np.ndarray  # n x p float32: [Y, ÂY, ..., Â^k Y] with Y a reduction of the log expression
    counts: sparse.csr_matrix  # n x G raw counts of the gene space
    library: np.ndarray  # n, counts over the gene space
    saturated: np.ndarray  # n, sum_g x log(x / l): the Poisson deviance's saturated term
    slices: np.ndarray  # n, int codes
    mask: np.ndarray  # S x G, genes each slice measured
    slice_names: list[str]
    genes: list[str]
    feature_genes: list[str]
    graph: sparse.csr_matrix | None = None  # the spatial graph, for sampled graph encoders
    n_base: int = 0  # width of Y (first block of `features`)
    extra: dict = field(default_factory=dict)

    @property
    def n_obs(self) -> int:
        """Number of spots."""
        return self.features.shape[0]


def prepare(
    adata: AnnData,
    *,
    slice_key: str | None,
    n_pcs: int,
    n_hops: int,
    connectivity_key: str,
    seed: int,
    chunk_size: int = 20_000,
) -> ModelData:
    """Build :class:`ModelData` from a table preprocessed by :func:`sd_inspire.pp.preprocess` with a graph."""
    from sklearn.decomposition import PCA

    if Key.HIGHLY_VARIABLE not in adata.var:
        raise KeyError("`adata.var['highly_variable']` is missing: run `sd_inspire.pp.preprocess` first.")
    if Key.COUNTS not in adata.layers:
        raise KeyError(
            "`adata.layers['counts']` is missing: the model needs raw counts. Run `sd_inspire.pp.preprocess` on "
            "raw counts (non-integer, already normalised data cannot be modelled as counts)."
        )
    if not adata.uns.get(Key.PREPROCESS, {}).get("counts_are_integer", True):
        raise ValueError(
            "The counts are not integers (see `adata.uns['preprocess']`); the Poisson model needs raw counts."
        )
    if connectivity_key not in adata.obsp:
        raise KeyError(f"No graph `adata.obsp[{connectivity_key!r}]`: run `sd_inspire.gr.spatial_neighbors` first.")

    labels = get_slices(adata, slice_key)
    codes = labels.cat.codes.to_numpy().astype(np.int64)
    slice_names = [str(c) for c in labels.cat.categories]

    hv = adata.var[Key.HIGHLY_VARIABLE].to_numpy(dtype=bool)
    genes = adata.var_names[hv]
    if genes.size < 2:
        raise ValueError(f"The gene space holds {genes.size} genes; the model needs at least 2.")
    mask = measured_mask(adata, labels).to_numpy(dtype=bool)[hv].T

    layer = adata.layers[Key.COUNTS]
    # no column copy when the gene space is every gene (the model only reads the counts)
    counts = sparse.csr_matrix(layer if hv.all() else layer[:, hv], dtype=np.float32)
    library = np.asarray(counts.sum(axis=1)).ravel().astype(np.float32)
    empty = library <= 0
    if empty.any():
        raise ValueError(
            f"{int(empty.sum())} spots have no counts in the gene space (e.g. {adata.obs_names[np.flatnonzero(empty)[0]]!r}); "
            "filter them (`pp.preprocess(min_counts=...)`) or widen the gene space."
        )

    saturated = _saturated(counts, library, chunk_size)

    # Encoder features: genes measured by every slice (all of the gene space if none is shared by all)
    shared = mask.all(axis=0)
    feat_genes = shared if shared.sum() >= 2 else np.ones(genes.size, dtype=bool)
    columns = np.flatnonzero(hv)[feat_genes]
    # no column copy when every gene is a feature (the expression is only read)
    x = sparse.csr_matrix(adata.X if columns.size == adata.n_vars else adata.X[:, columns], dtype=np.float32)
    # centre each slice: removes slice-wide shifts before the reduction
    n_comp = int(min(n_pcs, x.shape[1] - 1, x.shape[0] - 1))
    if x.shape[0] * x.shape[1] <= 50_000_000:
        means = np.vstack([np.asarray(x[codes == k].mean(axis=0)).ravel() for k in range(len(slice_names))])
        pca = PCA(n_components=n_comp, svd_solver="randomized", random_state=seed)
        y = pca.fit_transform(x.toarray() - means[codes]).astype(np.float32)
        first_variance = float(pca.explained_variance_[0])
    else:  # large: exact PCA of the globally centred sparse matrix, then the per-slice centring on the projections
        y, first_variance = _sparse_pca(x, n_comp, chunk_size)
        y -= np.vstack([y[codes == k].mean(axis=0) for k in range(len(slice_names))])[codes]
    y /= max(float(np.sqrt(first_variance)), 1e-8)  # unit scale on the first component

    graph = sparse.csr_matrix(adata.obsp[connectivity_key])
    a_hat = normalized_adjacency(graph)
    blocks, cur = [y], y
    for _ in range(n_hops):
        cur = chunked_matmul(a_hat, cur, chunk_size)
        blocks.append(cur)
    features = np.ascontiguousarray(np.hstack(blocks), dtype=np.float32)
    return ModelData(
        features=features,
        counts=counts,
        library=library,
        saturated=saturated,
        slices=codes,
        mask=mask,
        slice_names=slice_names,
        genes=genes.tolist(),
        feature_genes=genes[feat_genes].tolist(),
        graph=graph,
        n_base=y.shape[1],
    )


def _saturated(counts: sparse.csr_matrix, library: np.ndarray, chunk_size: int) -> np.ndarray:
    """``sum_g x log(x / l)`` of each row, in row chunks (the temporaries are several times the chunk's counts)."""
    out = np.empty(counts.shape[0], dtype=np.float32)
    for start in range(0, counts.shape[0], chunk_size):
        block = counts[start : start + chunk_size]
        rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
        frac = block.data / library[start : start + chunk_size][rows]
        out[start : start + chunk_size] = np.bincount(rows, weights=block.data * np.log(frac), minlength=block.shape[0])
    return out


def _sparse_pca(x: sparse.csr_matrix, n_comp: int, chunk_size: int) -> tuple[np.ndarray, float]:
    """Projections on the ``n_comp`` first principal axes of the centred ``x``, and the first axis's variance.

    The exact eigenvectors of the covariance, from the Gram matrix ``xᵀx`` accumulated over dense row chunks
    (BLAS; one pass over ``x``, memory ``p²`` plus one chunk; only the top eigenpairs are solved for), with
    scikit-learn's sign convention (the largest loading of each axis is positive): the same axes as
    :class:`sklearn.decomposition.PCA` on the sparse matrix (ARPACK), which needs hundreds of passes over ``x``.
    """
    n, p = x.shape
    total, gram, step = np.zeros(p), np.zeros((p, p)), min(chunk_size, _GRAM_CHUNK)
    for start in range(0, n, step):
        block = x[start : start + step].toarray()
        total += block.sum(axis=0, dtype=np.float64)  # (x.mean(dtype=float64) would copy all of x to float64)
        gram += block.T @ block  # float32 products of one chunk, summed over chunks in float64
    mean = total / n
    cov = (gram - n * np.outer(mean, mean)) / max(n - 1, 1)
    values, vectors = linalg.eigh(cov, subset_by_index=[p - n_comp, p - 1], driver="evr")  # the top n_comp only
    values, vectors = np.clip(values[::-1], 0.0, None), np.ascontiguousarray(vectors[:, ::-1])
    biggest = np.argmax(np.abs(vectors), axis=0)
    vectors *= np.sign(vectors[biggest, np.arange(n_comp)])
    vectors = vectors.astype(np.float32)
    y = chunked_matmul(x, vectors, chunk_size)
    y -= (mean @ vectors).astype(np.float32)
    return y, float(values[0])


def sample_subgraph(
    graph: sparse.csr_matrix,
    seeds: np.ndarray,
    n_hops: int,
    *,
    fanout: int = 0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, sparse.coo_matrix]:
    """Nodes (seeds first) of the ``n_hops`` neighbourhood of ``seeds`` and the subgraph they induce.

    With ``fanout > 0`` each neighbour of a node is kept with probability ``fanout / degree`` (needs ``rng``).
    """
    nodes, frontier = seeds, seeds
    seen = np.zeros(graph.shape[0], dtype=bool)
    seen[seeds] = True
    for _ in range(n_hops):
        starts, stops = graph.indptr[frontier], graph.indptr[frontier + 1]
        neigh = (
            np.concatenate([graph.indices[a:b] for a, b in zip(starts, stops, strict=True)])
            if frontier.size
            else seeds[:0]
        )
        if fanout and neigh.size:
            degree = np.repeat(stops - starts, stops - starts)
            neigh = neigh[rng.random(neigh.size) < fanout / np.maximum(degree, 1)]
        new = np.unique(neigh[~seen[neigh]])
        seen[new] = True
        nodes, frontier = np.concatenate([nodes, new]), new
    return nodes, graph[nodes][:, nodes].tocoo()


class StratifiedSampler:
    """Endless minibatches with the same number of spots from every slice, each slice cycled in shuffled order.

    Parameters
    ----------
    slices
        Slice code of each spot.
    per_slice
        Spots drawn from each slice per batch (at most the slice's size).
    rng
        The only source of randomness.
    """

    def __init__(self, slices: np.ndarray, per_slice: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.groups = [np.flatnonzero(slices == k) for k in range(int(slices.max()) + 1)]
        self.per_slice = [min(per_slice, g.size) for g in self.groups]
        self._order = [rng.permutation(g) for g in self.groups]
        self._pos = [0] * len(self.groups)

    def state(self) -> dict:
        """Position of the sampler, to checkpoint."""
        return {"order": [o.copy() for o in self._order], "pos": list(self._pos)}

    def load_state(self, state: dict) -> None:
        """Restore a position saved by :meth:`state`."""
        self._order = [np.asarray(o) for o in state["order"]]
        self._pos = list(state["pos"])

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        out = []
        for k, group in enumerate(self.groups):
            b = self.per_slice[k]
            if self._pos[k] + b > group.size:
                self._order[k] = self.rng.permutation(group)
                self._pos[k] = 0
            out.append(self._order[k][self._pos[k] : self._pos[k] + b])
            self._pos[k] += b
        return np.concatenate(out)
