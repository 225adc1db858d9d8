"""Spatial domains: clustering of an integrated representation with a GMM, k-means or Leiden."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from sd_inspire._docs import d
from sd_inspire._logging import log_added, logger, timed
from sd_inspire._utils import (
    category_colors,
    derive_seed,
    get_representation,
    get_table,
    is_spatialdata,
    maybe_copy,
    random_generator,
)
from sd_inspire._validate import check_choice, check_integer
from sd_inspire.io._write import check_table_matches_store, write_table_into_store

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

_METHODS = ("gmm", "kmeans", "leiden")
#: Initialisations of the Gaussian mixture (the best by likelihood bound is kept) and of k-means.
_GMM_N_INIT = 10
_KMEANS_N_INIT = 10
#: EM iterations of each Gaussian mixture fit.
_GMM_MAX_ITER = 500
_LEIDEN_N_NEIGHBORS = 15
_LEIDEN_MAX_STEPS = 40
#: Pseudocount of the centred log-ratio of proportions (``log_ratio``).
_CLR_PSEUDOCOUNT = 1e-3
#: Tolerance on the row sums when deciding whether a representation holds proportions.
_PROPORTION_TOL = 1e-4

#: Rounds of averaging over the spatial neighbours before clustering when ``smooth`` is not given (see the Notes of
#: :func:`domains` for the measurements behind it).
DEFAULT_SMOOTH = 1


@d.dedent
def domains(
    data: AnnData | SpatialData,
    *,
    n_domains: int = 7,
    method: Literal["gmm", "kmeans", "leiden"] = "gmm",
    use_rep: str = "X_inspire",
    table_key: str | None = None,
    key_added: str = "inspire_domain",
    covariance_type: Literal["tied", "full", "diag", "spherical"] = "tied",
    n_components: int | None = None,
    log_ratio: bool | None = None,
    smooth: int | None = None,
    refine: int = 0,
    connectivity_key: str = "spatial_connectivities",
    random_state: int | np.random.Generator | None = 0,
    show_progress_bar: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Cluster spots into spatial domains from a representation in :attr:`~anndata.AnnData.obsm`.

    The rows of ``obsm[use_rep]`` (e.g. the integrated latent space of all slices) are clustered with one of

    - ``"gmm"``: a Gaussian mixture (:class:`sklearn.mixture.GaussianMixture`, k-means initialisation, best of
      10 initialisations), by default with one covariance shared by all components (``covariance_type``).
    - ``"kmeans"``: :class:`sklearn.cluster.KMeans` with ``n_init=10``.
    - ``"leiden"``: Leiden communities (``leidenalg``, RB-configuration/modularity objective) of the symmetric,
      unweighted 15-nearest-neighbour graph of the representation. The resolution is searched by bisection until
      the partition has ``n_domains`` clusters; if that number cannot be reached exactly, a warning is logged and
      the partition with the closest number of clusters is kept. Needs the optional packages ``igraph`` and
      ``leidenalg``.

    Domains are named ``"0"``, ``"1"``, ... from the largest to the smallest (ties by the clustering's own
    label), so that labels do not depend on the arbitrary numbering of the clustering.

    Parameters
    ----------
    %(data)s
    n_domains
        Number of domains, from 1 to the number of spots.
    method
        ``"gmm"``, ``"kmeans"`` or ``"leiden"``, see above.
    use_rep
        Key of :attr:`~anndata.AnnData.obsm` with the representation to cluster.
    %(table_key)s
    key_added
        Domains go to ``obs[key_added]``, parameters to ``uns[key_added]``.
    covariance_type
        Covariance of the GMM components: ``"tied"`` (one covariance shared by all domains, as mclust's ``EEE``
        model that spatial-domain studies use; the most stable), ``"full"``, ``"diag"`` or ``"spherical"``.
    n_components
        Number of GMM components or k-means clusters to fit, then merge down to ``n_domains``: the pair of clusters
        whose union least increases the within-cluster sum of squares (Ward's criterion, on the cluster means
        weighted by their sizes) is merged, again and again. For a GMM the sums of squares are taken in the space
        whitened by the components' (size-weighted average) covariance, so that the merging follows the mixture's
        own distances. A domain can then be a union of several Gaussian components: this fits domains with a
        gradient inside them, as cortical layers have, and keeps the mixed spots on a boundary between two domains
        from becoming a domain of their own; for tissue organised in layers or gradients, try one to three above
        ``n_domains`` (see Notes). ``None``: ``n_domains``, no merging. Not used by Leiden.
    log_ratio
        Cluster the centred log-ratios ``log(p + 1e-3) - mean(log(p + 1e-3))`` of each row instead of the values, the
        usual coordinates for proportions (a Gaussian mixture on proportions that sum to 1 has a singular covariance
        and crowds rare factors near 0). ``None``: when the rows are proportions (non-negative, summing to 1), as in
        ``obsm["inspire_factors"]``. Clustering the factors rather than the latent space leaves out what the latent
        space keeps besides expression composition, such as sequencing depth.
    smooth
        Average the representation over the spatial neighbours this many times (``D^-1 (A + I)``, within slices)
        before clustering: domains come out more contiguous, and at single-cell resolution the clustering sees each
        cell's neighbourhood more than its own type. ``None`` (default): once where the graph
        ``obsp[connectivity_key]`` exists (:func:`sd_inspire.tl.integrate` builds it), else not at all (a logged
        warning). ``0`` clusters the representation as is: for small, sharply bounded domains, or to cluster cell
        classes rather than domains (see Notes).
    refine
        Rounds of neighbour majority vote after clustering: a spot takes the domain that more than half of its
        spatial neighbours share (within slices), which removes isolated, noisy assignments. ``0`` keeps the
        clustering as is.
    connectivity_key
        Graph in :attr:`~anndata.AnnData.obsp` used by ``smooth`` and ``refine``.
    %(random_state)s
        An integer seed is drawn from it and passed to scikit-learn or ``leidenalg``.
    show_progress_bar
        Show a progress bar over the Gaussian mixture's ten fits (the slow part).
    %(copy)s

    Returns
    -------
    %(copy_returns)s, with

    - ``obs[key_added]``: categorical domain of each spot, categories ``"0"``, ``"1"``, ... (only domains that
      hold at least one spot);
    - ``uns[key_added]``: ``method``, ``n_domains``, ``use_rep``, ``smooth``, ``refine``, ``covariance_type``
      (GMM), ``n_components`` (GMM and k-means), ``log_ratio`` (whether the log-ratios were clustered),
      ``random_state`` (the integer seed given, or ``None``), ``seed`` (the integer actually passed to the
      clustering), ``n_found`` (number of domains found) and, for Leiden, ``resolution``;
    - ``uns[f"{key_added}_colors"]``: one colour per domain (hex, scanpy's convention), used by scanpy, squidpy
      and every figure of :mod:`sd_inspire.pl`.

    Notes
    -----
    Gaussian-mixture domains can depend on the mixture's ``random_state`` (much more so on a latent space that keeps
    the sequencing depth, as one trained on log-normalised input does): comparing a few ``random_state`` values is a
    cheap check before interpreting domains.

    Merging (``n_components > n_domains``) suits domains with a gradient inside them and slightly lowers the
    agreement with discrete domains, which is why it is not the default. What was measured: *Concepts* in the docs,
    "Domains: how the defaults were chosen".

    One hop of smoothing is the default because it was the better choice on the benchmark suite as a whole
    (``benchmarks/results/domains_smooth_s31.csv``: this function's GMM on the default latent space of 15 datasets,
    five seeds each, mean per-slice ARI without / with it): higher on 10 of 15 datasets, among them both real sets
    annotated with domains (DLPFC 0.566 / 0.586, BaristaSeq 0.626 / 0.635) and all four sets of the two generators
    that share nothing with :func:`sd_inspire.datasets.simulate` (real spots or cells resampled into random-field
    domains +0.01 and +0.10, real Xenium cell types pooled into spots +0.06 or as single cells in niches 0.03 /
    0.48, where the latent space keeps each cell's own type in low-variance directions that a mixture with a shared
    covariance otherwise splits by); lower where domains are small and sharply bounded (simulated islands
    0.784 / 0.752, 5,000 genes 0.924 / 0.822) and on the MERFISH hypothalamus, whose annotation is cell classes,
    which any averaging over neighbours removes (0.327 / 0.080). Pass ``smooth=0`` for those.

    Raises
    ------
    KeyError
        If ``obsm[use_rep]`` is missing, or ``smooth`` (other than ``None``) or ``refine`` is set without
        ``obsp[connectivity_key]``.
    ValueError
        If ``n_domains`` is not between 1 and the number of spots, ``n_components`` not between ``n_domains`` and
        the number of spots (or given with Leiden), ``smooth`` or ``refine`` is not an integer >= 0, ``method`` or
        ``covariance_type`` is unknown, or the representation is not a 2D array of finite values.
    TypeError
        If ``n_domains`` is not an integer, ``n_components`` neither an integer nor ``None``, or ``random_state``
        neither an integer, a Generator nor ``None``.
    ImportError
        For ``method="leiden"`` without ``igraph`` and ``leidenalg`` installed.

    Examples
    --------
    >>> import numpy as np
    >>> import sd_inspire as si
    >>> adata = si.datasets.simulate(2, n_spots=300, output="anndata")
    >>> adata.obsm["X_inspire"] = np.log1p(adata.X.toarray())[:, :20]
    >>> si.tl.domains(adata, n_domains=3, method="kmeans")
    >>> adata.obs["inspire_domain"].cat.categories.tolist()
    ['0', '1', '2']
    """
    check_choice(method, "method", _METHODS)
    n_domains = check_integer(n_domains, "n_domains", type_error=True)
    rng = random_generator(random_state)
    adata = maybe_copy(get_table(data, table_key), copy)
    if not copy:
        check_table_matches_store(data, adata, table_key)  # before the work, not after it
    x = get_representation(adata, use_rep)
    log_ratio = _use_log_ratio(x, log_ratio, use_rep)
    check_choice(covariance_type, "covariance_type", ("tied", "full", "diag", "spherical"))
    if smooth is None:
        smooth = DEFAULT_SMOOTH if connectivity_key in adata.obsp else 0
        if not smooth:
            logger.warning(
                "No spatial graph `adata.obsp[%r]`: domains are clustered without the default smoothing over "
                "neighbours; run `sd_inspire.gr.spatial_neighbors` first, or pass `smooth=0`.",
                connectivity_key,
            )
    for name, value in (("smooth", smooth), ("refine", refine)):
        if check_integer(value, name, minimum=0) and connectivity_key not in adata.obsp:
            raise KeyError(
                f"`{name}={value}` needs the graph `adata.obsp[{connectivity_key!r}]`; run "
                "`sd_inspire.gr.spatial_neighbors`."
            )
    check_integer(n_domains, "n_domains", minimum=1, maximum=adata.n_obs, maximum_label="the number of spots")
    n_components = _check_components(n_components, n_domains, method, adata.n_obs)
    x = _features(x, log_ratio, smooth, adata.obsp[connectivity_key] if smooth else None)
    seed = derive_seed(rng)

    merged = f" ({n_components} clusters merged)" if n_components > n_domains else ""
    with timed(
        f"Clustering `obsm[{use_rep!r}]` ({x.shape[1]} dimensions) into {n_domains} domains with {method}{merged}"
    ):
        labels, extra = _cluster(x, method, n_components, n_domains, seed, covariance_type, show_progress_bar)
        if refine:
            labels = _majority_vote(labels, adata.obsp[connectivity_key], refine)
        labels = _relabel_by_size(labels)
        n_found = int(labels.max()) + 1
        if n_found != n_domains and method != "leiden":  # Leiden already logged its own warning
            logger.warning(
                "Asked for %d domains, %s found %d non-empty ones in `obsm[%r]`.", n_domains, method, n_found, use_rep
            )
        categories = [str(i) for i in range(n_found)]
        adata.obs[key_added] = pd.Categorical.from_codes(labels, categories=categories)
        adata.uns[key_added] = {
            "method": method,
            "n_domains": n_domains,
            "use_rep": use_rep,
            "smooth": int(smooth),
            "refine": int(refine),
            **({"covariance_type": covariance_type} if method == "gmm" else {}),
            **({"n_components": n_components} if method != "leiden" else {}),
            "log_ratio": bool(log_ratio),
            "random_state": int(random_state) if isinstance(random_state, int | np.integer) else None,
            "seed": seed,
            "n_found": n_found,
            **extra,
        }
        # one colour per domain, scanpy's convention: scanpy, squidpy and every sd-inspire figure use the same
        from matplotlib.colors import to_hex

        adata.uns[f"{key_added}_colors"] = [to_hex(c) for c in category_colors(len(categories))]
        log_added("obs", key_added)
        log_added("uns", key_added)
        log_added("uns", f"{key_added}_colors")
    if not copy and is_spatialdata(data):
        write_table_into_store(data, adata, table_key)  # a store-backed SpatialData keeps the result
    return adata if copy else None


