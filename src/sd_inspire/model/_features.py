"""The numerics of the model's inputs: count statistics, the reduction ``Y`` and its propagation, row-block PCA.

Plain numpy and SciPy on matrices (dense, SciPy sparse or dask arrays read in row blocks); nothing here reads an
AnnData (that is :mod:`sd_inspire.model._setup`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import linalg, sparse

from sd_inspire._chunks import DEFAULT_CHUNK_SIZE, is_lazy, map_row_blocks, matmul_rows, row_blocks
from sd_inspire._graph import normalized_adjacency

#: Rows densified at once to accumulate the Gram matrix of the large-data PCA.
_GRAM_CHUNK = 4096

#: Rows of a dense residual block transformed at once: the arithmetic runs in cache, not over the whole block.
_CACHE_ROWS = 256

#: Memory allowed for the residual Gram matrices of all slices at once (``p x p`` float64 each), for the PCA of
#: the Pearson residuals in one pass; beyond it, two passes.
SLICE_GRAM_BYTES = 1 << 30

#: Largest matrix (spots x genes) whose log-normalised PCA runs dense (randomised SVD); beyond it, row blocks.
DENSE_PCA_MAX_ENTRIES = 50_000_000


def gene_fractions(gene_totals: np.ndarray, library: np.ndarray, codes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each gene's counts over the library sizes of the slices that measured it, normalised to sum to 1."""
    slice_library = np.bincount(codes, weights=library, minlength=mask.shape[0])
    exposure = mask.T.astype(np.float64) @ slice_library
    fraction = np.divide(gene_totals, exposure, out=np.zeros_like(gene_totals), where=exposure > 0)
    return fraction / max(fraction.sum(), 1e-300)


def slice_log_ratios(gene_totals: np.ndarray, mask: np.ndarray) -> np.ndarray:
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


