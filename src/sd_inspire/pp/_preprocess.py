"""Quality control, per-slice highly variable genes, gene space and log-normalisation."""

from __future__ import annotations

import inspect
import warnings
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from sd_inspire._chunks import is_lazy, map_row_blocks, row_blocks
from sd_inspire._constants import Key
from sd_inspire._docs import d
from sd_inspire._logging import log_added, logger, timed
from sd_inspire._utils import (
    check_counts,
    check_unique_obs_names,
    get_slices,
    get_table,
    maybe_copy,
    measured_mask,
)
from sd_inspire._validate import check_choice, check_integer, check_number

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spatialdata import SpatialData

#: Non-integer input whose maximum exceeds this is taken to be normalised but not log-transformed.
_LOG_SCALE_MAX = 50.0
#: Columns of ``var`` that :func:`preprocess` writes besides ``Key.HIGHLY_VARIABLE`` and ``Key.MITO``.
HV_RANK = "highly_variable_rank"  # also a varm key: each slice's ranks
HV_NBATCHES = "highly_variable_nbatches"
#: The gene space and settings that :func:`preprocess` writes (``var`` columns, ``uns`` keys), removed by
#: :func:`sd_inspire.pp.reset_counts`; ``var["mt"]``, ``varm`` and the ``obs`` QC columns stay (each run rewrites them).
PREPROCESS_VAR = (Key.HIGHLY_VARIABLE, HV_RANK, HV_NBATCHES)
PREPROCESS_UNS = (Key.PREPROCESS,)


