"""The model's only reader of AnnData: a preprocessed table with a graph becomes :class:`ModelData`.

As scvi-tools' ``AnnDataManager``: keys are checked and the arrays the model trains on are taken from the table here;
the rest of :mod:`sd_inspire.model` works on :class:`ModelData` alone. Only small per-spot matrices are kept dense (a
fixed linear reduction of the expression and its neighbour propagation); counts stay sparse and each minibatch
densifies only its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from sd_inspire._chunks import DEFAULT_CHUNK_SIZE, is_lazy, matmul_rows
from sd_inspire._constants import Key
from sd_inspire._utils import get_slices, measured_mask, values_are_counts
from sd_inspire.model._features import (
    PEARSON_THETA,
    InvalidCountsError,
    centre_per_slice,
    gene_fractions,
    library_and_saturated,
    lognorm_pca,
    pearson_pca,
    placed_columns,
    propagate_features,
    residual_projection,
    residual_standardisation,
    slice_log_ratios,
)

if TYPE_CHECKING:
    from anndata import AnnData


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
    # a query's (prepare_query): its counts per slice and gene, where its gene effects start
    # (InspireModel._match_query_effects), and what it shares with the model
    gene_totals: np.ndarray | None = None
    n_genes_present: int | None = None  # of the model's genes
    n_feature_genes_present: int | None = None  # of the model's input genes
    n_genes_left_out: int = 0  # genes of the query the model never saw

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
    chunk_size: int = DEFAULT_CHUNK_SIZE,
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
    graph = _graph(adata, connectivity_key)
    labels, codes, slice_names = _slices(adata, slice_key)

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
        library, saturated, gene_totals = library_and_saturated(counts, chunk_size, codes, len(slice_names))
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
        # no column copy when every gene is a feature (the expression is only read)
        x = adata.X if columns.size == adata.n_vars else adata.X[:, columns]
        y, first_variance, axes = lognorm_pca(x, codes, len(slice_names), n_comp, seed, chunk_size)
    scale = max(float(np.sqrt(first_variance)), 1e-8)
    y /= scale  # unit scale on the first component

    return _assemble(
        y,
        graph,
        n_hops,
        chunk_size,
        counts=counts,
        library=library,
        saturated=saturated,
        slices=codes,
        mask=mask,
        slice_names=slice_names,
        genes=genes.tolist(),
        feature_genes=genes[feat_genes].tolist(),
        gene_fraction=gene_fractions(gene_totals.sum(axis=0), library, codes, mask),
        slice_log_ratio=slice_log_ratios(gene_totals, mask),
        values_are_counts=bool(counts_given),
        reduction=Reduction(features, axes, scale),
    )


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
    chunk_size: int = DEFAULT_CHUNK_SIZE,
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
    labels, codes, slice_names = _slices(adata, slice_key)

    where = adata.var_names.get_indexer(genes)  # -1: a gene of the model the query lacks
    present = where >= 0
    if present.sum() < 2:
        raise ValueError(
            f"The query shares {int(present.sum())} of the model's {len(genes)} genes; at least two are needed (are "
            "the gene names of the same kind, e.g. symbols in both, not symbols in one and Ensembl ids in the other?)."
        )
    counts = placed_columns(layer, where, chunk_size)
    measured = measured_mask(adata, labels).to_numpy(dtype=bool)  # query genes x slices
    mask = np.zeros((len(slice_names), len(genes)), dtype=bool)
    mask[:, present] = measured[where[present]].T
    try:
        library, saturated, gene_totals = library_and_saturated(counts, chunk_size, codes, len(slice_names))
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
        args, step = residual_standardisation(counts, gene_totals, codes, columns, chunk_size, PEARSON_THETA)
        y = residual_projection(counts, codes, args, reduction.axes.astype(np.float64), step)
    else:
        x = placed_columns(adata.X, adata.var_names.get_indexer(feature_genes), chunk_size)
        y = matmul_rows(x, reduction.axes, chunk_size)
        centre_per_slice(y, codes, len(slice_names))
    y /= reduction.scale

    return _assemble(
        y,
        _graph(adata, connectivity_key),
        n_hops,
        chunk_size,
        counts=counts,
        library=library,
        saturated=saturated,
        slices=codes,
        mask=mask,
        slice_names=slice_names,
        genes=list(genes),
        feature_genes=list(feature_genes),
        values_are_counts=bool(counts_given),
        reduction=reduction,
        gene_totals=gene_totals,
        n_genes_present=int(present.sum()),
        n_feature_genes_present=n_features_present,
        n_genes_left_out=int((~adata.var_names.isin(genes)).sum()),
    )


def holds_counts(adata: AnnData) -> bool:
    """Whether the table holds counts (``False``: normalised values, as recorded by ``pp.preprocess``)."""
    return values_are_counts(adata)


def n_technologies(adata: AnnData) -> int:
    """Number of technologies in ``obs["technology"]`` (0 without that column)."""
    return int(adata.obs[Key.TECHNOLOGY].astype(str).nunique()) if Key.TECHNOLOGY in adata.obs else 0


def _slices(adata: AnnData, slice_key: str | None) -> tuple[pd.Series, np.ndarray, list[str]]:
    """The slice labels of the table, their integer codes and the slices' names (in code order)."""
    labels = get_slices(adata, slice_key)
    return labels, labels.cat.codes.to_numpy().astype(np.int64), [str(c) for c in labels.cat.categories]


def _graph(adata: AnnData, connectivity_key: str) -> sparse.csr_matrix:
    """The spatial graph ``obsp[connectivity_key]`` as CSR; a clear error when it is missing."""
    if connectivity_key not in adata.obsp:
        raise KeyError(f"No graph `adata.obsp[{connectivity_key!r}]`: run `sd_inspire.gr.spatial_neighbors` first.")
    return sparse.csr_matrix(adata.obsp[connectivity_key])


def _assemble(y: np.ndarray, graph: sparse.csr_matrix, n_hops: int, chunk_size: int, **fields: Any) -> ModelData:
    """:class:`ModelData` whose input is ``[Y, ÂY, ..., Â^k Y]`` over ``graph``, with the other ``fields``."""
    features = propagate_features(y, graph, n_hops, chunk_size)
    return ModelData(features=features, graph=graph, n_base=y.shape[1], **fields)