def lognorm_pca(
    x: Any, codes: np.ndarray, n_slices: int, n_comp: int, seed: int, chunk_size: int
) -> tuple[np.ndarray, float, np.ndarray]:
    """Principal components of log-normalised ``x`` (spots x genes) centred within slices, the first's variance, axes.

    The axes (genes x components) map the slice-centred expression to the components.
    """
    from sklearn.decomposition import PCA

    if not is_lazy(x):
        x = sparse.csr_matrix(x, dtype=np.float32)
    if x.shape[0] * x.shape[1] <= DENSE_PCA_MAX_ENTRIES and not is_lazy(x):
        means = np.vstack([np.asarray(x[codes == k].mean(axis=0)).ravel() for k in range(n_slices)])
        pca = PCA(n_components=n_comp, svd_solver="randomized", random_state=seed)
        y = pca.fit_transform(x.toarray() - means[codes]).astype(np.float32)
        return y, float(pca.explained_variance_[0]), pca.components_.T.astype(np.float32)
    # large: exact PCA of the globally centred sparse matrix, then the per-slice centring on the projections
    y, first_variance, axes = sparse_pca(x, n_comp, chunk_size)
    centre_per_slice(y, codes, n_slices)
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
    covariance, accumulated over dense row chunks, so the result depends neither on the chunking nor on a random
    start. Two passes over the counts: each slice's residual sums and Gram matrix (one ``p x p`` per slice whose
    rows are being read; standardising a slice's Gram needs only its own moments), then the projections. Where the
    slices' Gram matrices could exceed :data:`SLICE_GRAM_BYTES` (many slices with interleaved rows and a wide
    panel), the moments and the covariance take a pass each. Returns the projections, the variance of the first
    axis and the axes (genes x components).
    """
    n_slices = gene_totals.shape[0]
    p = columns.size
    if n_slices * p * p * 8 <= SLICE_GRAM_BYTES:
        args, step, gram = _residual_statistics(counts, gene_totals, codes, columns, chunk_size, theta, True)
    else:
        args, step, _ = _residual_statistics(counts, gene_totals, codes, columns, chunk_size, theta, False)
        gram = np.zeros((p, p))
        for _, _, block_gram in map_row_blocks(counts, _block_residual_gram, rows=(codes,), args=args, chunk_size=step):
            gram += block_gram
    cov = gram / max(codes.size - n_slices, 1)
    values, vectors = _top_axes(cov, n_comp)
    y = residual_projection(counts, codes, args, vectors, step)
    return y, float(values[0]), vectors.astype(np.float32)


def residual_standardisation(
    counts: Any, gene_totals: np.ndarray, codes: np.ndarray, columns: np.ndarray, chunk_size: int, theta: float
) -> tuple[tuple, int]:
    """What standardises the Pearson residuals of ``counts[:, columns]`` within each slice (one pass: moments).

    Returns the ``args`` of :func:`_residuals` (the residuals' own, then each slice's means and
    inverse standard deviations per gene) and the rows per block (residuals are dense: a few copies of ``step x p``
    float64 at a time). See :func:`pearson_pca`.
    """
    args, step, _ = _residual_statistics(counts, gene_totals, codes, columns, chunk_size, theta, False)
    return args, step


def _residual_statistics(
    counts: Any,
    gene_totals: np.ndarray,
    codes: np.ndarray,
    columns: np.ndarray,
    chunk_size: int,
    theta: float,
    with_gram: bool,
) -> tuple[tuple, int, np.ndarray | None]:
    """The ``args`` and block rows of :func:`residual_standardisation`, and the residuals' pooled Gram matrix.

    One pass over the residuals; the Gram matrix of the standardised residuals (pooled over slices) only if
    ``with_gram``, else ``None``. Each slice's sums (and squares, or Gram matrix) are accumulated while its rows are
    read and folded in once its last row has passed: ``D_s (G_s - n_s m_s m_sᵀ) D_s`` with ``m_s`` its means and
    ``D_s`` its inverse standard deviations.
    """
    n_slices, p = gene_totals.shape[0], columns.size
    totals = gene_totals[:, columns]
    share = totals / np.maximum(totals.sum(axis=1, keepdims=True), 1e-300)
    sizes = np.bincount(codes, minlength=n_slices).astype(np.float64)
    args = (columns, share, np.sqrt(sizes), theta)
    step = min(chunk_size, _GRAM_CHUNK)
    last_row = np.full(n_slices, -1)
    present, first_seen = np.unique(codes[::-1], return_index=True)
    last_row[present] = codes.size - 1 - first_seen
    means, inv_sd = np.zeros((n_slices, p)), np.zeros((n_slices, p))
    gram = np.zeros((p, p)) if with_gram else None
    open_sums: dict[int, list[np.ndarray]] = {}
    for _, stop, parts in map_row_blocks(
        counts, _block_residual_sums, rows=(codes,), args=(*args, with_gram), chunk_size=step
    ):
        for s, block_sums, block_products in parts:
            if s in open_sums:
                open_sums[s][0] += block_sums
                open_sums[s][1] += block_products
            else:
                open_sums[s] = [block_sums, block_products]
        for s in [s for s in open_sums if last_row[s] < stop]:
            sums, products = open_sums.pop(s)
            n = max(sizes[s], 1.0)
            means[s] = sums / n
            squares = np.diagonal(products).copy() if with_gram else products
            sd = np.sqrt(np.clip(squares / n - means[s] ** 2, 0.0, None))
            inv_sd[s] = np.divide(1.0, sd, out=np.zeros_like(sd), where=sd > 1e-8)
            if with_gram:
                products -= n * np.outer(means[s], means[s])
                gram += inv_sd[s][:, None] * products * inv_sd[s][None, :]
    return (*args, means, inv_sd), step, gram


def residual_projection(counts: Any, codes: np.ndarray, args: tuple, axes: np.ndarray, step: int) -> np.ndarray:
    """The standardised residuals (``args`` of :func:`residual_standardisation`) projected on ``axes``."""
    y = np.empty((codes.size, axes.shape[1]), dtype=np.float32)
    for start, stop, block_y in map_row_blocks(
        counts, _block_residual_projection, rows=(codes,), args=(*args, axes), chunk_size=step
    ):
        y[start:stop] = block_y
    return y


def propagate_features(y: np.ndarray, graph: sparse.csr_matrix, n_hops: int, chunk_size: int) -> np.ndarray:
    """The encoder's input ``[Y, ÂY, ..., Â^k Y]`` (float32, contiguous) over the normalised ``graph``."""
    a_hat = normalized_adjacency(graph)
    blocks, cur = [y], y
    for _ in range(n_hops):
        cur = matmul_rows(a_hat, cur, chunk_size)
        blocks.append(cur)
    return np.ascontiguousarray(np.hstack(blocks), dtype=np.float32)


