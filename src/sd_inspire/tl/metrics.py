"""Scores of an integration: agreement of labelings, separation and mixing in the latent space, factor quality.

The numbers reported by the benchmarks, for users' own data. Every function takes plain arrays (numpy arrays,
lists, pandas Series, SciPy sparse matrices) and returns a Python float (or a dict of them), so they apply to any
method's output, e.g. ``ari(adata.obs["layer"], adata.obs["inspire_domain"])``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from sd_inspire._validate import check_choice, check_integer

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

from sd_inspire.tl._registration_metrics import (
    RegistrationError,
    neighbour_agreement,
    neighbour_correlation,
    registration_error,
    target_registration_error,
)

__all__ = [
    "RegistrationError",
    "ari",
    "batch_mixing",
    "factor_coherence",
    "factor_diversity",
    "factor_recovery",
    "nmi",
    "neighbour_agreement",
    "neighbour_correlation",
    "per_group_scores",
    "program_specificity",
    "redundant_factors",
    "registration_error",
    "silhouette",
    "target_registration_error",
]

_SCORES = ("ari", "nmi")


def ari(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Adjusted Rand index between a reference and a predicted labeling.

    Entries whose reference label is missing (``NaN``, ``None``, ``pd.NA`` or the string ``"nan"``, e.g. spots
    without a manual annotation) are left out. Labels are compared as strings, so ``1`` and ``"1"`` are the same.

    Parameters
    ----------
    labels_true
        Reference labels, one per observation.
    labels_pred
        Predicted labels (e.g. domains), one per observation.

    Returns
    -------
    The adjusted Rand index (:func:`sklearn.metrics.adjusted_rand_score`): 1 for identical partitions, about 0
    for random ones.

    Raises
    ------
    ValueError
        If the two labelings differ in length or no observation has a reference label.

    Examples
    --------
    >>> from sd_inspire.tl.metrics import ari
    >>> ari(["a", "a", "b", None], [1, 1, 2, 2])
    1.0
    """
    from sklearn.metrics import adjusted_rand_score

    true, pred = _labeled_pairs(labels_true, labels_pred)
    return float(adjusted_rand_score(true, pred))