def _use_log_ratio(x: np.ndarray, log_ratio: bool | None, use_rep: str) -> bool:
    """Whether to cluster the centred log-ratios of ``x``: by default when its rows are proportions."""
    if log_ratio is None:
        return _is_proportions(x)
    if log_ratio and (x < 0).any():
        raise ValueError(
            f"`log_ratio=True` needs non-negative values, but `adata.obsm[{use_rep!r}]` has negative ones "
            "(e.g. the latent space); pass proportions such as `use_rep='inspire_factors'`."
        )
    return log_ratio


def _check_components(n_components: int | None, n_domains: int, method: str, n_obs: int) -> int:
    """The number of clusters to fit before merging them into ``n_domains`` (``n_domains`` by default)."""
    if n_components is not None and method == "leiden":
        raise ValueError("`n_components` is for `method='gmm'` or `'kmeans'`; Leiden does not merge clusters.")
    n_components = check_integer(
        n_components,
        "n_components",
        minimum=n_domains,
        maximum=n_obs,
        minimum_label="`n_domains`",
        maximum_label="the number of spots",
        optional=True,
        type_error=True,
    )
    return n_domains if n_components is None else n_components


def _features(x: np.ndarray, log_ratio: bool, smooth: int, graph: sparse.spmatrix | None) -> np.ndarray:
    """What is clustered: ``x`` or its centred log-ratios, averaged ``smooth`` times over the neighbours in ``graph``."""
    if log_ratio:
        x = np.log(x + _CLR_PSEUDOCOUNT)
        x -= x.mean(axis=1, keepdims=True)
    if smooth:
        from sd_inspire._chunks import DEFAULT_CHUNK_SIZE, matmul_rows
        from sd_inspire._graph import normalized_adjacency

        a_mean = normalized_adjacency(graph, normalization="mean")
        for _ in range(smooth):
            x = matmul_rows(a_mean, x, DEFAULT_CHUNK_SIZE).astype(np.float64)
    return x


