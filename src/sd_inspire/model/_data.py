"""Model inputs from a preprocessed table, and minibatches stratified over slices.

Only small per-spot matrices are kept dense (a fixed linear reduction of the expression and its neighbour
propagation); counts stay sparse and each minibatch densifies only its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import linalg, sparse

from sd_inspire._chunks import chunk_edges, is_lazy, map_row_blocks, matmul_rows, read_rows, row_blocks
from sd_inspire._constants import Key
from sd_inspire._utils import get_slices, measured_mask, values_are_counts
from sd_inspire.gr._propagate import normalized_adjacency

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anndata import AnnData

#: Rows densified at once to accumulate the Gram matrix of the large-data PCA.
_GRAM_CHUNK = 4096


@dataclass
class Reduction:
    """The linear reduction ``Y`` of the encoder's input, as fitted on the training slices.

    ``Y`` of a slice is its expression over the feature genes, made comparable within the slice (``"pearson"``:
    Pearson residuals standardised per gene; ``"lognorm"``: log-normalised values centred per gene), times
    ``axes`` (feature genes x components), divided by ``scale``. Only ``axes`` and ``scale`` come from the training
    slices, so the same map applies to new slices.
    """

    kind: str  # "pearson" or "lognorm"
    axes: np.ndarray  # feature genes x components, float32
    scale: float


@dataclass
class ModelData:
    """Everything the trainer reads, aligned on the rows of the table."""

    features: np.ndarray  # n x p float32: [Y, ÂY, ..., Â^k Y] with Y a reduction of the expression
    counts: Any  # n x G raw counts of the gene space: SciPy CSR, or a dask array when kept on disk
    library: np.ndarray  # n, counts over the gene space
    saturated: np.ndarray  # n, sum_g x log(x / l): the Poisson deviance's saturated term
    slices: np.ndarray  # n, int codes
    mask: np.ndarray  # S x G, genes each slice measured
    slice_names: list[str]
    genes: list[str]
    feature_genes: list[str]
    graph: sparse.csr_matrix | None = None  # the spatial graph, for sampled graph encoders
    n_base: int = 0  # width of Y (first block of `features`)
    gene_fraction: np.ndarray | None = None  # G, each gene's share of the counts of the slices that measured it
    slice_log_ratio: np.ndarray | None = None  # S x G, log of each slice's gene shares over the pooled ones
    values_are_counts: bool = True  # False: normalised values, fitted by a KL-divergence factorisation
    reduction: Reduction | None = None  # how Y was made from the expression, to make it again for other slices
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
    features: str = "pearson",
    chunk_size: int = 20_000,
) -> ModelData:
    """Build :class:`ModelData` from a table preprocessed by :func:`sd_inspire.pp.preprocess` with a graph.

    ``features`` is the reduction ``Y`` of the encoder's input: ``"pearson"``, principal components of the analytic
    Pearson residuals of the counts (:func:`pearson_pca`); ``"lognorm"``, of the log-normalised ``X``. Both are
    centred within each slice. A table of normalised values (no integer counts) is read from ``X`` for the count
    model too; residuals need counts, so it takes ``"lognorm"`` (:class:`~sd_inspire.model.InspireModel` sets it).
    """
    if Key.HIGHLY_VARIABLE not in adata.var:
        raise KeyError("`adata.var['highly_variable']` is missing: run `sd_inspire.pp.preprocess` first.")
    counts_given = values_are_counts(adata)
    if counts_given and Key.COUNTS not in adata.layers:
        raise KeyError(
            "`adata.layers['counts']` is missing: run `sd_inspire.pp.preprocess` on the raw counts (or on the "
            "normalised values, if that is all there is) first."
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

    # normalised values (no counts): the count model becomes a KL-divergence factorisation of the values in X
    layer = adata.layers[Key.COUNTS] if counts_given else adata.X
    # no column copy when the gene space is every gene (the model only reads the counts); on disk stays on disk
    counts = layer if hv.all() else layer[:, np.flatnonzero(hv)]
    if not is_lazy(counts):
        counts = sparse.csr_matrix(counts, dtype=np.float32)
    try:
        library, saturated, gene_totals = _library_and_saturated(counts, chunk_size, codes, len(slice_names))
    except InvalidCountsError as e:
        where = f"adata.layers[{str(Key.COUNTS)!r}]" if counts_given else "adata.X"
        raise ValueError(
            f"{where} holds {e.n_bad} negative, NaN or infinite values in the gene space (e.g. {e.value} for spot "
            f"{adata.obs_names[e.row]!r}, gene {str(genes[e.col])!r}): the count model needs finite, non-negative "
            "values. Fix or drop them before `sd_inspire.pp.preprocess`."
        ) from None
    empty = library <= 0
    if empty.any():
        raise ValueError(
            f"{int(empty.sum())} spots have no counts in the gene space (e.g. {adata.obs_names[np.flatnonzero(empty)[0]]!r}); "
            "filter them (`pp.preprocess(min_counts=...)`) or widen the gene space."
        )

    # Encoder features: genes measured by every slice (all of the gene space if none is shared by all)
    shared = mask.all(axis=0)
    feat_genes = shared if shared.sum() >= 2 else np.ones(genes.size, dtype=bool)
    n_comp = int(min(n_pcs, int(feat_genes.sum()) - 1, adata.n_obs - 1))
    if features == "pearson":
        y, first_variance, axes = pearson_pca(
            counts, gene_totals, codes, np.flatnonzero(feat_genes), n_comp, chunk_size
        )
    else:
        columns = np.flatnonzero(hv)[feat_genes]
        y, first_variance, axes = _lognorm_pca(adata, columns, codes, len(slice_names), n_comp, seed, chunk_size)
    scale = max(float(np.sqrt(first_variance)), 1e-8)
    y /= scale  # unit scale on the first component

    graph = sparse.csr_matrix(adata.obsp[connectivity_key])
    return ModelData(
        features=_propagated(y, graph, n_hops, chunk_size),
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
        gene_fraction=_gene_fraction(gene_totals.sum(axis=0), library, codes, mask),
        slice_log_ratio=_slice_log_ratio(gene_totals, mask),
        values_are_counts=bool(counts_given),
        reduction=Reduction(features, axes, scale),
    )


def _gene_fraction(gene_totals: np.ndarray, library: np.ndarray, codes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each gene's counts over the library sizes of the slices that measured it, normalised to sum to 1."""
    slice_library = np.bincount(codes, weights=library, minlength=mask.shape[0])
    exposure = mask.T.astype(np.float64) @ slice_library
    fraction = np.divide(gene_totals, exposure, out=np.zeros_like(gene_totals), where=exposure > 0)
    return fraction / max(fraction.sum(), 1e-300)


