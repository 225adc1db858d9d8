"""``tl.impute``: expression of genes a slice did not measure, predicted from the integrated space."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from sd_inspire._chunks import DEFAULT_CHUNK_SIZE, is_lazy, read_rows
from sd_inspire._constants import Key
from sd_inspire._docs import d
from sd_inspire._graph import normalized_adjacency
from sd_inspire._logging import log_added, logger, timed
from sd_inspire._utils import (
    get_representation,
    get_slices,
    get_table,
    is_spatialdata,
    maybe_copy,
    measured_mask,
)
from sd_inspire._validate import check_choice, check_integer
from sd_inspire.io._write import check_table_matches_store, write_table_into_store
from sd_inspire.model import expected_shares, slice_programs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from spatialdata import SpatialData

_METHODS = ("neighbors", "model")


@d.dedent
def impute(
    data: AnnData | SpatialData,
    genes: str | Sequence[str] | None = None,
    *,
    method: Literal["neighbors", "model"] = "neighbors",
    observed: Literal["keep", "predict"] = "keep",
    slice_key: str | None = Key.SLICE,
    table_key: str | None = None,
    use_rep: str = "X_inspire",
    n_neighbors: int = 50,
    smooth: int = 2,
    connectivity_key: str = "spatial_connectivities",
    key: str = "inspire",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    key_added: str = "inspire_imputed",
    show_progress_bar: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Predict, for every spot, the expression of genes its slice did not measure.

    Slices with different gene panels (a targeted MERFISH panel next to whole-transcriptome Visium, or the
    ``"union"`` gene space of :func:`sd_inspire.pp.preprocess`) share one latent space after
    :func:`sd_inspire.tl.integrate`. A gene that slice ``s`` did not measure (``varm["measured"]``) is predicted for
    the spots of ``s`` from the slices that measured it, on the scale of ``X`` (log-normalised expression):

    - ``"neighbors"`` (default): each spot's ``n_neighbors`` nearest neighbours in the latent space ``use_rep`` among
      the spots of the slices that measured the gene, weighted by a Gaussian kernel of their distance (its width
      the spot's median neighbour distance), give a weighted mean of their expression. The result is then averaged
      ``smooth`` times over the spot's spatial neighbours in its own slice (``D^-1 (A + I)``), since expression
      varies smoothly in tissue where single spots are noisy. Works for every gene.
    - ``"model"``: the model's own prediction ``log1p(target_sum · f_r q_ig)``, ``q_ig`` the expected fraction of
      the counts from spatial factors × gene programs with the gene effects of a slice ``r`` that measured the gene
      (averaged over such slices), ``f_r`` that slice's mean fraction of counts in the model's genes. Only for genes
      of the model's gene space (``var["{key}_gene"]``).

    ``benchmarks/impute.py`` compares both with copying the nearest latent neighbour's expression (INSPIRE's
    tutorial). Work proceeds in row chunks; only the genes asked for are read and filled.

    Parameters
    ----------
    %(data)s
    genes
        Gene names to impute. ``None``: every gene that some slice measured and another did not.
    method
        ``"neighbors"`` or ``"model"``, see above.
    observed
        ``"keep"``: where a slice measured a gene, the layer holds its own value of ``X``. ``"predict"``: every
        spot's value is predicted from the *other* slices, measured or not (to check predictions against
        measurements); a gene measured by a single slice then keeps that slice's values.
    %(slice_key)s
    %(table_key)s
    use_rep
        Latent space in ``obsm`` searched for neighbours.
    n_neighbors
        Latent neighbours averaged per spot (``"neighbors"``).
    smooth
        Rounds of averaging over spatial neighbours within each slice (``"neighbors"``); 0 for none.
    connectivity_key
        Spatial graph in ``obsp`` used by ``smooth``.
    key
        Stem of the keys written by :func:`sd_inspire.tl.integrate` (``"model"``).
    chunk_size
        Spots processed at once.
    key_added
        Name of the layer written.
    show_progress_bar
        Show a progress bar over the slices predicted (one step per slice and set of donor slices).
    %(copy)s

    Returns
    -------
    %(copy_returns)s, with

    - ``layers[key_added]``: sparse CSR (n_obs x n_vars), zero except in the columns of ``genes``, which hold the
      predicted (and, with ``observed="keep"``, measured) expression on the scale of ``X``;
    - ``var[key_added]``: whether a gene was imputed;
    - ``uns[key_added]``: ``genes``, ``method``, the parameters and, per slice, the number of genes predicted.

    If the SpatialData is backed by a zarr store, the updated table is written into it (atomically, see
    :func:`sd_inspire.tl.integrate`).

    Raises
    ------
    KeyError
        If a gene is not in the table, ``use_rep`` is missing, or (``"model"``) the results of
        :func:`sd_inspire.tl.integrate` are missing.
    ValueError
        If a gene was measured by no slice, a gene is outside the model's genes (``"model"``), or a parameter is
        out of range.

    Examples
    --------
    >>> import sd_inspire as si
    >>> sdata = si.datasets.simulate(2, n_spots=200, n_genes=150, technology=["visium", "merfish"], panel_size=60)
    >>> si.pp.preprocess(sdata, gene_space="union", n_top_genes=100)
    >>> si.tl.integrate(sdata, n_factors=5, max_steps=20, show_progress_bar=False)
    >>> table = sdata["table"]
    >>> unmeasured = table.var_names[~table.varm["measured"]["slice1"].to_numpy()][:3].tolist()
    >>> si.tl.impute(sdata, genes=unmeasured)
    >>> table.uns["inspire_imputed"]["n_genes_predicted"]
    {'slice0': 0, 'slice1': 3}
    """
    check_choice(method, "method", _METHODS)
    check_choice(observed, "observed", ("keep", "predict"))
    n_neighbors = check_integer(n_neighbors, "n_neighbors", minimum=1)
    smooth = check_integer(smooth, "smooth", minimum=0)
    chunk_size = check_integer(chunk_size, "chunk_size", minimum=1)
    adata = maybe_copy(get_table(data, table_key), copy)
    if not copy:
        check_table_matches_store(data, adata, table_key)  # before the work, not after it
    slices = get_slices(adata, slice_key)
    codes = slices.cat.codes.to_numpy()
    names = [str(c) for c in slices.cat.categories]
    measured = measured_mask(adata, slices).to_numpy(dtype=bool)  # genes x slices
    columns = _gene_columns(adata, genes, measured)

    from tqdm.auto import tqdm

    with timed(f"Imputing {columns.size} genes with {method!r}"):
        # every (slice, gene) to predict, grouped by the slices that can serve as donors
        tasks: dict[tuple[int, tuple[int, ...]], list[int]] = defaultdict(list)
        for j, col in enumerate(columns):
            donors_of = measured[col]
            for s in range(len(names)):
                if donors_of[s] and observed == "keep":
                    continue
                donors = tuple(int(r) for r in np.flatnonzero(donors_of) if r != s)
                if donors:
                    tasks[(s, donors)].append(j)
        predict = _neighbors(adata, use_rep, n_neighbors, smooth, connectivity_key, chunk_size)
        if method == "model":
            predict = _model(adata, key, columns, slices, measured, chunk_size)

        # observed values first, predictions where asked for
        x_cols = _read_columns(adata.X, columns, chunk_size)
        keep = measured[columns][:, codes].T  # n_obs x genes: the spot's slice measured the gene
        values = np.where(keep, x_cols.toarray(), 0.0).astype(np.float32)
        n_predicted = dict.fromkeys(names, 0)
        for (s, donors), js in tqdm(tasks.items(), desc="Imputing", unit="slice", disable=not show_progress_bar):
            rows = np.flatnonzero(codes == s)
            donor_rows = np.flatnonzero(np.isin(codes, donors))
            values[np.ix_(rows, js)] = predict(rows, donor_rows, np.asarray(js), x_cols)
            n_predicted[names[s]] += len(js)
        n_filled = int(sum(n_predicted.values()))
        if n_filled == 0:
            logger.info("Every slice measured the genes asked for: the layer holds the measured values")

        adata.layers[key_added] = _place_columns(values, columns, adata.n_vars)
        flag = np.zeros(adata.n_vars, dtype=bool)
        flag[columns] = True
        adata.var[key_added] = flag
        adata.uns[key_added] = {
            "genes": np.asarray(adata.var_names[columns], dtype=object),
            "method": method,
            "observed": observed,
            "use_rep": use_rep,
            "n_neighbors": int(n_neighbors),
            "smooth": int(smooth),
            "n_genes_predicted": n_predicted,
        }
        log_added("layers", key_added)
        log_added("var", key_added)
        log_added("uns", key_added)
    if not copy and is_spatialdata(data):
        write_table_into_store(data, adata, table_key)
    return adata if copy else None