def _cluster(
    x: np.ndarray,
    method: str,
    n_components: int,
    n_domains: int,
    seed: int,
    covariance_type: str,
    show_progress_bar: bool,
) -> tuple[np.ndarray, dict[str, float]]:
    """Cluster labels of the rows of ``x`` by ``method``, and what the method found besides (Leiden's resolution)."""
    if method == "gmm":
        return _gmm(x, n_components, n_domains, seed, covariance_type, show_progress_bar), {}
    if method == "kmeans":
        return _kmeans(x, n_components, n_domains, seed), {}
    labels, resolution = _leiden(x, n_domains, seed)
    return labels, {"resolution": resolution}


def _is_proportions(x: np.ndarray) -> bool:
    """Whether the rows of ``x`` are proportions: at least two columns, non-negative, each row summing to 1."""
    return x.shape[1] >= 2 and bool((x >= 0).all()) and bool(np.allclose(x.sum(axis=1), 1.0, atol=_PROPORTION_TOL))


def _majority_vote(labels: np.ndarray, graph: sparse.spmatrix, rounds: int) -> np.ndarray:
    """``rounds`` synchronous updates: a spot takes the label held by more than half of its neighbours."""
    adjacency = sparse.csr_matrix(graph, dtype=np.float64)
    adjacency.setdiag(0)
    adjacency.eliminate_zeros()
    adjacency.data[:] = 1.0
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    n_labels = int(labels.max()) + 1
    for _ in range(rounds):
        one_hot = sparse.csr_matrix((np.ones(labels.size), (np.arange(labels.size), labels)), (labels.size, n_labels))
        votes = (adjacency @ one_hot).toarray()
        winner = votes.argmax(axis=1)
        new = np.where(votes[np.arange(labels.size), winner] > degree / 2, winner, labels)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def _gmm(
    x: np.ndarray, n_components: int, n_domains: int, seed: int, covariance_type: str, show_progress_bar: bool = False
) -> np.ndarray:
    """GMM labels; more components than domains are merged (:func:`_merge_ward`) in the mixture's whitened space.

    The best of ``_GMM_N_INIT`` fits by their likelihood bound, run one at a time (for the progress bar) from one
    random state: the same fits, in the same order, as scikit-learn's own ``n_init`` loop.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
    from tqdm.auto import tqdm

    state = np.random.RandomState(seed)
    gmm = None
    for _ in tqdm(range(_GMM_N_INIT), desc="Gaussian mixture", unit="fit", disable=not show_progress_bar, leave=False):
        fit = GaussianMixture(
            n_components=n_components,
            covariance_type=covariance_type,
            n_init=1,
            max_iter=_GMM_MAX_ITER,
            random_state=state,
        )
        with warnings.catch_warnings():  # said once below, for the fit kept
            warnings.simplefilter("ignore", ConvergenceWarning)
            fit.fit(x)
        if gmm is None or fit.lower_bound_ > gmm.lower_bound_:
            gmm = fit
    if not gmm.converged_:
        logger.warning(
            "The Gaussian mixture did not converge in %d iterations; its domains may change with more.", _GMM_MAX_ITER
        )
    labels = gmm.predict(x)
    if n_components == n_domains:
        return labels
    cov = gmm.covariances_  # the size-weighted average covariance of the components, as a matrix
    if covariance_type == "full":
        cov = np.einsum("k,kij->ij", gmm.weights_, cov)
    elif covariance_type == "diag":
        cov = np.diag(gmm.weights_ @ cov)
    elif covariance_type == "spherical":
        cov = np.eye(x.shape[1]) * float(gmm.weights_ @ cov)
    # cov = L L^T, so x L^-T has identity covariance; scikit-learn keeps cov positive definite (reg_covar)
    return _merge_ward(x @ np.linalg.inv(np.linalg.cholesky(cov)).T, labels, n_domains)


def _merge_ward(x: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Merge clusters pairwise by Ward's criterion on their means until ``n_clusters`` remain.

    Merging clusters ``a`` and ``b`` adds ``n_a n_b / (n_a + n_b) |m_a - m_b|²`` to the within-cluster sum of squares;
    the pair that adds least is merged first.
    """
    from scipy.spatial.distance import cdist

    uniques, codes = np.unique(labels, return_inverse=True)
    if uniques.size <= n_clusters:
        return labels
    sizes = np.bincount(codes).astype(np.float64)
    means = np.zeros((uniques.size, x.shape[1]))
    np.add.at(means, codes, x)
    means /= sizes[:, None]
    parent = np.arange(uniques.size)  # cluster that each original cluster was merged into
    alive = np.ones(uniques.size, dtype=bool)
    for _ in range(uniques.size - n_clusters):
        idx = np.flatnonzero(alive)
        m, n = means[idx], sizes[idx]
        cost = n[:, None] * n[None, :] / (n[:, None] + n[None, :]) * cdist(m, m, "sqeuclidean")
        cost[np.tril_indices(idx.size)] = np.inf
        i, j = np.unravel_index(np.argmin(cost), cost.shape)
        a, b = idx[i], idx[j]
        means[a] = (sizes[a] * means[a] + sizes[b] * means[b]) / (sizes[a] + sizes[b])
        sizes[a] += sizes[b]
        alive[b] = False
        parent[parent == b] = a
    return parent[codes]