def _slice_log_ratio(gene_totals: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per slice and measured gene, log of the slice's share of counts on the gene over all slices' share.

    Shares are taken over the genes both measured (half a count added to each), and each slice's ratios are centred
    over its measured genes; 0 for genes a slice did not measure.
    """
    out = np.zeros(gene_totals.shape)
    for s in range(gene_totals.shape[0]):
        m = mask[s]
        if m.sum() < 2:
            continue
        own = gene_totals[s, m] + 0.5
        pooled = gene_totals[:, m].sum(axis=0) + 0.5
        ratio = np.log(own / own.sum()) - np.log(pooled / pooled.sum())
        out[s, m] = ratio - ratio.mean()
    return out


def _lognorm_pca(
    adata: AnnData, columns: np.ndarray, codes: np.ndarray, n_slices: int, n_comp: int, seed: int, chunk_size: int
) -> tuple[np.ndarray, float, np.ndarray]:
    """Principal components of the log-normalised ``X[:, columns]`` centred within slices, the first's variance, axes.

    The axes (genes x components) map the slice-centred expression to the components.
    """
    from sklearn.decomposition import PCA

    # no column copy when every gene is a feature (the expression is only read)
    x = adata.X if columns.size == adata.n_vars else adata.X[:, columns]
    if not is_lazy(x):
        x = sparse.csr_matrix(x, dtype=np.float32)
    if x.shape[0] * x.shape[1] <= 50_000_000 and not is_lazy(x):
        means = np.vstack([np.asarray(x[codes == k].mean(axis=0)).ravel() for k in range(n_slices)])
        pca = PCA(n_components=n_comp, svd_solver="randomized", random_state=seed)
        y = pca.fit_transform(x.toarray() - means[codes]).astype(np.float32)
        return y, float(pca.explained_variance_[0]), pca.components_.T.astype(np.float32)
    # large: exact PCA of the globally centred sparse matrix, then the per-slice centring on the projections
    y, first_variance, axes = _sparse_pca(x, n_comp, chunk_size)
    _centred_per_slice(y, codes, n_slices)
    return y, first_variance, axes


#: Overdispersion of the analytic Pearson residuals (Lause, Berens & Kobak 2021).
PEARSON_THETA = 100.0


def pearson_pca(
    counts: Any,
    gene_totals: np.ndarray,
    codes: np.ndarray,
    columns: np.ndarray,
    n_comp: int,
    chunk_size: int,
    theta: float = PEARSON_THETA,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Principal components of the analytic Pearson residuals of ``counts[:, columns]``, standardised within slices.

    For spot ``i`` of slice ``s`` and gene ``g``, ``μ_ig = n_i p_sg`` with ``n_i`` the spot's counts over the
    ``columns`` and ``p_sg`` the slice's share of counts on ``g`` (from ``gene_totals``, slices x genes);
    ``r_ig = (x_ig - μ_ig) / sqrt(μ_ig + μ_ig² / θ)``, clipped to ``±sqrt(n_s)`` (``n_s`` spots in the slice); 0
    where the slice has no counts on the gene. Unlike log-normalised values, the residuals carry little of the
    sequencing depth. A gene's residuals scale with ``sqrt(μ)``, so a slice-specific gene effect (or depth) would
    change their size from slice to slice: each gene is centred and scaled to unit variance within each slice (a
    gene constant in a slice is 0 there). The axes are the exact top eigenvectors of the pooled within-slice
    covariance, accumulated over dense row chunks (three passes: moments, covariance, projections; memory ``p²``
    plus one chunk), so the result depends neither on the chunking nor on a random start. Returns the projections,
    the variance of the first axis and the axes (genes x components).
    """
    n_slices = gene_totals.shape[0]
    args, step = _residual_standardisation(counts, gene_totals, codes, columns, chunk_size, theta)
    p = columns.size
    gram = np.zeros((p, p))
    for _, _, block_gram in map_row_blocks(counts, _block_residual_gram, rows=(codes,), args=args, chunk_size=step):
        gram += block_gram
    cov = gram / max(codes.size - n_slices, 1)
    values, vectors = _top_axes(cov, n_comp)
    y = _residual_projection(counts, codes, args, vectors, step)
    return y, float(values[0]), vectors.astype(np.float32)


def _residual_standardisation(
    counts: Any, gene_totals: np.ndarray, codes: np.ndarray, columns: np.ndarray, chunk_size: int, theta: float
) -> tuple[tuple, int]:
    """What standardises the Pearson residuals of ``counts[:, columns]`` within each slice (one pass: moments).

    Returns the ``args`` of :func:`_standardised_residuals` (the residuals' own, then each slice's means and
    inverse standard deviations per gene) and the rows per block (residuals are dense: a few copies of ``step x p``
    float64 at a time). See :func:`pearson_pca`.
    """
    n_slices = gene_totals.shape[0]
    totals = gene_totals[:, columns]
    share = totals / np.maximum(totals.sum(axis=1, keepdims=True), 1e-300)
    sizes = np.bincount(codes, minlength=n_slices).astype(np.float64)
    args = (columns, share, np.sqrt(sizes), theta)
    step = min(chunk_size, _GRAM_CHUNK)
    sums, squares = np.zeros((n_slices, columns.size)), np.zeros((n_slices, columns.size))
    for _, _, (block_sums, block_squares) in map_row_blocks(
        counts, _block_residual_moments, rows=(codes,), args=args, chunk_size=step
    ):
        sums += block_sums
        squares += block_squares
    means = sums / np.maximum(sizes, 1)[:, None]
    sd = np.sqrt(np.clip(squares / np.maximum(sizes, 1)[:, None] - means**2, 0.0, None))
    inv_sd = np.divide(1.0, sd, out=np.zeros_like(sd), where=sd > 1e-8)
    return (*args, means, inv_sd), step


def _residual_projection(counts: Any, codes: np.ndarray, args: tuple, axes: np.ndarray, step: int) -> np.ndarray:
    """The standardised residuals (``args`` of :func:`_residual_standardisation`) projected on ``axes``."""
    y = np.empty((codes.size, axes.shape[1]), dtype=np.float32)
    for start, stop, block_y in map_row_blocks(
        counts, _block_residual_projection, rows=(codes,), args=(*args, axes), chunk_size=step
    ):
        y[start:stop] = block_y
    return y


def _propagated(y: np.ndarray, graph: sparse.csr_matrix, n_hops: int, chunk_size: int) -> np.ndarray:
    """The encoder's input ``[Y, ÂY, ..., Â^k Y]`` (float32, contiguous) over the normalised ``graph``."""
    a_hat = normalized_adjacency(graph)
    blocks, cur = [y], y
    for _ in range(n_hops):
        cur = matmul_rows(a_hat, cur, chunk_size)
        blocks.append(cur)
    return np.ascontiguousarray(np.hstack(blocks), dtype=np.float32)


def _placed_columns(x: Any, where: np.ndarray, chunk_size: int) -> sparse.csr_matrix:
    """CSR ``n x len(where)``: column ``j`` holds ``x[:, where[j]]``, or zeros where ``where[j] < 0`` (read in blocks)."""
    present = where >= 0
    place = sparse.csr_matrix(
        (np.ones(int(present.sum()), dtype=np.float32), (where[present], np.flatnonzero(present))),
        shape=(x.shape[1], where.size),
    )
    blocks = [sparse.csr_matrix(block, dtype=np.float32) @ place for _, _, block in row_blocks(x, chunk_size)]
    return sparse.csr_matrix(sparse.vstack(blocks), dtype=np.float32)


def _residuals(
    block: sparse.csr_matrix, codes: np.ndarray, columns: np.ndarray, share: np.ndarray, clip: np.ndarray, theta: float
) -> np.ndarray:
    """Dense, clipped Pearson residuals of one row block (see :func:`pearson_pca`)."""
    x = block[:, columns].toarray().astype(np.float64)
    mu = x.sum(axis=1, keepdims=True) * share[codes]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (x - mu) / np.sqrt(mu + mu * mu / theta)
    r[mu <= 0] = 0.0
    bound = clip[codes][:, None]
    return np.clip(r, -bound, bound)


def _block_residual_moments(block: sparse.csr_matrix, codes: np.ndarray, *args: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice sums of the residuals of one row block and of their squares (``args`` of :func:`_residuals`)."""
    r = _residuals(block, codes, *args)
    onehot = _slice_indicator(codes, args[1].shape[0])
    return np.asarray(onehot @ r), np.asarray(onehot @ (r * r))


def _standardised_residuals(block: sparse.csr_matrix, codes: np.ndarray, *args: Any) -> np.ndarray:
    """Residuals of one row block standardised per slice: ``args`` of :func:`_residuals`, the means, 1 / sd."""
    *args, means, inv_sd = args
    return (_residuals(block, codes, *args) - means[codes]) * inv_sd[codes]


def _block_residual_gram(block: sparse.csr_matrix, codes: np.ndarray, *args: Any) -> np.ndarray:
    """``rᵀr`` of the standardised residuals of one row block."""
    r = _standardised_residuals(block, codes, *args)
    return r.T @ r


def _block_residual_projection(block: sparse.csr_matrix, codes: np.ndarray, *args: Any) -> np.ndarray:
    """Standardised residuals of one row block projected on the axes (the last of ``args``)."""
    *args, vectors = args
    return (_standardised_residuals(block, codes, *args) @ vectors).astype(np.float32)


def _slice_deviations(features: np.ndarray, codes: np.ndarray, n_slices: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows per slice, and per slice and column the sum of squared deviations from the slice's mean (float64)."""
    indicator = _slice_indicator(codes, n_slices)
    sizes = np.bincount(codes, minlength=n_slices).astype(np.float64)
    x = np.asarray(features, dtype=np.float64)
    means = (indicator @ x) / np.maximum(sizes, 1)[:, None]
    return sizes, np.clip(indicator @ (x * x) - sizes[:, None] * means**2, 0.0, None)


def within_slice_sd(features: np.ndarray, codes: np.ndarray, n_slices: int) -> np.ndarray:
    """Standard deviation of each column of ``features`` around its slice's mean, pooled over the slices."""
    _, deviations = _slice_deviations(features, codes, n_slices)
    return np.sqrt(deviations.sum(axis=0) / max(codes.size - n_slices, 1))


def match_input_scale(features: np.ndarray, codes: np.ndarray, n_slices: int, target_sd: np.ndarray) -> np.ndarray:
    """Per-slice factors that give each column of ``features`` (in place) the spread ``target_sd`` within each slice.

    The encoder's input of a new slice is rescaled, column by column, to the spread the reference's input had
    (adaptive normalisation of a frozen network's input, as AdaBN does for its normalisation layers): a technology
    with more noise per spot, or a panel that keeps less of the signal, otherwise feeds the frozen encoder inputs
    of another scale than those it was trained on. Columns without spread in a slice are left alone. Returns the
    factors (slices x columns).
    """
    sizes, deviations = _slice_deviations(features, codes, n_slices)
    sd = np.sqrt(deviations / np.maximum(sizes - 1, 1)[:, None])
    factors = np.divide(target_sd, sd, out=np.ones_like(sd), where=sd > 1e-8)
    features *= factors.astype(features.dtype)[codes]
    return factors


def _centred_per_slice(y: np.ndarray, codes: np.ndarray, n_slices: int) -> None:
    """Subtract from each row of ``y`` (in place) the mean of its slice's rows."""
    y -= np.vstack([y[codes == k].mean(axis=0) for k in range(n_slices)])[codes]


def _slice_indicator(codes: np.ndarray, n_slices: int) -> sparse.csr_matrix:
    """Sparse slices x rows indicator: ``indicator @ rows`` sums the rows of each slice."""
    return sparse.csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_slices, codes.size))