@d.dedent
def preprocess(
    data: AnnData | SpatialData,
    *,
    slice_key: str | None = Key.SLICE,
    table_key: str | None = None,
    n_top_genes: int = 3000,
    gene_space: Literal["shared", "union"] = "shared",
    min_counts: int = 10,
    min_genes: int = 3,
    min_spots: int = 3,
    max_pct_mito: float | None = None,
    mito_prefix: str | Sequence[str] = ("MT-", "mt-"),
    target_sum: float | None = 1e4,
    subset: bool = False,
    copy: bool = False,
) -> AnnData | None:
    """Quality control, highly variable genes per slice, the model's gene space, and log-normalisation.

    1. **Counts.** Raw counts are taken from ``layers["counts"]`` if present, else from ``X`` (and then copied to
       ``layers["counts"]``). Negative or non-finite values are an error. Non-integer values (data already
       normalised) give a warning: they are kept as they are, never passed off as counts, and the highly variable
       genes use scanpy's ``"seurat"`` flavour on their log scale instead of ``"seurat_v3"``.
    2. **Spot QC**, per slice: spots with fewer than ``min_counts`` counts or ``min_genes`` detected genes, or more
       than ``max_pct_mito`` percent mitochondrial counts, are removed. A slice left without spots is an error.
    3. **Highly variable genes** are ranked within each slice on its raw counts (``seurat_v3``), over the genes the
       slice measured (``varm["measured"]``, see :func:`sd_inspire.pp.concat`) and detected in at least
       ``min_spots`` of its spots; mitochondrial genes are never selected.
    4. **Gene space.** ``"shared"`` (as INSPIRE): genes measured by every slice, ranked by the number of slices in
       which they are highly variable, then by their median rank. ``"union"``: genes measured by any slice, ranked
       by the fraction of the slices measuring them in which they are highly variable, then by median rank, so a
       targeted panel is represented. The ``n_top_genes`` best form ``var["highly_variable"]``.
    5. **Normalisation.** ``X`` becomes ``log1p`` of counts scaled to ``target_sum`` per spot.

    Parameters
    ----------
    %(data)s
    %(slice_key)s ``None`` treats the table as one slice.
    %(table_key)s
    n_top_genes
        Size of the gene space.
    gene_space
        ``"shared"`` or ``"union"``, see above.
    min_counts
        Minimum total counts of a spot.
    min_genes
        Minimum number of detected genes of a spot.
    min_spots
        A gene must be detected in at least this many spots of a slice to be highly variable there.
    max_pct_mito
        Maximum percentage of mitochondrial counts of a spot; ``None`` keeps every spot.
    mito_prefix
        Prefix (or prefixes) of mitochondrial gene names.
    target_sum
        Counts per spot after normalisation; ``None`` uses the median library size.
    subset
        Keep only the genes of the gene space.
    %(copy)s

    Returns
    -------
    %(copy_returns)s, with

    - ``layers["counts"]``: raw counts (sparse CSR), untouched; not written for non-integer input;
    - ``X``: log-normalised expression (non-integer input: as given, ``log1p``-transformed if its maximum exceeds
      50);
    - ``obs["total_counts"]`` (library size), ``obs["n_genes_by_counts"]``, ``obs["pct_counts_mt"]``;
    - ``var["highly_variable"]`` (the gene space), ``var["highly_variable_rank"]`` (order within it, NaN
      outside), ``var["highly_variable_nbatches"]`` (slices where the gene is highly variable), ``var["mt"]``;
    - ``varm["highly_variable_rank"]``: DataFrame genes x slices with each slice's rank (NaN if not ranked);
    - ``uns["preprocess"]``: the parameters, whether the input held integer counts, and spots removed per slice.

    Raises
    ------
    ValueError
        For negative or non-finite counts, duplicated observation names, a slice with no spots left after QC, or
        no gene measured by every slice with ``gene_space="shared"``.

    Examples
    --------
    >>> import sd_inspire as si
    >>> sdata = si.datasets.simulate(2, n_spots=300, n_genes=200)
    >>> si.pp.preprocess(sdata, n_top_genes=100)
    >>> int(sdata["table"].var["highly_variable"].sum())
    100
    """
    check_choice(gene_space, "gene_space", ("shared", "union"))
    n_top_genes = check_integer(n_top_genes, "n_top_genes", minimum=1)
    min_counts = check_number(min_counts, "min_counts", minimum=0)
    min_genes = check_integer(min_genes, "min_genes", minimum=0)
    min_spots = check_integer(min_spots, "min_spots", minimum=0)
    if max_pct_mito is not None:
        max_pct_mito = check_number(max_pct_mito, "max_pct_mito", minimum=0)
    if target_sum is not None:
        target_sum = check_number(target_sum, "target_sum", positive=True)
    adata = maybe_copy(get_table(data, table_key), copy)
    check_unique_obs_names(adata, slice_key)
    slices = get_slices(adata, slice_key)
    prefixes = (mito_prefix,) if isinstance(mito_prefix, str) else tuple(mito_prefix)

    with timed(f"Preprocessing {adata.n_obs} spots x {adata.n_vars} genes in {len(slices.cat.categories)} slices"):
        has_layer = Key.COUNTS in adata.layers
        source = f"`adata.layers[{Key.COUNTS!r}]`" if has_layer else "`adata.X`"
        counts = _counts(adata, has_layer)
        lazy = is_lazy(counts)
        adata.var[Key.MITO] = adata.var_names.str.startswith(prefixes)
        measured = measured_mask(adata, slices)
        codes = slices.cat.codes.to_numpy()
        thresholds = (min_counts, min_genes, max_pct_mito)
        mito = adata.var[Key.MITO].to_numpy()
        scan = _scan(counts, codes, len(slices.cat.categories), mito, source, thresholds=thresholds)
        is_integer = scan.is_integer
        if not is_integer:
            warnings.warn(
                f"{source} holds non-integer values: this looks like normalised data, not raw counts. It is kept "
                "as is (not modelled as counts); highly variable genes use the 'seurat' flavour.",
                UserWarning,
                stacklevel=2,
            )
        removed, counts, codes, total = _spot_qc(
            adata, counts, codes, slices.cat.categories, scan, has_layer, thresholds
        )
        ranks = _slice_ranks(adata, counts, codes, scan, measured, min_spots)
        order, flagged = _gene_space(ranks, measured, n_top_genes, gene_space)
        hv = _write_gene_space(adata, ranks, flagged, order)
        _write_expression(adata, counts, scan, total, has_layer=has_layer, lazy=lazy, target_sum=target_sum)
        if subset:
            adata._inplace_subset_var(np.flatnonzero(hv))
        adata.uns[Key.PREPROCESS] = {
            "slice_key": slice_key,
            "n_top_genes": n_top_genes,
            "gene_space": gene_space,
            "min_counts": min_counts,
            "min_genes": min_genes,
            "min_spots": min_spots,
            "max_pct_mito": max_pct_mito,
            "target_sum": target_sum,
            "counts_are_integer": is_integer,
            "spots_removed": removed,
            "n_genes_in_space": int(order.size),
        }
        for key in (Key.TOTAL_COUNTS, Key.N_GENES, Key.PCT_MITO):
            log_added("obs", key)
        log_added("var", Key.HIGHLY_VARIABLE)
        log_added("uns", Key.PREPROCESS)
    return adata if copy else None