def nmi(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Normalised mutual information between a reference and a predicted labeling.

    Missing reference labels are left out as in :func:`ari`.

    Parameters
    ----------
    labels_true
        Reference labels, one per observation.
    labels_pred
        Predicted labels, one per observation.

    Returns
    -------
    The normalised mutual information (:func:`sklearn.metrics.normalized_mutual_info_score`, arithmetic mean
    normalisation), from 0 (independent) to 1 (identical partitions).

    Raises
    ------
    ValueError
        If the two labelings differ in length or no observation has a reference label.

    Examples
    --------
    >>> from sd_inspire.tl.metrics import nmi
    >>> nmi(["a", "a", "b", "b"], ["x", "x", "y", "y"])
    1.0
    """
    from sklearn.metrics import normalized_mutual_info_score

    true, pred = _labeled_pairs(labels_true, labels_pred)
    return float(normalized_mutual_info_score(true, pred))


def per_group_scores(
    labels_true: ArrayLike,
    labels_pred: ArrayLike,
    groups: ArrayLike,
    score: Literal["ari", "nmi"] = "ari",
) -> dict[str, float]:
    """A labeling score within each group of observations, e.g. the ARI of each slice.

    Parameters
    ----------
    labels_true
        Reference labels, one per observation; missing ones are left out as in :func:`ari`.
    labels_pred
        Predicted labels, one per observation.
    groups
        Group of each observation (e.g. ``adata.obs["slice"]``); must have no missing values.
    score
        ``"ari"`` (:func:`ari`) or ``"nmi"`` (:func:`nmi`).

    Returns
    -------
    The score of each group, keyed by the group as a string, in the order of the categories for a categorical
    ``groups`` and sorted otherwise. A group in which no observation has a reference label scores ``NaN``.

    Raises
    ------
    ValueError
        If the inputs differ in length, ``groups`` has missing values, or ``score`` is unknown.

    Examples
    --------
    >>> from sd_inspire.tl.metrics import per_group_scores
    >>> per_group_scores(["a", "b", "a", "b"], [0, 1, 0, 0], groups=["s1", "s1", "s2", "s2"])
    {'s1': 1.0, 's2': 0.0}
    """
    check_choice(score, "score", _SCORES)
    true = _as_1d(labels_true, "labels_true")
    pred = _as_1d(labels_pred, "labels_pred")
    group = _as_1d(groups, "groups")
    _check_lengths(labels_true=true, labels_pred=pred, groups=group)
    if _missing(group).any():
        raise ValueError(f"`groups` has {int(_missing(group).sum())} missing values.")
    func = ari if score == "ari" else nmi
    categories = None
    if isinstance(groups, pd.Categorical):
        categories = groups.categories
    elif isinstance(getattr(groups, "dtype", None), pd.CategoricalDtype):
        categories = groups.cat.categories
    names = group.astype(str)
    order = [str(c) for c in categories if (names == str(c)).any()] if categories is not None else np.unique(names)
    out: dict[str, float] = {}
    for name in order:
        rows = names == name
        labeled = ~_missing(true[rows])
        out[str(name)] = func(true[rows], pred[rows]) if labeled.any() else float("nan")
    return out


def batch_mixing(
    latent: ArrayLike,
    batches: ArrayLike,
    labels: ArrayLike | None = None,
    *,
    n_neighbors: int = 30,
) -> float:
    """How well batches (e.g. slices) are mixed in a latent space: a LISI-style score in [0, 1].

    For each cell, the batch labels of its ``n_neighbors`` nearest neighbours in ``latent`` (Euclidean, the cell
    itself excluded) give proportions ``p_b`` and their inverse Simpson index ``1 / Σ p_b²``, which runs from 1
    (all neighbours from one batch) to the number of batches (evenly mixed). It is rescaled by the inverse Simpson
    index ``S`` of the overall batch proportions, the most mixing those proportions allow,
    ``(1 / Σ p_b² - 1) / (S - 1)``, clipped to [0, 1] and averaged over cells. So 0 means that neighbourhoods
    hold a single batch, and 1 that they are as mixed as the whole data set. Because a finite neighbourhood is a
    sample, batches drawn from one distribution score somewhat below 1: with 30 neighbours about 0.94 for two
    balanced batches, 0.89 for four and 0.79 for proportions 8:1:1. Compare scores computed with the same
    ``n_neighbors`` and batches.

    Mixing across biologically different cells is not a merit: pass ``labels`` (e.g. ground-truth domains or
    cortical layers) to score mixing within each label group instead, with neighbours searched among the cells of
    that group and ``S`` from that group's batch proportions. The result is then the mean over groups weighted by
    group size, skipping groups with a single batch or fewer than ``n_neighbors + 1`` cells, and cells whose
    label is missing.

    The neighbour search uses :class:`sklearn.neighbors.NearestNeighbors`; memory is linear in the number of cells.

    Parameters
    ----------
    latent
        Coordinates of the cells, n_cells x n_dims (e.g. ``adata.obsm["X_inspire"]``).
    batches
        Batch of each cell (e.g. ``adata.obs["slice"]``); must have no missing values.
    labels
        Optional biological label of each cell; see above.
    n_neighbors
        Neighbours per cell.

    Returns
    -------
    The mean mixing score, in [0, 1].

    Raises
    ------
    ValueError
        If the shapes do not match, ``latent`` has non-finite values, ``batches`` has missing values, there are
        fewer than two batches or too few cells, or (with ``labels``) no label group qualifies.

    Examples
    --------
    >>> import numpy as np
    >>> from sd_inspire.tl.metrics import batch_mixing
    >>> rng = np.random.default_rng(0)
    >>> latent = rng.normal(size=(400, 5))
    >>> batches = np.repeat(["a", "b"], 200)
    >>> batch_mixing(latent, batches) > 0.9
    True
    >>> batch_mixing(latent + (batches == "b")[:, None] * 100, batches)
    0.0
    """
    n_neighbors = check_integer(n_neighbors, "n_neighbors", minimum=1)
    x = _finite_2d(latent, "latent")
    batch = _as_1d(batches, "batches")
    _check_lengths(latent=x, batches=batch)
    if _missing(batch).any():
        raise ValueError(f"`batches` has {int(_missing(batch).sum())} missing values.")
    codes = np.unique(batch.astype(str), return_inverse=True)[1].ravel()
    n_batches = int(codes.max()) + 1 if codes.size else 0
    if n_batches < 2:
        raise ValueError(f"`batch_mixing` needs at least two batches, got {n_batches}.")

    if labels is None:
        if x.shape[0] <= n_neighbors:
            raise ValueError(
                f"`batch_mixing` needs more cells ({x.shape[0]}) than `n_neighbors` ({n_neighbors}); "
                "lower `n_neighbors`."
            )
        return float(np.mean(_mixing_scores(x, codes, n_batches, n_neighbors)))

    label = _as_1d(labels, "labels")
    _check_lengths(latent=x, labels=label)
    known = ~_missing(label)
    names = label.astype(str)
    total, weight = 0.0, 0
    for name in np.unique(names[known]):
        rows = known & (names == name)
        group_codes = codes[rows]
        if rows.sum() <= n_neighbors or np.unique(group_codes).size < 2:
            continue
        scores = _mixing_scores(x[rows], group_codes, n_batches, n_neighbors)
        total += float(scores.sum())
        weight += scores.size
    if weight == 0:
        raise ValueError(
            "No label group has at least two batches and more than `n_neighbors` "
            f"({n_neighbors}) cells; lower `n_neighbors` or check `labels`."
        )
    return total / weight


def factor_diversity(loadings: ArrayLike, n_top: int = 20) -> float:
    """Diversity of factors (gene programs): the fraction of distinct genes among their top genes.

    The top genes of a factor are the ``n_top`` genes with the largest loadings (for signed loadings, such as
    principal components, pass ``np.abs(loadings)``). The score is the number of distinct genes in the union of
    all factors' top genes divided by ``n_factors * n_top``: 1 when no two factors share a top gene, ``1 /
    n_factors`` when all factors have the same top genes.

    Parameters
    ----------
    loadings
        Loadings, n_genes x n_factors (e.g. ``adata.varm[...]``).
    n_top
        Top genes per factor, from 1 to n_genes.

    Returns
    -------
    The diversity, in ``[1 / n_factors, 1]``.

    Raises
    ------
    ValueError
        If ``loadings`` is not a 2D array of finite values or ``n_top`` is out of range.

    Examples
    --------
    >>> import numpy as np
    >>> from sd_inspire.tl.metrics import factor_diversity
    >>> loadings = np.array([[3, 0], [2, 1], [1, 2], [0, 3]])  # 4 genes x 2 factors
    >>> factor_diversity(loadings, n_top=2)  # top genes {0, 1} and {3, 2}
    1.0
    >>> factor_diversity(loadings, n_top=3)  # {0, 1, 2} and {3, 2, 1}: 4 distinct genes of 6
    0.6666666666666666
    """
    w = _finite_2d(loadings, "loadings")
    n_genes, n_factors = w.shape
    if n_factors == 0:
        raise ValueError(f"`loadings` has no factors (shape {w.shape}); expected n_genes x n_factors.")
    n_top = check_integer(n_top, "n_top", minimum=1, maximum=n_genes, maximum_label="the number of genes")
    top = np.argsort(-w, axis=0, kind="stable")[:n_top]
    return float(np.unique(top).size / top.size)


def factor_recovery(factors: ArrayLike, truth: ArrayLike) -> float:
    """How well factors recover known per-cell quantities, such as true cell-type proportions.

    For each column of ``truth``, the largest absolute Pearson correlation with any column of ``factors``; the
    mean over the columns of ``truth``. Constant columns (of either) have no correlation and are ignored.

    Parameters
    ----------
    factors
        Factor values, n_cells x n_factors (e.g. the cell loadings of gene programs).
    truth
        Reference values, n_cells x n_true (e.g. ``adata.obsm["true_proportions"]`` of a simulation).

    Returns
    -------
    The mean best absolute correlation, in [0, 1]; 0 if every factor is constant.

    Raises
    ------
    ValueError
        If the numbers of rows differ, an input is not a 2D array of finite values, or every column of ``truth``
        is constant.

    Examples
    --------
    >>> import numpy as np
    >>> from sd_inspire.tl.metrics import factor_recovery
    >>> truth = np.random.default_rng(0).dirichlet(np.ones(3), size=50)
    >>> factor_recovery(truth[:, ::-1] * 2, truth)
    1.0
    """
    f = _finite_2d(factors, "factors")
    t = _finite_2d(truth, "truth")
    if f.shape[0] != t.shape[0]:
        raise ValueError(
            f"`factors` and `truth` must have the same number of rows, got shapes {f.shape} and {t.shape}."
        )
    zt = _standardize(t)
    if zt.shape[1] == 0:
        raise ValueError(f"Every column of `truth` (shape {t.shape}) is constant; nothing to recover.")
    zf = _standardize(f)
    if zf.shape[1] == 0:
        return 0.0
    corr = np.clip(np.abs(zf.T @ zt) / f.shape[0], 0.0, 1.0)
    return float(corr.max(axis=0).mean())


def silhouette(
    latent: ArrayLike, labels: ArrayLike, *, sample_size: int | None = 10_000, random_state: int | None = 0
) -> float:
    """Mean silhouette width of labelled groups (e.g. domains or cell types) in a latent space.

    For each cell, ``(b - a) / max(a, b)`` with ``a`` its mean Euclidean distance to cells of its own label and
    ``b`` the smallest mean distance to the cells of another label (:func:`sklearn.metrics.silhouette_score`).
    Cells without a label are left out. The computation is quadratic in the number of cells, so above
    ``sample_size`` cells a random subset of that size (drawn with ``random_state``) is scored.

    Parameters
    ----------
    latent
        Coordinates, n_cells x n_dims.
    labels
        Label of each cell; at least two distinct labels.
    sample_size
        Cells scored at most; ``None`` scores all.
    random_state
        Seed of the subset.

    Returns
    -------
    The mean silhouette, from -1 (cells closer to other groups) to 1 (compact, well separated groups).

    Raises
    ------
    ValueError
        If the shapes differ, ``latent`` has non-finite values, or fewer than two labels remain.

    Examples
    --------
    >>> import numpy as np
    >>> from sd_inspire.tl.metrics import silhouette
    >>> x = np.r_[np.zeros((20, 2)), np.ones((20, 2)) * 10] + np.random.default_rng(0).normal(0, 0.1, (40, 2))
    >>> silhouette(x, ["a"] * 20 + ["b"] * 20) > 0.9
    True
    """
    from sklearn.metrics import silhouette_score

    x = _finite_2d(latent, "latent")
    label = _as_1d(labels, "labels")
    _check_lengths(latent=x, labels=label)
    keep = ~_missing(label)
    x, label = x[keep], label[keep].astype(str)
    if np.unique(label).size < 2:
        raise ValueError(f"`silhouette` needs at least two labels, got {np.unique(label).size}.")
    if sample_size is not None and x.shape[0] > sample_size:
        rows = np.random.default_rng(random_state).choice(x.shape[0], size=sample_size, replace=False)
        x, label = x[rows], label[rows]
    return float(silhouette_score(x, label))


def factor_coherence(loadings: ArrayLike, counts: ArrayLike, *, n_top: int = 10) -> float:
    """Coherence of gene programs: mean normalised pointwise mutual information (NPMI) of their top genes.

    For the ``n_top`` genes with the largest loading in each factor, every pair ``(i, j)`` is scored by how often
    the two genes are detected (count > 0) in the same spots: ``NPMI = log(p_ij / (p_i p_j)) / -log p_ij``, 1 when
    they always occur together, 0 when independent, -1 when never together (a pair never seen together scores -1).
    The result averages the pairs within each factor, then the factors. Programs of genes that are expressed
    together in tissue score high; programs of unrelated genes near 0.

    Parameters
    ----------
    loadings
        Loadings, n_genes x n_factors (e.g. ``adata.varm["inspire_loadings"]``).
    counts
        Counts (or any expression where > 0 means detected), n_spots x n_genes, columns in the order of the rows
        of ``loadings`` (dense or SciPy sparse; only the top genes' columns are read).
    n_top
        Top genes per factor (at least 2).

    Returns
    -------
    The mean NPMI, in [-1, 1].

    Raises
    ------
    ValueError
        If the numbers of genes differ, ``n_top`` is out of range, or an input is not a finite 2D array.

    Examples
    --------
    >>> import numpy as np
    >>> from sd_inspire.tl.metrics import factor_coherence
    >>> counts = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]])
    >>> together = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])  # genes 0+1 and 2+3
    >>> apart = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])  # genes 0+2 and 1+3
    >>> factor_coherence(together, counts, n_top=2) > factor_coherence(apart, counts, n_top=2)
    True
    """
    from scipy import sparse

    w = _finite_2d(loadings, "loadings")
    n_genes, n_factors = w.shape
    n_top = check_integer(n_top, "n_top", minimum=2, maximum=n_genes, maximum_label="the number of genes")
    if counts is None or len(getattr(counts, "shape", ())) != 2:
        raise ValueError("`counts` must be a 2D array (spots x genes).")
    if counts.shape[1] != n_genes:
        raise ValueError(
            f"`counts` has {counts.shape[1]} genes (columns) but `loadings` has {n_genes} (rows); they must match."
        )
    top = np.argsort(-w, axis=0, kind="stable")[:n_top]  # n_top x n_factors
    genes = np.unique(top)
    sub = counts[:, genes] if sparse.issparse(counts) else np.asarray(counts)[:, genes]
    detected = sparse.csr_matrix(sub > 0, dtype=np.float64)
    n_spots = detected.shape[0]
    joint = np.asarray((detected.T @ detected).todense()) / max(n_spots, 1)  # genes x genes co-detection
    marginal = np.diag(joint)
    pos = {g: k for k, g in enumerate(genes)}
    scores = []
    for f in range(n_factors):
        idx = np.array([pos[g] for g in top[:, f]])
        i, j = np.triu_indices(idx.size, k=1)
        p_ij = joint[idx[i], idx[j]]
        p_i, p_j = marginal[idx[i]], marginal[idx[j]]
        with np.errstate(divide="ignore", invalid="ignore"):
            npmi = np.log(p_ij / (p_i * p_j)) / -np.log(p_ij)
        npmi = np.where(p_ij <= 0, -1.0, npmi)
        npmi = np.where(p_ij >= 1, 1.0, npmi)  # detected everywhere: perfectly together
        scores.append(float(np.nanmean(npmi)))
    return float(np.mean(scores))


def _standardize(x: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to unit (population) variance; constant columns dropped."""
    centred = x - x.mean(axis=0)
    std = centred.std(axis=0)
    scale = np.abs(x).max(axis=0) if x.size else np.zeros(x.shape[1])
    keep = std > 1e-12 * np.maximum(scale, 1.0)
    return centred[:, keep] / std[keep]


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as a 1D object array."""
    if isinstance(values, pd.Series | pd.Index | pd.Categorical):
        arr = np.asarray(values.astype(object))
    else:
        arr = np.asarray(values, dtype=object)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional, got shape {arr.shape}.")
    return arr


def _missing(values: np.ndarray) -> np.ndarray:
    """Whether each entry is NaN, None, ``pd.NA`` or the string ``"nan"`` (any case)."""
    isna = pd.isna(values).astype(bool)
    is_nan_str = np.array([isinstance(v, str) and v.strip().lower() == "nan" for v in values], dtype=bool)
    return isna | is_nan_str


def _check_lengths(**arrays: np.ndarray) -> None:
    lengths = {name: arr.shape[0] for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        shapes = ", ".join(f"`{name}` {arr.shape}" for name, arr in arrays.items())
        raise ValueError(f"Inputs must have one entry per observation; got shapes {shapes}.")


def _labeled_pairs(labels_true: ArrayLike, labels_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both labelings as strings, restricted to observations with a reference label."""
    true = _as_1d(labels_true, "labels_true")
    pred = _as_1d(labels_pred, "labels_pred")
    _check_lengths(labels_true=true, labels_pred=pred)
    keep = ~_missing(true)
    if not keep.any():
        raise ValueError(
            f"No observation has a reference label (all {true.size} entries of `labels_true` are missing)."
        )
    return true[keep].astype(str), pred[keep].astype(str)


