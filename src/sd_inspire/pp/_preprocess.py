"""Quality control, per-slice highly variable genes, gene space and log-normalisation."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

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

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spatialdata import SpatialData

#: Non-integer input whose maximum exceeds this is taken to be normalised but not log-transformed.
_LOG_SCALE_MAX = 50.0


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
    if gene_space not in ("shared", "union"):
        raise ValueError(f"`gene_space` must be 'shared' or 'union', got {gene_space!r}.")
    if n_top_genes < 1:
        raise ValueError(f"`n_top_genes` must be positive, got {n_top_genes}.")
    adata = maybe_copy(get_table(data, table_key), copy)
    check_unique_obs_names(adata, slice_key)
    slices = get_slices(adata, slice_key)
    prefixes = (mito_prefix,) if isinstance(mito_prefix, str) else tuple(mito_prefix)

    with timed(f"Preprocessing {adata.n_obs} spots x {adata.n_vars} genes in {len(slices.cat.categories)} slices"):
        has_layer = Key.COUNTS in adata.layers
        source = f"`adata.layers[{Key.COUNTS!r}]`" if has_layer else "`adata.X`"
        counts = adata.layers[Key.COUNTS] if has_layer else adata.X
        counts = counts.tocsr() if sparse.issparse(counts) else sparse.csr_matrix(np.asarray(counts))
        is_integer = check_counts(counts, source)
        if not is_integer:
            warnings.warn(
                f"{source} holds non-integer values: this looks like normalised data, not raw counts. It is kept "
                "as is (not modelled as counts); highly variable genes use the 'seurat' flavour.",
                UserWarning,
                stacklevel=2,
            )

        # --- spot QC, per slice
        adata.var[Key.MITO] = adata.var_names.str.startswith(prefixes)
        total = np.asarray(counts.sum(axis=1)).ravel()
        n_detected = np.diff(counts.indptr)
        mito = np.asarray(counts[:, np.flatnonzero(adata.var[Key.MITO].to_numpy())].sum(axis=1)).ravel()
        pct_mito = np.divide(100 * mito, total, out=np.zeros_like(total, dtype=np.float64), where=total > 0)
        keep = (total >= min_counts) & (n_detected >= min_genes)
        if max_pct_mito is not None:
            keep &= pct_mito <= max_pct_mito
        removed = {}
        for s in slices.cat.categories:
            in_slice = (slices == s).to_numpy()
            removed[str(s)] = int((in_slice & ~keep).sum())
            if not (in_slice & keep).any():
                raise ValueError(
                    f"Slice {s!r} has no spots left after QC ({int(in_slice.sum())} spots; min_counts={min_counts}, "
                    f"min_genes={min_genes}, max_pct_mito={max_pct_mito}). Lower the thresholds or drop the slice."
                )
        if not keep.all():
            logger.info("QC removes %d of %d spots: %s", int((~keep).sum()), adata.n_obs, removed)
            adata._inplace_subset_obs(np.flatnonzero(keep))
            counts, slices = counts[keep], slices[keep].cat.remove_unused_categories()
            total, n_detected, pct_mito = total[keep], n_detected[keep], pct_mito[keep]
        adata.obs[Key.TOTAL_COUNTS] = total
        adata.obs[Key.N_GENES] = n_detected
        adata.obs[Key.PCT_MITO] = pct_mito

        # --- highly variable genes per slice, then the gene space
        measured = measured_mask(adata, slices)
        ranks = pd.DataFrame(np.nan, index=adata.var_names, columns=measured.columns)
        for s in measured.columns:
            rows = (slices == s).to_numpy()
            cand = measured[s].to_numpy() & ~adata.var[Key.MITO].to_numpy()
            in_slice = counts[rows]
            detected = np.asarray((in_slice > 0).sum(axis=0)).ravel() >= min_spots
            cand &= detected
            ranks.loc[cand, s] = _hvg_ranks(in_slice[:, cand], is_integer)
            del in_slice
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
            score = flagged.sum(axis=1).to_numpy(dtype=float) / np.maximum(measured.sum(axis=1).to_numpy(), 1)
        pool &= ranks.notna().any(axis=1).to_numpy()
        median_rank = ranks.median(axis=1, skipna=True).to_numpy()
        order = np.lexsort((median_rank, -score))
        order = order[pool[order]][:n_top_genes]
        if order.size < n_top_genes:
            logger.info("Gene space holds %d genes (fewer candidates than n_top_genes=%d)", order.size, n_top_genes)
        hv = np.zeros(adata.n_vars, dtype=bool)
        hv[order] = True
        hv_rank = np.full(adata.n_vars, np.nan)
        hv_rank[order] = np.arange(order.size)
        adata.var[Key.HIGHLY_VARIABLE] = hv
        adata.var["highly_variable_rank"] = hv_rank
        adata.var["highly_variable_nbatches"] = flagged.sum(axis=1).to_numpy()
        adata.varm["highly_variable_rank"] = ranks

        # --- counts layer and log-normalised X
        if not has_layer and is_integer:
            adata.layers[Key.COUNTS] = counts.astype(np.float32, copy=False)  # X is replaced below: no copy
            log_added("layers", Key.COUNTS)
        if is_integer:
            scale = target_sum if target_sum is not None else float(np.median(total[total > 0]))
            factors = np.divide(scale, total, out=np.zeros_like(total, dtype=np.float64), where=total > 0)
            x = sparse.diags(factors.astype(np.float32)) @ counts.astype(np.float32, copy=False)
            x.data = np.log1p(x.data)
            adata.X = x.tocsr()
        else:
            x = counts.astype(np.float32)
            if x.nnz and x.data.max() > _LOG_SCALE_MAX:  # normalised, but not yet on a log scale
                x.data = np.log1p(x.data)
            adata.X = x
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


def _hvg_ranks(counts: sparse.csr_matrix, is_integer: bool) -> np.ndarray:
    """Rank (0 = most variable) of each column of one slice's matrix.

    Integer counts: the variance-stabilised ``seurat_v3`` criterion (Stuart et al. 2019) — the variance of counts
    standardised by a mean-variance trend, clipped at ``sqrt(n_spots)`` — with the trend fitted by LOWESS.
    Other values: scanpy's ``"seurat"`` normalised dispersion on their log scale.
    """
    n_spots, n_genes = counts.shape
    if n_genes == 0:
        return np.zeros(0)
    if is_integer:
        score = _seurat_v3_variance(counts)
    else:
        import scanpy as sc

        x = counts.astype(np.float32)
        if x.nnz and x.data.max() > _LOG_SCALE_MAX:  # normalised but not log-transformed
            x.data = np.log1p(x.data)
        tmp = AnnData(X=x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sc.pp.highly_variable_genes(tmp, flavor="seurat")
        score = tmp.var["dispersions_norm"].to_numpy(dtype=float)
    score = np.nan_to_num(score, nan=-np.inf)
    ranks = np.empty(n_genes)
    ranks[np.argsort(-score, kind="stable")] = np.arange(n_genes)
    return ranks


def _seurat_v3_variance(counts: sparse.csr_matrix) -> np.ndarray:
    """Normalised (standardised, clipped) variance of each gene of a count matrix; -inf for constant genes."""
    n = counts.shape[0]
    x = counts.tocsc().astype(np.float64)
    mean = np.asarray(x.mean(axis=0)).ravel()
    sq = np.asarray(x.multiply(x).mean(axis=0)).ravel()
    var = (sq - mean**2) * n / max(n - 1, 1)
    ok = (var > 0) & (mean > 0)
    out = np.full(counts.shape[1], -np.inf)
    if not ok.any() or n < 2:
        return out
    log_mean, log_var = np.log10(mean[ok]), np.log10(var[ok])
    trend = _smooth_trend(log_mean, log_var)
    std = np.sqrt(10**trend)
    clip = mean[ok] + std * np.sqrt(n)
    sub = x[:, np.flatnonzero(ok)]
    col = np.repeat(np.arange(sub.shape[1]), np.diff(sub.indptr))
    values = np.minimum(sub.data, clip[col])
    s1 = np.bincount(col, weights=values, minlength=sub.shape[1])
    s2 = np.bincount(col, weights=values**2, minlength=sub.shape[1])
    m = mean[ok]
    out[ok] = (n * m**2 + s2 - 2 * m * s1) / ((n - 1) * std**2)
    return out


def _smooth_trend(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean-variance trend: LOWESS (span 0.3) with enough genes, else a quadratic (or constant) fit."""
    if x.size >= 20:
        from statsmodels.nonparametric.smoothers_lowess import lowess

        span = float(np.ptp(x))
        return lowess(y, x, frac=0.3, it=1, delta=0.005 * span, return_sorted=False)
    degree = min(2, np.unique(x).size - 1)
    return np.polyval(np.polyfit(x, y, degree), x) if degree > 0 else np.full_like(y, y.mean())