def _spot_qc(
    adata: AnnData,
    counts: Any,
    codes: np.ndarray,
    slice_names: pd.Index,
    scan: _Scan,
    has_layer: bool,
    thresholds: tuple[float, int, float | None],
) -> tuple[dict[str, int], Any, np.ndarray, np.ndarray]:
    """Spot QC, per slice: remove the spots that fail it and write the QC columns of ``obs``.

    Returns the spots removed per slice, and the counts, slice codes and library sizes of the spots kept.
    """
    min_counts, min_genes, max_pct_mito = thresholds
    keep, total, n_detected, pct_mito = scan.keep, scan.total, scan.n_detected, scan.pct_mito
    removed = {}
    for k, s in enumerate(slice_names):
        in_slice = codes == k
        removed[str(s)] = int((in_slice & ~keep).sum())
        if not (in_slice & keep).any():
            raise ValueError(
                f"Slice {s!r} has no spots left after QC ({int(in_slice.sum())} spots; min_counts={min_counts}, "
                f"min_genes={min_genes}, max_pct_mito={max_pct_mito}). Lower the thresholds or drop the slice."
            )
    if not keep.all():
        logger.info("QC removes %d of %d spots: %s", int((~keep).sum()), adata.n_obs, removed)
        adata._inplace_subset_obs(np.flatnonzero(keep))
        counts = _counts(adata, has_layer)
        codes = codes[keep]
        total, n_detected, pct_mito = total[keep], n_detected[keep], pct_mito[keep]
    adata.obs[Key.TOTAL_COUNTS] = total
    adata.obs[Key.N_GENES] = n_detected
    adata.obs[Key.PCT_MITO] = pct_mito
    return removed, counts, codes, total


def _slice_ranks(
    adata: AnnData, counts: Any, codes: np.ndarray, scan: _Scan, measured: pd.DataFrame, min_spots: int
) -> pd.DataFrame:
    """Each slice's rank of its candidate genes as highly variable (genes x slices, NaN outside the candidates).

    A slice's candidates are the genes it measured, detected in at least ``min_spots`` of its spots, and not
    mitochondrial; integer counts are ranked by ``seurat_v3``, other values by ``seurat`` on their log scale.
    """
    ranks = pd.DataFrame(np.nan, index=adata.var_names, columns=measured.columns)
    candidates = {}
    for k, s in enumerate(measured.columns):
        cand = measured[s].to_numpy() & ~adata.var[Key.MITO].to_numpy() & (scan.detected[k] >= min_spots)
        candidates[k] = cand
        if not scan.is_integer:
            in_slice = _gather_rows(counts, codes == k)
            ranks.loc[cand, s] = _rank(_seurat_dispersion(in_slice[:, cand]))
    if scan.is_integer:
        for k, score in _seurat_v3_variances(counts, codes, scan, candidates).items():
            ranks.loc[candidates[k], measured.columns[k]] = _rank(score[candidates[k]])
    return ranks


def _gene_space(
    ranks: pd.DataFrame, measured: pd.DataFrame, n_top_genes: int, gene_space: str
) -> tuple[np.ndarray, pd.DataFrame]:
    """The genes of the gene space (indices, best first) and whether each gene is highly variable in each slice."""
    flagged = ranks < n_top_genes
    if gene_space == "shared":
        pool = measured.all(axis=1).to_numpy()
        if not pool.any():
            sizes = {s: int(measured[s].sum()) for s in measured.columns}
            raise ValueError(
                f"No gene is measured in every slice (genes per slice: {sizes}); use gene_space='union' or "
                "check that the slices use the same gene identifiers (`pp.concat(..., gene_key=...)`)."
            )
        score = flagged.sum(axis=1).to_numpy(dtype=float)
    else:
        pool = measured.any(axis=1).to_numpy()
        n_shared = int(measured.all(axis=1).sum())
        if measured.shape[1] > 1 and n_shared < 2:
            sizes = {s: int(measured[s].sum()) for s in measured.columns}
            warnings.warn(
                f"{n_shared} gene(s) are measured in every slice (genes per slice: {sizes}): the slices share "
                "no expression features, so the integration has nothing to align them on and their latent "
                "codes will not be comparable. Check that the slices use the same gene identifiers "
                "(`pp.concat(..., gene_key=...)`).",
                UserWarning,
                stacklevel=3,  # the caller of preprocess
            )
        score = flagged.sum(axis=1).to_numpy(dtype=float) / np.maximum(measured.sum(axis=1).to_numpy(), 1)
    pool &= ranks.notna().any(axis=1).to_numpy()
    median_rank = ranks.median(axis=1, skipna=True).to_numpy()
    order = np.lexsort((median_rank, -score))
    order = order[pool[order]][:n_top_genes]
    if order.size < n_top_genes:
        logger.info("Gene space holds %d genes (fewer candidates than n_top_genes=%d)", order.size, n_top_genes)
    return order, flagged