def placed_columns(x: Any, where: np.ndarray, chunk_size: int) -> sparse.csr_matrix:
    """CSR ``n x len(where)``: column ``j`` holds ``x[:, where[j]]``, or zeros where ``where[j] < 0`` (read in blocks)."""
    present = where >= 0
    place = sparse.csr_matrix(
        (np.ones(int(present.sum()), dtype=np.float32), (where[present], np.flatnonzero(present))),
        shape=(x.shape[1], where.size),
    )
    blocks = [sparse.csr_matrix(block, dtype=np.float32) @ place for _, _, block in row_blocks(x, chunk_size)]
    return sparse.csr_matrix(sparse.vstack(blocks), dtype=np.float32)


def _residuals(
    block: sparse.csr_matrix,
    codes: np.ndarray,
    columns: np.ndarray,
    share: np.ndarray,
    clip: np.ndarray,
    theta: float,
    means: np.ndarray | None = None,
    inv_sd: np.ndarray | None = None,
) -> np.ndarray:
    """Dense, clipped Pearson residuals of one row block (see :func:`pearson_pca`).

    With each slice's ``means`` and ``inv_sd`` (slices x genes), standardised within slices.
    """
    if not np.array_equal(columns, np.arange(block.shape[1])):  # no copy when every column is taken in order
        block = block[:, columns]
    r = block.astype(np.float64).toarray()  # one dense copy, not a float32 one and then a float64 one
    library = r.sum(axis=1, keepdims=True)
    bound = clip[codes][:, None]
    # (x - μ) / sqrt(μ + μ² / θ), in place and a few rows at a time: copies of the whole block would cost more
    # than the arithmetic
    for start in range(0, r.shape[0], _CACHE_ROWS):
        rows = slice(start, start + _CACHE_ROWS)
        part, part_codes = r[rows], codes[rows]
        mu = library[rows] * share[part_codes]
        part -= mu
        empty = mu <= 0
        denominator = np.multiply(mu, mu)
        denominator /= theta
        denominator += mu
        np.sqrt(denominator, out=denominator)
        with np.errstate(divide="ignore", invalid="ignore"):
            part /= denominator
        part[empty] = 0.0
        np.clip(part, -bound[rows], bound[rows], out=part)
        if means is not None:
            part -= means[part_codes]
            part *= inv_sd[part_codes]
    return r


def _block_residual_sums(block: sparse.csr_matrix, codes: np.ndarray, *args: Any) -> list[tuple]:
    """``(slice, sums, products)`` of the residuals of one row block, for each slice in the block.

    ``args``: those of :func:`_residuals`, then whether ``products`` are Gram matrices ``rᵀr`` or sums of squares.
    """
    *args, with_gram = args
    r = _residuals(block, codes, *args)
    parts, present = [], np.unique(codes)
    for s in present:
        part = r if present.size == 1 else r[codes == s]
        parts.append((int(s), part.sum(axis=0), part.T @ part if with_gram else np.einsum("ij,ij->j", part, part)))
    return parts


def _block_residual_gram(block: sparse.csr_matrix, codes: np.ndarray, *args: Any) -> np.ndarray:
    """``rᵀr`` of the standardised residuals of one row block."""
    r = _residuals(block, codes, *args)
    return r.T @ r