def _library_and_saturated(
    counts: Any, chunk_size: int, codes: np.ndarray | None = None, n_slices: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Library size ``l`` and ``sum_g x log(x / l)`` of each row, and each gene's total count per slice, in one pass.

    ``sum_g x log(x / l)`` is the Poisson deviance's saturated term.
    """
    library = np.empty(counts.shape[0], dtype=np.float32)
    saturated = np.zeros(counts.shape[0], dtype=np.float32)
    gene_totals = np.zeros((n_slices, counts.shape[1]))
    codes = np.zeros(counts.shape[0], dtype=np.int64) if codes is None else codes
    for start, stop, (lib, sat, genes, bad) in map_row_blocks(
        counts, _block_library_and_saturated, rows=(codes,), args=(n_slices,), chunk_size=chunk_size
    ):
        if bad is not None:  # the likelihood of a negative or non-finite count is undefined: NaN everywhere after
            n_bad, row, col, value = bad
            raise InvalidCountsError(n_bad, start + row, col, value)
        library[start:stop], saturated[start:stop] = lib, sat
        gene_totals += genes
    return library, saturated, gene_totals


class InvalidCountsError(ValueError):
    """Counts that are negative, NaN or infinite; the caller names the table, layer, spot and gene."""

    def __init__(self, n_bad: int, row: int, col: int, value: float) -> None:
        super().__init__(f"{n_bad} values are negative, NaN or infinite (row {row}, column {col}: {value})")
        self.n_bad, self.row, self.col, self.value = n_bad, row, col, value


def _block_library_and_saturated(
    block: sparse.csr_matrix, codes: np.ndarray, n_slices: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    block.eliminate_zeros()
    rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
    invalid = ~np.isfinite(block.data) | (block.data < 0)
    if invalid.any():
        first = int(np.flatnonzero(invalid)[0])
        bad = (int(invalid.sum()), int(rows[first]), int(block.indices[first]), float(block.data[first]))
        return None, None, None, bad
    lib = np.bincount(rows, weights=block.data, minlength=block.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):  # empty rows are reported by the caller
        terms = block.data * np.log(block.data / lib[rows])
    genes = np.asarray((_slice_indicator(codes, n_slices) @ block).todense(), dtype=np.float64)
    return lib, np.bincount(rows, weights=terms, minlength=block.shape[0]), genes, None


def _sparse_pca(x: Any, n_comp: int, chunk_size: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Projections on the ``n_comp`` first principal axes of the centred ``x``, the first axis's variance, the axes.

    The exact eigenvectors of the covariance, from the Gram matrix ``xᵀx`` accumulated over dense row chunks
    (BLAS; one pass over ``x``, memory ``p²`` plus one chunk; only the top eigenpairs are solved for), with
    scikit-learn's sign convention (the largest loading of each axis is positive): the same axes as
    :class:`sklearn.decomposition.PCA` on the sparse matrix (ARPACK), which needs hundreds of passes over ``x``.
    """
    step = min(chunk_size, _GRAM_CHUNK)
    # float32 products of one chunk, summed over chunks in float64
    mean, cov = _mean_and_covariance((m for _, _, m in map_row_blocks(x, _block_gram, chunk_size=step)), x.shape)
    values, vectors = _top_axes(cov, n_comp)
    vectors = vectors.astype(np.float32)
    y = matmul_rows(x, vectors, chunk_size)
    y -= (mean @ vectors).astype(np.float32)
    return y, float(values[0]), vectors


def principal_axes(x: np.ndarray, n_comp: int, chunk_size: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the first ``n_comp`` principal axes (columns, float32) of the rows of dense ``x``.

    Axes beyond the rank of ``x`` (``n_comp`` > its width) are zero columns.
    """
    n, p = x.shape
    blocks = (np.asarray(x[a : a + chunk_size], dtype=np.float64) for a in range(0, n, chunk_size))
    mean, cov = _mean_and_covariance(((b.sum(axis=0), b.T @ b) for b in blocks), x.shape)
    axes = np.zeros((p, n_comp), dtype=np.float32)
    k = min(n_comp, p)
    axes[:, :k] = _top_axes(cov, k)[1]
    return mean.astype(np.float32), axes


def _mean_and_covariance(moments: Any, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Column means and covariance of an ``n x p`` matrix from ``(column sums, xᵀx)`` of its row blocks."""
    n, p = shape
    total, gram = np.zeros(p), np.zeros((p, p))
    for block_total, block_gram in moments:
        total += block_total
        gram += block_gram
    mean = total / n
    return mean, (gram - n * np.outer(mean, mean)) / max(n - 1, 1)


def _top_axes(cov: np.ndarray, n_comp: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_comp`` largest eigenvalues (decreasing) of ``cov`` and their eigenvectors (columns).

    Only those are solved for; signs follow scikit-learn (the largest loading of each axis is positive).
    """
    p = cov.shape[0]
    values, vectors = linalg.eigh(cov, subset_by_index=[p - n_comp, p - 1], driver="evr")
    values, vectors = np.clip(values[::-1], 0.0, None), np.ascontiguousarray(vectors[:, ::-1])
    biggest = np.argmax(np.abs(vectors), axis=0)
    vectors *= np.sign(vectors[biggest, np.arange(n_comp)])
    return values, vectors


def _block_gram(rows: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Column sums (float64; ``x.mean`` would copy all of ``x`` to float64) and ``xᵀx`` of one dense row chunk."""
    block = rows.toarray()
    return block.sum(axis=0, dtype=np.float64), block.T @ block


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
    counts
        Count matrix (SciPy CSR) whose rows :meth:`next_batch` returns with the indices.
    shard
        ``(rank, n_ranks)``: draw only from this rank's share of every slice (data-parallel training).
    """

    def __init__(
        self,
        slices: np.ndarray,
        per_slice: int,
        rng: np.random.Generator,
        counts: sparse.csr_matrix | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.rng = rng
        self.counts = counts
        rank, size = shard
        self.groups = [np.flatnonzero(slices == k)[rank::size] for k in range(int(slices.max()) + 1)]
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

    def next_batch(self) -> tuple[np.ndarray, sparse.csr_matrix]:
        """Indices of the next minibatch and their rows of the counts."""
        idx = next(self)
        return idx, self.counts[idx]


class BufferedSampler(StratifiedSampler):
    """Stratified minibatches from counts kept on disk, read a few blocks of rows per slice at a time.

    Random single rows of an on-disk matrix cost a chunk read each, so each slice's spots are cut into blocks along
    the matrix's chunks; a buffer holds ``blocks_per_slice`` blocks of each slice, drawn in shuffled order, and
    minibatches draw each slice's spots without replacement from its buffer, which is refilled when exhausted.
    Memory is the buffer, not the matrix. A spot is drawn at most once per pass over its slice's blocks (the
    few left in a buffer too small for a minibatch are skipped, as a sampler drops an incomplete last batch).

    Parameters
    ----------
    slices
        Slice code of each spot.
    per_slice
        Spots drawn from each slice per batch.
    rng
        The only source of randomness.
    counts
        The count matrix (a dask array of row chunks).
    shard
        ``(rank, n_ranks)``: draw only from this rank's share of every slice's blocks (data-parallel training).
    buffer_rows
        Rows held in memory over all slices (at least two blocks per slice).
    """

    def __init__(
        self,
        slices: np.ndarray,
        per_slice: int,
        rng: np.random.Generator,
        counts: Any,
        shard: tuple[int, int] = (0, 1),
        *,
        buffer_rows: int = 65_536,
    ) -> None:
        self.rng, self.counts = rng, counts
        rank, size = shard
        self.groups = [np.flatnonzero(slices == k) for k in range(int(slices.max()) + 1)]
        # a rank reads whole blocks of its own: every size-th block of each slice (its rows if too few blocks)
        self.blocks = []
        for g in self.groups:
            blocks = self._cut(g, chunk_edges(counts))
            self.blocks.append(blocks[rank::size] if len(blocks) >= size else [b[rank::size] for b in blocks])
        self.groups = [np.concatenate(b) for b in self.blocks]
        largest = max(max(b.size for b in blocks) for blocks in self.blocks)
        self.blocks_per_slice = max(2, buffer_rows // max(1, len(self.groups) * largest))
        self.per_slice = [min(per_slice, g.size) for g in self.groups]
        self._block_order = [rng.permutation(len(b)) for b in self.blocks]
        self._block_pos = [0] * len(self.groups)
        self._rows: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(self.groups)
        self._counts: list[sparse.csr_matrix | None] = [None] * len(self.groups)
        self._pos = [0] * len(self.groups)
        self._buffer_blocks: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(self.groups)
        self._buffer_order: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(self.groups)
        for k in range(len(self.groups)):
            self._refill(k)

    @staticmethod
    def _cut(group: np.ndarray, edges: np.ndarray) -> list[np.ndarray]:
        """Rows of one slice cut at the matrix's chunk edges (a block never spans two chunks)."""
        cuts = np.flatnonzero(np.diff(np.searchsorted(edges, group, side="right")))
        return [b for b in np.split(group, cuts + 1) if b.size]

    def _refill(self, k: int, block_ids: np.ndarray | None = None, order: np.ndarray | None = None) -> None:
        """Load the next blocks of slice ``k`` (or the given ones) and shuffle their rows (or apply ``order``)."""
        if block_ids is None:
            take, ids = min(self.blocks_per_slice, len(self.blocks[k])), []
            while len(ids) < take:
                if self._block_pos[k] >= len(self.blocks[k]):
                    self._block_order[k] = self.rng.permutation(len(self.blocks[k]))
                    self._block_pos[k] = 0
                ids.append(int(self._block_order[k][self._block_pos[k]]))
                self._block_pos[k] += 1
            block_ids = np.asarray(ids)
        blocks = [self.blocks[k][i] for i in block_ids]
        rows = np.concatenate(blocks)
        parts = []
        for b in blocks:
            part = read_rows(self.counts, int(b[0]), int(b[-1]) + 1)
            parts.append(part if part.shape[0] == b.size else part[b - b[0]])  # contiguous: no copy
        order = self.rng.permutation(rows.size) if order is None else np.asarray(order)
        self._buffer_blocks[k], self._buffer_order[k] = block_ids, order
        self._rows[k] = rows[order]
        # rows stay in reading order; each minibatch gathers its own few (no permuted copy of the buffer)
        self._counts[k] = parts[0] if len(parts) == 1 else sparse.vstack(parts, format="csr")
        self._pos[k] = 0

    def state(self) -> dict:
        """Position of the sampler, to checkpoint (the buffer is re-read on resume)."""
        return {
            "block_order": [o.copy() for o in self._block_order],
            "block_pos": list(self._block_pos),
            "buffer_blocks": [b.copy() for b in self._buffer_blocks],
            "buffer_order": [o.copy() for o in self._buffer_order],
            "pos": list(self._pos),
        }

    def load_state(self, state: dict) -> None:
        """Restore a position saved by :meth:`state`."""
        self._block_order = [np.asarray(o) for o in state["block_order"]]
        self._block_pos = list(state["block_pos"])
        for k in range(len(self.groups)):
            self._refill(k, np.asarray(state["buffer_blocks"][k]), np.asarray(state["buffer_order"][k]))
        self._pos = list(state["pos"])

    def next_batch(self) -> tuple[np.ndarray, sparse.csr_matrix]:
        """Indices of the next minibatch and their rows of the counts."""
        idx, counts = [], []
        for k in range(len(self.groups)):
            b = self.per_slice[k]
            if self._pos[k] + b > self._rows[k].size:
                self._refill(k)
            b = min(b, self._rows[k].size)
            idx.append(self._rows[k][self._pos[k] : self._pos[k] + b])
            counts.append(self._counts[k][self._buffer_order[k][self._pos[k] : self._pos[k] + b]])
            self._pos[k] += b
        return np.concatenate(idx), sparse.vstack(counts, format="csr")

    def __next__(self) -> np.ndarray:
        return self.next_batch()[0]


def make_sampler(
    counts: Any,
    slices: np.ndarray,
    per_slice: int,
    rng: np.random.Generator,
    shard: tuple[int, int] = (0, 1),
    names: list[str] | None = None,
) -> StratifiedSampler:
    """The minibatch sampler for counts in memory (rows drawn anywhere) or on disk (block buffer).

    Raises
    ------
    ValueError
        If a slice has fewer spots than there are training processes (a rank would have nothing of it).
    """
    sizes = np.bincount(slices)
    if (sizes < shard[1]).any():
        k = int(np.argmin(sizes))
        name = repr(names[k]) if names is not None else k
        raise ValueError(f"Slice {name} has {int(sizes[k])} spots, fewer than the {shard[1]} training processes.")
    if is_lazy(counts):
        return BufferedSampler(slices, per_slice, rng, counts, shard)
    return StratifiedSampler(slices, per_slice, rng, counts, shard)


def prepare_query(
    adata: AnnData,
    *,
    genes: list[str],
    feature_genes: list[str],
    reduction: Reduction,
    slice_key: str | None,
    n_hops: int,
    connectivity_key: str,
    values_are_counts_: bool = True,
    chunk_size: int = 20_000,
) -> ModelData:
    """:class:`ModelData` of new slices in a trained model's gene space and input space.

    The count model's genes are the model's ``genes``: those the query lacks are masked (not measured), those the
    model never saw are left out. The encoder's input ``Y`` is the query's expression over ``feature_genes`` made
    comparable within each of its slices as in :func:`prepare` (per-slice Pearson residuals standardised per gene,
    or log-normalised values centred per gene), projected on the model's axes (``reduction``) and propagated over
    the query's own graph. A feature gene the query lacks contributes nothing.

    Raises
    ------
    ValueError
        If the query shares fewer than two genes with the model, holds normalised values where the model was
        trained on counts, or has spots without counts in the model's genes.
    """
    counts_given = values_are_counts(adata)
    if values_are_counts_ and not counts_given:
        raise ValueError(
            "The query holds normalised values, but the model was trained on counts: map raw counts "
            "(`layers['counts']`, see `sd_inspire.pp.preprocess`)."
        )
    layer = adata.layers[Key.COUNTS] if counts_given and Key.COUNTS in adata.layers else adata.X
    labels = get_slices(adata, slice_key)
    codes = labels.cat.codes.to_numpy().astype(np.int64)
    slice_names = [str(c) for c in labels.cat.categories]

    where = adata.var_names.get_indexer(genes)  # -1: a gene of the model the query lacks
    present = where >= 0
    if present.sum() < 2:
        raise ValueError(
            f"The query shares {int(present.sum())} of the model's {len(genes)} genes; at least two are needed (are "
            "the gene names of the same kind, e.g. symbols in both, not symbols in one and Ensembl ids in the other?)."
        )
    counts = _placed_columns(layer, where, chunk_size)
    measured = measured_mask(adata, labels).to_numpy(dtype=bool)  # query genes x slices
    mask = np.zeros((len(slice_names), len(genes)), dtype=bool)
    mask[:, present] = measured[where[present]].T
    try:
        library, saturated, gene_totals = _library_and_saturated(counts, chunk_size, codes, len(slice_names))
    except InvalidCountsError as e:
        raise ValueError(
            f"The query's counts hold {e.n_bad} negative, NaN or infinite values in the model's genes (e.g. {e.value} "
            f"for spot {adata.obs_names[e.row]!r}, gene {genes[e.col]!r})."
        ) from None
    empty = library <= 0
    if empty.any():
        raise ValueError(
            f"{int(empty.sum())} spots of the query have no counts in the model's genes (e.g. "
            f"{adata.obs_names[np.flatnonzero(empty)[0]]!r}): filter them (`pp.preprocess(min_counts=...)`)."
        )

    columns = pd.Index(genes).get_indexer(feature_genes)
    n_features_present = int(present[columns].sum())
    if n_features_present < 2:
        raise ValueError(
            f"The query measures {n_features_present} of the model's {len(feature_genes)} input genes; at least two "
            "are needed to place its spots in the model's input space."
        )
    if reduction.kind == "pearson":
        args, step = _residual_standardisation(counts, gene_totals, codes, columns, chunk_size, PEARSON_THETA)
        y = _residual_projection(counts, codes, args, reduction.axes.astype(np.float64), step)
    else:
        x = _placed_columns(adata.X, adata.var_names.get_indexer(feature_genes), chunk_size)
        y = matmul_rows(x, reduction.axes, chunk_size)
        _centred_per_slice(y, codes, len(slice_names))
    y /= reduction.scale

    if connectivity_key not in adata.obsp:
        raise KeyError(f"No graph `adata.obsp[{connectivity_key!r}]`: run `sd_inspire.gr.spatial_neighbors` first.")
    graph = sparse.csr_matrix(adata.obsp[connectivity_key])
    return ModelData(
        features=_propagated(y, graph, n_hops, chunk_size),
        counts=counts,
        library=library,
        saturated=saturated,
        slices=codes,
        mask=mask,
        slice_names=slice_names,
        genes=list(genes),
        feature_genes=list(feature_genes),
        graph=graph,
        n_base=y.shape[1],
        values_are_counts=bool(counts_given),
        reduction=reduction,
        # the query slices' counts per gene: where its gene effects start (InspireModel._match_query_effects)
        extra={
            "genes_present": int(present.sum()),
            "feature_genes_present": n_features_present,
            "gene_totals": gene_totals,
        },
    )