def _write_gene_space(adata: AnnData, ranks: pd.DataFrame, flagged: pd.DataFrame, order: np.ndarray) -> np.ndarray:
    """Write the gene space (``order``) and the slices' ranks to ``var`` and ``varm``; returns its mask."""
    hv = np.zeros(adata.n_vars, dtype=bool)
    hv[order] = True
    hv_rank = np.full(adata.n_vars, np.nan)
    hv_rank[order] = np.arange(order.size)
    adata.var[Key.HIGHLY_VARIABLE] = hv
    adata.var[HV_RANK] = hv_rank
    adata.var[HV_NBATCHES] = flagged.sum(axis=1).to_numpy()
    adata.varm[HV_RANK] = ranks
    return hv


def _write_expression(
    adata: AnnData,
    counts: Any,
    scan: _Scan,
    total: np.ndarray,
    *,
    has_layer: bool,
    lazy: bool,
    target_sum: float | None,
) -> None:
    """The counts layer (integer counts not in it yet) and ``X``: log-normalised counts, or the values on a log scale.

    Out of core, ``X`` is computed chunk by chunk when read.
    """
    if not has_layer and scan.is_integer:
        adata.layers[Key.COUNTS] = counts if lazy else counts.astype(np.float32, copy=False)  # X is replaced
        log_added("layers", Key.COUNTS)
    if scan.is_integer:
        scale = target_sum if target_sum is not None else float(np.median(total[total > 0]))
        factors = np.divide(scale, total, out=np.zeros_like(total, dtype=np.float64), where=total > 0)
        adata.X = _log_normalised(counts, factors.astype(np.float32))
    else:  # one decision for the whole matrix (a block's own maximum could differ)
        log = scan.maximum > _LOG_SCALE_MAX
        adata.X = counts.map_blocks(_as_log, log, dtype=np.float32) if lazy else _as_log(counts, log)


def spots_failing_qc(adata: AnnData, slice_key: str | None = Key.SLICE) -> int:
    """How many spots :func:`preprocess` with its default thresholds would remove (one pass over the counts)."""
    defaults = inspect.signature(preprocess).parameters
    has_layer = Key.COUNTS in adata.layers
    slices = get_slices(adata, slice_key)
    scan = _scan(
        _counts(adata, has_layer),
        slices.cat.codes.to_numpy(),
        len(slices.cat.categories),
        adata.var_names.str.startswith(defaults["mito_prefix"].default),
        f"`adata.layers[{Key.COUNTS!r}]`" if has_layer else "`adata.X`",
        thresholds=tuple(defaults[k].default for k in ("min_counts", "min_genes", "max_pct_mito")),
    )
    return int((~scan.keep).sum())


def _counts(adata: AnnData, has_layer: bool) -> Any:
    """The counts (``layers["counts"]`` or ``X``): CSR in memory, or the dask array of a table out of core."""
    counts = adata.layers[Key.COUNTS] if has_layer else adata.X
    if is_lazy(counts):
        return counts
    return counts.tocsr() if sparse.issparse(counts) else sparse.csr_matrix(np.asarray(counts))


class _Scan(NamedTuple):
    """What one streamed pass over the counts gives: spot QC, and per-slice gene sums over the spots kept."""

    is_integer: bool
    maximum: float
    total: np.ndarray
    n_detected: np.ndarray
    pct_mito: np.ndarray
    keep: np.ndarray
    n_spots: np.ndarray  # slices
    sums: np.ndarray  # slices x genes
    squares: np.ndarray  # slices x genes
    detected: np.ndarray  # slices x genes: spots with a non-zero count