def program_specificity(loadings: ArrayLike) -> np.ndarray:
    """Specificity of each gene to each gene program: ``B_kg log(B_kg / mean_k' B_k'g)``.

    A gene's term in the Kullback-Leibler divergence of program ``k`` from the mean of all programs: large for genes
    that weigh in the program *and* weigh more there than in the others; near 0 for genes that every program shares
    (highly expressed, housekeeping genes), which top the raw loadings of many programs.

    Parameters
    ----------
    loadings
        Non-negative loadings, n_genes x n_factors (e.g. ``adata.varm["inspire_loadings"]``).

    Returns
    -------
    Array of the shape of ``loadings``; 0 where a loading is 0.

    Examples
    --------
    >>> import numpy as np
    >>> from sd_inspire.tl.metrics import program_specificity
    >>> loadings = np.array([[0.5, 0.5], [0.4, 0.1], [0.1, 0.4]])  # a shared gene, then two specific ones
    >>> program_specificity(loadings).round(3)
    array([[ 0.   ,  0.   ],
           [ 0.188, -0.092],
           [-0.092,  0.188]])
    """
    w = _finite_2d(loadings, "loadings")
    if (w < 0).any():
        raise ValueError("`loadings` must be non-negative (gene programs).")
    mean = w.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(w > 0, w * np.log(w / mean), 0.0)