def _kmeans(x: np.ndarray, n_components: int, n_domains: int, seed: int) -> np.ndarray:
    """k-means labels; more clusters than domains are merged (:func:`_merge_ward`)."""
    from sklearn.cluster import KMeans

    labels = KMeans(n_clusters=n_components, n_init=_KMEANS_N_INIT, random_state=seed).fit_predict(x)
    return _merge_ward(x, labels, n_domains) if n_components > n_domains else labels


def _leiden(x: np.ndarray, n_domains: int, seed: int) -> tuple[np.ndarray, float]:
    """Leiden clusters of the kNN graph of ``x`` with a resolution searched so that there are ``n_domains``."""
    try:
        import igraph
        import leidenalg
    except ImportError as err:
        raise ImportError(
            "`method='leiden'` needs the packages igraph and leidenalg: `pip install igraph leidenalg`. "
            "Or use `method='gmm'` or `method='kmeans'`."
        ) from err

    n_obs = x.shape[0]
    if n_domains == 1 or n_obs < 3:
        # One domain is the whole table; with fewer than three spots there is no graph worth clustering.
        labels = np.zeros(n_obs, dtype=np.int64) if n_domains == 1 else np.arange(n_obs, dtype=np.int64)
        return labels, 0.0

    graph = _knn_graph(x, min(_LEIDEN_N_NEIGHBORS, n_obs - 1))
    upper = sparse.triu(graph, k=1).tocoo()
    g = igraph.Graph(n=n_obs, edges=np.column_stack([upper.row, upper.col]).tolist(), directed=False)

    cache: dict[float, np.ndarray] = {}

    def partition(resolution: float) -> np.ndarray:
        if resolution not in cache:
            part = leidenalg.find_partition(
                g,
                leidenalg.RBConfigurationVertexPartition,
                resolution_parameter=resolution,
                n_iterations=2,
                seed=seed,
            )
            cache[resolution] = np.asarray(part.membership, dtype=np.int64)
        return cache[resolution]

    def n_clusters(resolution: float) -> int:
        return int(partition(resolution).max()) + 1

    # Bracket the target: the number of clusters grows (roughly monotonically) with the resolution.
    low, high = 0.0, 1.0
    while n_clusters(high) < n_domains and high < 2.0**12:
        low, high = high, high * 2
    for _ in range(_LEIDEN_MAX_STEPS):
        if n_clusters(high) == n_domains:
            break
        mid = (low + high) / 2
        found = n_clusters(mid)
        if found == n_domains:
            high = mid
            break
        if found < n_domains:
            low = mid
        else:
            high = mid
    # The searched resolution closest in number of clusters (the smallest resolution among ties).
    best = min(cache, key=lambda r: (abs(int(cache[r].max()) + 1 - n_domains), r))
    found = n_clusters(best)
    if found != n_domains:
        logger.warning(
            "Leiden could not reach exactly %d domains; keeping %d (resolution %.4g).", n_domains, found, best
        )
    return partition(best), float(best)


def _knn_graph(x: np.ndarray, n_neighbors: int) -> sparse.csr_matrix:
    """Symmetric, unweighted kNN graph of the rows of ``x`` (no self loops)."""
    from sklearn.neighbors import NearestNeighbors

    knn = NearestNeighbors(n_neighbors=n_neighbors).fit(x).kneighbors_graph(mode="connectivity")
    graph = knn.maximum(knn.T).tocsr()
    graph.setdiag(0)
    graph.eliminate_zeros()
    return graph


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Codes ``0..k-1`` for the non-empty labels, ``0`` the most frequent; ties by original label."""
    uniques, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.lexsort((uniques, -counts))  # by decreasing size, then by label
    rank = np.empty(uniques.size, dtype=np.int64)
    rank[order] = np.arange(uniques.size)
    return rank[inverse.ravel()]