def _scan(
    counts: Any,
    codes: np.ndarray,
    n_slices: int,
    mito: np.ndarray,
    source: str,
    *,
    thresholds: tuple[int, int, float | None],
) -> _Scan:
    """One pass over ``counts`` in row blocks: validation, spot QC and the kept spots' gene sums per slice."""
    n, n_genes = counts.shape
    total, n_detected, pct_mito = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n)
    keep = np.zeros(n, dtype=bool)
    sums, squares = np.zeros((n_slices, n_genes)), np.zeros((n_slices, n_genes))
    detected = np.zeros((n_slices, n_genes), dtype=np.int64)
    is_integer = True
    blocks = map_row_blocks(
        counts, _scan_block, rows=(codes,), args=(np.flatnonzero(mito), n_slices, thresholds, source)
    )
    maximum = 0.0
    for start, stop, (integer, top, tot, det, pct, ok, sums_b, squares_b, detected_b) in blocks:
        is_integer &= integer
        maximum = max(maximum, top)
        total[start:stop], n_detected[start:stop], pct_mito[start:stop], keep[start:stop] = tot, det, pct, ok
        sums += sums_b
        squares += squares_b
        detected += detected_b
    n_spots = np.bincount(codes[keep], minlength=n_slices)
    return _Scan(bool(is_integer), maximum, total, n_detected, pct_mito, keep, n_spots, sums, squares, detected)


def _scan_block(
    block: sparse.csr_matrix,
    block_codes: np.ndarray,
    mito_cols: np.ndarray,
    n_slices: int,
    thresholds: tuple[int, int, float | None],
    source: str,
) -> tuple:
    """:func:`_scan` on one row block: its QC values, and its kept spots' gene sums per slice."""
    min_counts, min_genes, max_pct_mito = thresholds
    n_genes = block.shape[1]
    integer = check_counts(block, source)
    block.sum_duplicates()
    tot = np.asarray(block.sum(axis=1, dtype=np.float64)).ravel()
    det = np.diff(block.indptr)
    mt = np.asarray(block[:, mito_cols].sum(axis=1, dtype=np.float64)).ravel()
    pct = np.divide(100 * mt, tot, out=np.zeros_like(tot), where=tot > 0)
    ok = (tot >= min_counts) & (det >= min_genes)
    if max_pct_mito is not None:
        ok &= pct <= max_pct_mito
    sums, squares = np.zeros((n_slices, n_genes)), np.zeros((n_slices, n_genes))
    detected = np.zeros((n_slices, n_genes), dtype=np.int64)
    for k in np.unique(block_codes[ok]):
        rows = block[ok & (block_codes == k)]
        col = rows.indices
        sums[k] = np.bincount(col, weights=rows.data, minlength=n_genes)
        squares[k] = np.bincount(col, weights=rows.data.astype(np.float64) ** 2, minlength=n_genes)
        detected[k] = np.bincount(col[rows.data > 0], minlength=n_genes)
    top = float(block.data.max()) if block.nnz else 0.0
    return integer, top, tot, det, pct, ok, sums, squares, detected


def _seurat_v3_variances(
    counts: Any, codes: np.ndarray, scan: _Scan, candidates: dict[int, np.ndarray]
) -> dict[int, np.ndarray]:
    """Per slice, the ``seurat_v3`` criterion (Stuart et al. 2019) of each gene (-inf outside the candidates).

    The variance of counts standardised by the slice's mean-variance trend (LOWESS over its candidate genes) and
    clipped at ``sqrt(n_spots)``: the gene means and variances come from :func:`_scan`; the clipped sums need a
    second pass over the counts (rows of the spots kept, already subset).
    """
    n_genes = counts.shape[1]
    stats = {}
    for k, cand in candidates.items():
        n = int(scan.n_spots[k])
        mean = scan.sums[k] / max(n, 1)
        var = (scan.squares[k] / max(n, 1) - mean**2) * n / max(n - 1, 1)
        ok = cand & (var > 0) & (mean > 0)
        if n < 2 or not ok.any():
            continue
        std = np.zeros(n_genes)
        std[ok] = np.sqrt(10 ** _smooth_trend(np.log10(mean[ok]), np.log10(var[ok])))
        clip = np.where(ok, mean + std * np.sqrt(n), np.inf)
        stats[k] = (n, mean, std, ok, clip)
    s1 = {k: np.zeros(n_genes) for k in stats}
    s2 = {k: np.zeros(n_genes) for k in stats}
    clips = {k: v[4] for k, v in stats.items()}
    for _, _, sums in map_row_blocks(counts, _clipped_sums, rows=(codes,), args=(clips,)):
        for k, (a, b) in sums.items():
            s1[k] += a
            s2[k] += b
    out = {}
    for k in candidates:
        score = np.full(n_genes, -np.inf)
        if k in stats:
            n, m, std, ok, _ = stats[k]
            score[ok] = (n * m[ok] ** 2 + s2[k][ok] - 2 * m[ok] * s1[k][ok]) / ((n - 1) * std[ok] ** 2)
        out[k] = score
    return out