def _block_residual_projection(block: sparse.csr_matrix, codes: np.ndarray, *args: Any) -> np.ndarray:
    """Standardised residuals of one row block projected on the axes (the last of ``args``)."""
    *args, vectors = args
    return (_residuals(block, codes, *args) @ vectors).astype(np.float32)


def _slice_deviations(features: np.ndarray, codes: np.ndarray, n_slices: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows per slice, and per slice and column the sum of squared deviations from the slice's mean (float64)."""
    indicator = slice_indicator(codes, n_slices)
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


def centre_per_slice(y: np.ndarray, codes: np.ndarray, n_slices: int) -> None:
    """Subtract from each row of ``y`` (in place) the mean of its slice's rows."""
    y -= np.vstack([y[codes == k].mean(axis=0) for k in range(n_slices)])[codes]


def slice_indicator(codes: np.ndarray, n_slices: int) -> sparse.csr_matrix:
    """Sparse slices x rows indicator: ``indicator @ rows`` sums the rows of each slice."""
    return sparse.csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_slices, codes.size))


def library_and_saturated(
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
    genes = np.asarray((slice_indicator(codes, n_slices) @ block).todense(), dtype=np.float64)
    return lib, np.bincount(rows, weights=terms, minlength=block.shape[0]), genes, None


def sparse_pca(x: Any, n_comp: int, chunk_size: int) -> tuple[np.ndarray, float, np.ndarray]:
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


def principal_axes(x: np.ndarray, n_comp: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the first ``n_comp`` principal axes (columns, float32) of the rows of dense ``x``.

    Axes beyond the rank of ``x`` (``n_comp`` > its width) are zero columns.
    """
    p = x.shape[1]
    mean, cov = _dense_mean_and_covariance(x, chunk_size)
    axes = np.zeros((p, n_comp), dtype=np.float32)
    k = min(n_comp, p)
    axes[:, :k] = _top_axes(cov, k)[1]
    return mean.astype(np.float32), axes


def multiscale_axes(
    features: np.ndarray, n_base: int, n_comp: int, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and principal axes of ``[Y, ÂY, ..., Â^k Y]`` with every hop weighted equally, in the input's coordinates.

    ``features`` holds blocks of ``n_base`` columns, one per hop. Each block is scaled to the same total variance (the
    most smoothed block's over the number of blocks, so the components keep that block's scale), the principal axes
    of the scaled input are found, and the scaling is folded into them: ``(features - mean) @ axes`` are those
    components. Structure that every hop holds (tissue domains) leads them; structure only the unsmoothed block holds
    (cell types that neighbours do not share) is kept where it is strong. Axes beyond the rank are zero columns.
    """
    p = features.shape[1]
    n_blocks = max(p // max(n_base, 1), 1)
    mean, cov = _dense_mean_and_covariance(features, chunk_size)
    block_variance = np.add.reduceat(np.diag(cov), np.arange(0, p, p // n_blocks))
    target = block_variance[-1] / n_blocks
    scale = np.repeat(np.sqrt(target / np.maximum(block_variance, 1e-30)), p // n_blocks)
    scale[block_variance.repeat(p // n_blocks) <= 0] = 0.0  # a constant block carries nothing
    axes = np.zeros((p, n_comp), dtype=np.float32)
    k = min(n_comp, p)
    axes[:, :k] = scale[:, None] * _top_axes(scale[:, None] * cov * scale[None, :], k)[1]
    return mean.astype(np.float32), axes


def _dense_mean_and_covariance(x: np.ndarray, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Column means and covariance of dense ``x``, accumulated over row chunks in float64."""
    blocks = (np.asarray(x[a : a + chunk_size], dtype=np.float64) for a in range(0, x.shape[0], chunk_size))
    return _mean_and_covariance(((b.sum(axis=0), b.T @ b) for b in blocks), x.shape)


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