def redundant_factors(
    loadings: ArrayLike,
    factors: ArrayLike,
    *,
    min_program_similarity: float = 0.9,
    min_usage_correlation: float = 0.2,
) -> pd.DataFrame:
    """Pairs of factors that are near-duplicates: similar gene programs used in the same places.

    A factorisation with more factors than the tissue has distinct programs splits one program over several
    factors. Two factors are flagged when the Pearson correlation over genes of their programs' specificities
    (:func:`program_specificity`: what sets each program apart, not the genes all programs share) is at least
    ``min_program_similarity`` *and* the correlation over spots of their usage (proportions) is at least
    ``min_usage_correlation``. A flag is a hint for reading the results (interpret the pair together, or integrate
    again with fewer factors), not a verdict.

    Parameters
    ----------
    loadings
        Gene programs, n_genes x n_factors (``varm["inspire_loadings"]``; rows of genes outside the model may be
        left in: all-zero rows do not change the correlations of specificities much, but are best dropped).
    factors
        Factor proportions, n_spots x n_factors (``obsm["inspire_factors"]``).
    min_program_similarity
        Smallest correlation of two programs' specificities, in ``[-1, 1]``.
    min_usage_correlation
        Smallest correlation of two factors' usage over spots, in ``[-1, 1]``.

    Returns
    -------
    One row per flagged pair (``factor``, ``similar_to``: names ``"factor_k"`` with the smaller index first;
    ``program_similarity``, ``usage_correlation``), most similar programs first; empty when no pair is flagged.

    Raises
    ------
    ValueError
        If the shapes disagree or a value is not finite.

    Examples
    --------
    >>> import numpy as np
    >>> from sd_inspire.tl.metrics import redundant_factors
    >>> rng = np.random.default_rng(0)
    >>> programs = rng.dirichlet(np.ones(50), 3).T  # 50 genes x 3 programs
    >>> loadings = np.hstack([programs, programs[:, [0]] * rng.uniform(0.95, 1.05, (50, 1))])  # factor 3 copies 0
    >>> usage = rng.dirichlet(np.ones(3), 200)
    >>> factors = np.hstack([usage[:, [0]] / 2, usage[:, 1:], usage[:, [0]] / 2])
    >>> redundant_factors(loadings, factors)[["factor", "similar_to"]].values.tolist()
    [['factor_0', 'factor_3']]
    """
    from sd_inspire._utils import factor_label

    w, beta = _finite_2d(loadings, "loadings"), _finite_2d(factors, "factors")
    if w.shape[1] != beta.shape[1]:
        raise ValueError(f"`loadings` has {w.shape[1]} factors but `factors` has {beta.shape[1]}.")
    for name, value in (
        ("min_program_similarity", min_program_similarity),
        ("min_usage_correlation", min_usage_correlation),
    ):
        if not -1.0 <= float(value) <= 1.0:
            raise ValueError(f"`{name}` must be between -1 and 1, got {value!r}.")
    columns = ["factor", "similar_to", "program_similarity", "usage_correlation"]
    n = w.shape[1]
    if n < 2:
        return pd.DataFrame({c: pd.Series(dtype=object if i < 2 else float) for i, c in enumerate(columns)})
    programs, usage = _correlations(program_specificity(w)), _correlations(beta)
    i, j = np.triu_indices(n, 1)
    keep = (programs[i, j] >= min_program_similarity) & (usage[i, j] >= min_usage_correlation)
    i, j = i[keep], j[keep]
    table = pd.DataFrame(
        {
            "factor": pd.Series([factor_label(int(k)) for k in i], dtype=object),
            "similar_to": pd.Series([factor_label(int(k)) for k in j], dtype=object),
            "program_similarity": programs[i, j],
            "usage_correlation": usage[i, j],
        }
    )
    return table.sort_values("program_similarity", ascending=False, kind="stable").reset_index(drop=True)