def _clipped_sums(
    block: sparse.csr_matrix, block_codes: np.ndarray, clips: dict[int, np.ndarray]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per slice of one row block: sums and squared sums of each gene's counts clipped at the slice's bound."""
    block.sum_duplicates()
    out = {}
    for k in np.unique(block_codes):
        if k not in clips:
            continue
        rows = block[block_codes == k]
        values = np.minimum(rows.data.astype(np.float64), clips[k][rows.indices])
        out[int(k)] = (
            np.bincount(rows.indices, weights=values, minlength=block.shape[1]),
            np.bincount(rows.indices, weights=values**2, minlength=block.shape[1]),
        )
    return out


def _seurat_dispersion(x: sparse.csr_matrix) -> np.ndarray:
    """Scanpy's ``"seurat"`` normalised dispersion of non-integer (normalised) data, on their log scale."""
    import scanpy as sc
    from threadpoolctl import threadpool_limits

    if x.shape[1] == 0:
        return np.zeros(0)
    tmp = AnnData(X=_as_log(x, bool(x.nnz) and float(x.max()) > _LOG_SCALE_MAX))
    # threadpool_limits() restores every OpenMP / BLAS thread count on exit: scanpy's first numba call starts
    # numba's OpenMP pool, which sets the process's OpenMP threads (torch's too, when torch is loaded) to all
    # cores; training would then run with another thread count, so other float sums, than the user set
    with warnings.catch_warnings(), threadpool_limits():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(tmp, flavor="seurat")
    return tmp.var["dispersions_norm"].to_numpy(dtype=float)


def _rank(score: np.ndarray) -> np.ndarray:
    """Rank of each score, 0 for the largest (ties keep their order; NaN counts as the lowest)."""
    score = np.nan_to_num(score, nan=-np.inf)
    ranks = np.empty(score.size)
    ranks[np.argsort(-score, kind="stable")] = np.arange(score.size)
    return ranks


def _gather_rows(x: Any, rows: np.ndarray) -> sparse.csr_matrix:
    """The rows of ``x`` flagged by the boolean ``rows``, in memory."""
    if not is_lazy(x):
        return sparse.csr_matrix(x[np.flatnonzero(rows)], dtype=np.float32)
    parts = [block[rows[start:stop]] for start, stop, block in row_blocks(x) if rows[start:stop].any()]
    return sparse.vstack(parts, format="csr").astype(np.float32)


def _log_normalised(counts: Any, factors: np.ndarray) -> Any:
    """``log1p(counts * factors[:, None])`` as float32 CSR; for a dask array, a lazy one of the same chunks."""
    if is_lazy(counts):
        import dask.array as da

        scale = da.from_array(factors[:, None], chunks=(counts.chunks[0], 1))
        return da.map_blocks(_scale_log_block, counts, scale, dtype=np.float32, meta=counts._meta.astype(np.float32))
    return _scale_log_block(counts, factors[:, None])


def _scale_log_block(block: Any, scale: np.ndarray) -> sparse.csr_matrix:
    x = sparse.csr_matrix(block, dtype=np.float32, copy=True)
    x.data *= np.repeat(np.asarray(scale, dtype=np.float32).ravel(), np.diff(x.indptr))
    x.data = np.log1p(x.data)
    return x


def _as_log(x: Any, log: bool) -> sparse.csr_matrix:
    """Non-integer input as float32 CSR, ``log1p``-transformed if ``log`` (normalised, but on a linear scale)."""
    x = sparse.csr_matrix(x, dtype=np.float32, copy=True)
    if log:
        x.data = np.log1p(x.data)
    return x


def _smooth_trend(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean-variance trend: LOWESS (span 0.3) with enough genes, else a quadratic (or constant) fit."""
    if x.size >= 20:
        from statsmodels.nonparametric.smoothers_lowess import lowess

        span = float(np.ptp(x))
        return lowess(y, x, frac=0.3, it=1, delta=0.005 * span, return_sorted=False)
    degree = min(2, np.unique(x).size - 1)
    return np.polyval(np.polyfit(x, y, degree), x) if degree > 0 else np.full_like(y, y.mean())