def _gene_columns(adata: AnnData, genes: str | Sequence[str] | None, measured: np.ndarray) -> np.ndarray:
    """Column indices of ``genes``, checked: in the table and measured by some slice."""
    if genes is None:
        some = measured.any(axis=1) & ~measured.all(axis=1)
        if not some.any():
            raise ValueError(
                "Every slice measured every gene: nothing to impute. Pass `genes=` with `observed='predict'` to "
                "predict measured genes from the other slices."
            )
        return np.flatnonzero(some)
    wanted = [genes] if isinstance(genes, str) else list(genes)
    if not wanted:
        raise ValueError("`genes` is empty.")
    cols = adata.var_names.get_indexer(wanted)
    unknown = [g for g, c in zip(wanted, cols, strict=True) if c < 0]
    if unknown:
        raise KeyError(f"{len(unknown)} genes are not in the table, e.g. {unknown[:5]}.")
    if len(set(cols.tolist())) < cols.size:
        raise ValueError("`genes` holds duplicates.")
    never = [g for g, c in zip(wanted, cols, strict=True) if not measured[c].any()]
    if never:
        raise ValueError(
            f"{len(never)} genes were measured by no slice (`varm['measured']`), so nothing can predict them, "
            f"e.g. {never[:5]}."
        )
    return cols