def _correlations(x: np.ndarray) -> np.ndarray:
    """Pearson correlations between the columns of ``x``; 0 for a constant column."""
    centred = x - x.mean(axis=0)
    norms = np.sqrt((centred**2).sum(axis=0))
    unit = np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)
    return np.clip(unit.T @ unit, -1.0, 1.0)


def _finite_2d(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as a finite float64 2D array, or raise naming ``name``."""
    if isinstance(values, pd.DataFrame):
        values = values.to_numpy()
    elif hasattr(values, "toarray"):
        values = values.toarray()
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be a 2D array, got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise ValueError(f"`{name}` has {int((~np.isfinite(x)).sum())} NaN or infinite values.")
    return x


def _mixing_scores(x: np.ndarray, codes: np.ndarray, n_batches: int, n_neighbors: int) -> np.ndarray:
    """Per-cell normalised inverse Simpson index of batch codes among the nearest neighbours."""
    from sklearn.neighbors import NearestNeighbors

    neighbors = NearestNeighbors(n_neighbors=n_neighbors).fit(x).kneighbors(return_distance=False)
    n_cells = x.shape[0]
    flat = np.repeat(np.arange(n_cells), n_neighbors) * n_batches + codes[neighbors].ravel()
    counts = np.bincount(flat, minlength=n_cells * n_batches).reshape(n_cells, n_batches)
    simpson = ((counts / n_neighbors) ** 2).sum(axis=1)
    proportions = np.bincount(codes, minlength=n_batches) / codes.size
    best = 1.0 / (proportions**2).sum()
    return np.clip((1.0 / simpson - 1.0) / (best - 1.0), 0.0, 1.0)