def _read_columns(x, columns: np.ndarray, chunk_size: int) -> sparse.csr_matrix:
    """``x[:, columns]`` as CSR, read in row chunks (from disk for a table out of core)."""
    if not is_lazy(x):
        return sparse.csr_matrix(x[:, columns] if sparse.issparse(x) else np.asarray(x)[:, columns], dtype=np.float32)
    parts = [read_rows(x, s, min(s + chunk_size, x.shape[0]))[:, columns] for s in range(0, x.shape[0], chunk_size)]
    return sparse.vstack(parts, format="csr").astype(np.float32)


def _place_columns(values: np.ndarray, columns: np.ndarray, n_vars: int) -> sparse.csr_matrix:
    """An n_obs x n_vars CSR matrix holding ``values`` in ``columns`` (zeros dropped)."""
    block = sparse.csr_matrix(values)
    remap = sparse.csr_matrix(
        (np.ones(columns.size, dtype=np.float32), (np.arange(columns.size), columns)), shape=(columns.size, n_vars)
    )
    return (block @ remap).tocsr()


def _neighbors(adata: AnnData, use_rep: str, n_neighbors: int, smooth: int, connectivity_key: str, chunk_size: int):
    """Predictor from latent neighbours among donor spots, smoothed over the spatial graph."""
    latent = get_representation(adata, use_rep)
    if smooth and connectivity_key not in adata.obsp:
        raise KeyError(
            f"No graph `adata.obsp[{connectivity_key!r}]` for `smooth`: run `sd_inspire.gr.spatial_neighbors` first "
            "or pass `smooth=0`."
        )
    graph = sparse.csr_matrix(adata.obsp[connectivity_key]) if smooth else None
    within: dict[bytes, sparse.csr_matrix] = {}  # a slice's averaging operator, shared by its donor groups

    def predict(rows: np.ndarray, donor_rows: np.ndarray, js: np.ndarray, x_cols: sparse.csr_matrix) -> np.ndarray:
        weights = latent_weights(latent[rows], latent[donor_rows], n_neighbors, chunk_size)
        values = np.asarray((weights @ x_cols[donor_rows][:, js]).toarray(), dtype=np.float32)
        if graph is not None:
            key = rows.tobytes()
            if key not in within:
                within[key] = normalized_adjacency(graph[rows][:, rows], normalization="mean")
            a = within[key]
            for _ in range(smooth):
                values = a @ values
        return values

    return predict


def latent_weights(query: np.ndarray, donors: np.ndarray, n_neighbors: int, chunk_size: int) -> sparse.csr_matrix:
    """Rows of Gaussian-kernel weights (summing to 1) on each query point's nearest donors.

    The kernel's width is the query point's median distance to its ``n_neighbors`` nearest donors, so dense and
    sparse regions of the latent space weigh their neighbours alike. Memory is linear: ``n_neighbors`` entries per
    row.
    """
    from sklearn.neighbors import NearestNeighbors

    k = int(min(n_neighbors, donors.shape[0]))
    index = NearestNeighbors(n_neighbors=k).fit(donors)
    rows, cols, vals = [], [], []
    for start in range(0, query.shape[0], chunk_size):
        dist, idx = index.kneighbors(query[start : start + chunk_size])
        width = np.maximum(np.median(dist, axis=1, keepdims=True), 1e-12)
        w = np.exp(-0.5 * (dist / width) ** 2)
        w /= w.sum(axis=1, keepdims=True)
        rows.append(np.repeat(np.arange(start, start + dist.shape[0]), k))
        cols.append(idx.ravel())
        vals.append(w.ravel())
    return sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(query.shape[0], donors.shape[0])
    )


def _model(adata: AnnData, key: str, columns: np.ndarray, slices: pd.Series, measured: np.ndarray, chunk_size: int):
    """Predictor from the fitted factors, gene programs and slice gene effects written by ``tl.integrate``."""
    factors_key, loadings_key = f"{key}_factors", f"{key}_loadings"
    if factors_key not in adata.obsm or loadings_key not in adata.varm or key not in adata.uns:
        raise KeyError(
            f"No results of `sd_inspire.tl.integrate` under key {key!r} (`obsm[{factors_key!r}]`, "
            f"`varm[{loadings_key!r}]`, `uns[{key!r}]`): run it first."
        )
    meta = adata.uns[key]
    model_cols = adata.var_names.get_indexer(pd.Index(np.asarray(meta["genes"]).astype(str)))
    pos = pd.Index(model_cols).get_indexer(columns)  # position of each asked gene among the model's genes
    if (pos < 0).any():
        outside = adata.var_names[columns][pos < 0]
        raise ValueError(
            f"`method='model'` predicts genes of the model's gene space only; {outside.size} genes are outside it, "
            f"e.g. {outside[:5].tolist()}. Use `method='neighbors'`."
        )
    names = [str(c) for c in slices.cat.categories]
    model_slices = [str(s) for s in meta["slices"]]
    if model_slices != names:
        raise ValueError(f"The slices of `uns[{key!r}]` {model_slices} are not the table's slices {names}.")
    codes = slices.cat.codes.to_numpy()
    beta = np.asarray(adata.obsm[factors_key], dtype=np.float64)
    loadings = np.asarray(adata.varm[loadings_key], dtype=np.float64)[model_cols].T  # factors x model genes
    effects = np.asarray(meta["slice_gene_effects"], dtype=np.float64)  # slices x model genes
    weighted = slice_programs(loadings, effects, measured[model_cols].T)  # slices x factors x model genes
    target = adata.uns.get(Key.PREPROCESS, {}).get("target_sum") or 1e4
    # each slice's mean fraction of its counts on the model's genes puts q on the scale of its log-normalised X
    fraction = _fraction_in_genes(adata, codes, len(names), model_cols, chunk_size)

    def predict(rows: np.ndarray, donor_rows: np.ndarray, js: np.ndarray, x_cols: sparse.csr_matrix) -> np.ndarray:
        donor_slices = np.unique(codes[donor_rows])
        g = pos[js]
        out = np.zeros((rows.size, js.size))
        for r in donor_slices:
            out += np.log1p(target * fraction[r] * expected_shares(beta[rows], weighted[r], g))
        return (out / donor_slices.size).astype(np.float32)

    return predict


def _fraction_in_genes(
    adata: AnnData, codes: np.ndarray, n_slices: int, cols: np.ndarray, chunk_size: int
) -> np.ndarray:
    """Per slice, the mean over its spots of the fraction of their counts on genes ``cols`` (1 without counts)."""
    if Key.COUNTS not in adata.layers or Key.TOTAL_COUNTS not in adata.obs:
        return np.ones(n_slices)
    within = np.asarray(_read_columns(adata.layers[Key.COUNTS], cols, chunk_size).sum(axis=1)).ravel()
    share = within / np.maximum(adata.obs[Key.TOTAL_COUNTS].to_numpy(dtype=np.float64), 1e-12)
    return np.array([share[codes == r].mean() if (codes == r).any() else 1.0 for r in range(n_slices)])
