from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import sd_inspire as si
from sd_inspire.tl._domains import _merge_ward, domains
from sd_inspire.tl.metrics import ari

HAS_LEIDEN = importlib.util.find_spec("igraph") is not None and importlib.util.find_spec("leidenalg") is not None


def _blobs(n_per=60, n_blobs=4, dim=5, seed=0):
    """Well-separated Gaussian blobs in obsm["X_inspire"], truth in obs["blob"], unequal blob sizes."""
    rng = np.random.default_rng(seed)
    sizes = [n_per + 10 * i for i in range(n_blobs)]
    centres = rng.normal(scale=30, size=(n_blobs, dim))
    x = np.vstack([c + rng.normal(size=(s, dim)) for c, s in zip(centres, sizes, strict=True)])
    truth = np.repeat(np.arange(n_blobs), sizes)
    perm = rng.permutation(x.shape[0])
    adata = AnnData(obs=pd.DataFrame({"blob": truth[perm].astype(str)}, index=[f"c{i}" for i in range(x.shape[0])]))
    adata.obsm["X_inspire"] = x[perm]
    return adata


@pytest.mark.parametrize("method", ["gmm", "kmeans"])
def test_recovers_blobs(method):
    adata = _blobs()
    assert domains(adata, n_domains=4, method=method) is None
    labels = adata.obs["inspire_domain"]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert list(labels.cat.categories) == ["0", "1", "2", "3"]
    assert ari(adata.obs["blob"], labels) == 1.0
    # ordered by size: the largest blob ("3", 90 cells) is domain "0"
    assert labels.value_counts().loc["0"] == 90
    assert (labels[adata.obs["blob"] == "3"] == "0").all()
    assert adata.uns["inspire_domain"] == {
        "method": method,
        "n_domains": 4,
        "use_rep": "X_inspire",
        "smooth": 0,
        "refine": 0,
        **({"covariance_type": "tied"} if method == "gmm" else {}),
        "n_components": 4,
        "log_ratio": False,
        "random_state": 0,
        "seed": adata.uns["inspire_domain"]["seed"],
        "n_found": 4,
    }


@pytest.mark.parametrize("covariance_type", ["tied", "full", "diag", "spherical"])
def test_gmm_covariance_types(covariance_type):
    adata = _blobs(n_per=40, n_blobs=3, dim=20)
    domains(adata, n_domains=3, method="gmm", covariance_type=covariance_type)
    assert ari(adata.obs["blob"], adata.obs["inspire_domain"]) == 1.0
    assert adata.uns["inspire_domain"]["covariance_type"] == covariance_type
    with pytest.raises(ValueError, match="covariance_type"):
        domains(adata, n_domains=3, covariance_type="EEE")


def _split_blobs(seed=0):
    """Three far-apart domains (truth in obs["blob"]), each made of two sub-blobs 6 sd apart along a gradient."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0], [60, 0, 0], [0, 60, 0]], dtype=float)
    step = np.array([0, 0, 6.0])
    parts, truth = [], []
    for domain, centre in enumerate(centres):
        for sub in (0, 1):
            parts.append(centre + sub * step + rng.normal(size=(50 + 10 * domain, 3)))
            truth += [domain] * (50 + 10 * domain)
    adata = AnnData(
        obs=pd.DataFrame({"blob": np.asarray(truth).astype(str)}, index=[f"c{i}" for i in range(len(truth))])
    )
    adata.obsm["X_inspire"] = np.vstack(parts)
    return adata


@pytest.mark.parametrize("method", ["gmm", "kmeans"])
@pytest.mark.parametrize("n_components", [4, 6, 9])
def test_n_components_merge_into_domains(method, n_components, caplog):
    """More clusters than domains are merged back: each domain is a union of clusters, none straddles two."""
    adata = _split_blobs()
    with caplog.at_level(logging.INFO, logger="sd_inspire"):
        domains(adata, n_domains=3, n_components=n_components, method=method)
    assert ari(adata.obs["blob"], adata.obs["inspire_domain"]) == 1.0
    assert adata.uns["inspire_domain"]["n_components"] == n_components
    assert adata.uns["inspire_domain"]["n_found"] == 3
    assert f"({n_components} clusters merged)" in caplog.text


@pytest.mark.parametrize("covariance_type", ["tied", "full", "diag", "spherical"])
def test_n_components_with_every_covariance_type(covariance_type):
    adata = _split_blobs(seed=1)
    domains(adata, n_domains=3, n_components=6, covariance_type=covariance_type)
    assert ari(adata.obs["blob"], adata.obs["inspire_domain"]) == 1.0


def test_merge_ward_is_ward_linkage():
    """Merging singletons reproduces scipy's Ward linkage cut into the same number of clusters."""
    from scipy.cluster.hierarchy import fcluster, linkage

    x = np.random.default_rng(3).normal(size=(40, 4))
    for n_clusters in (1, 3, 7, 40):
        ours = _merge_ward(x, np.arange(40) * 10, n_clusters)  # labels need not be 0..n-1
        theirs = fcluster(linkage(x, method="ward"), t=n_clusters, criterion="maxclust")
        assert np.unique(ours).size == n_clusters
        assert ari(theirs, ours) == 1.0
    # clusters are merged by the sizes and means of their members, not as points
    labels = np.array([0] * 10 + [1] + [2])
    x = np.concatenate([np.zeros(10), [3.0], [5.0]])[:, None]
    # joining 0 and 1 costs 10*1/11 * 9 = 8.2; joining 1 and 2 costs 1/2 * 4 = 2: 1 and 2 merge although 1 is nearer 0
    np.testing.assert_array_equal(_merge_ward(x, labels, 2), [0] * 10 + [1, 1])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_components": 2}, ValueError, r"between `n_domains` \(3\) and the number of spots \(360\), got 2"),
        ({"n_components": 361}, ValueError, r"`n_components` must be between"),
        ({"n_components": 4.5}, TypeError, r"`n_components` must be an integer or None, got 4.5"),
        ({"n_components": 5, "method": "leiden"}, ValueError, r"Leiden does not merge"),
    ],
)
def test_bad_n_components(kwargs, error, match):
    with pytest.raises(error, match=match):
        domains(_split_blobs(), n_domains=3, **kwargs)


def _proportions(seed=0):
    """Three groups of 6-factor proportions told apart only by the level of a rare factor (0.1%, 1%, 10%)."""
    rng = np.random.default_rng(seed)
    rare = np.repeat([1e-3, 1e-2, 1e-1], 80)
    common = rng.dirichlet(np.full(5, 3.0), size=rare.size) * (1 - rare)[:, None]
    x = np.column_stack([common, rare * np.exp(rng.normal(scale=0.2, size=rare.size))])
    x /= x.sum(axis=1, keepdims=True)
    adata = AnnData(obs=pd.DataFrame({"group": np.repeat(["a", "b", "c"], 80)}, index=[f"s{i}" for i in range(240)]))
    adata.obsm["inspire_factors"] = x
    return adata


def test_log_ratio_is_used_for_proportions():
    adata = _proportions()
    domains(adata, n_domains=3, use_rep="inspire_factors")
    assert adata.uns["inspire_domain"]["log_ratio"] is True
    assert ari(adata.obs["group"], adata.obs["inspire_domain"]) == 1.0
    # on the raw proportions the rare factor's 0.1% / 1% levels are lost among the common factors' spread
    domains(adata, n_domains=3, use_rep="inspire_factors", log_ratio=False, key_added="raw")
    assert adata.uns["raw"]["log_ratio"] is False
    assert ari(adata.obs["group"], adata.obs["raw"]) < 0.9
    # the transform is the documented one: clustering its output as is gives the same domains
    logp = np.log(adata.obsm["inspire_factors"] + 1e-3)
    adata.obsm["clr"] = logp - logp.mean(axis=1, keepdims=True)
    domains(adata, n_domains=3, use_rep="clr", key_added="clr")
    assert adata.uns["clr"]["log_ratio"] is False  # negative values: not proportions
    np.testing.assert_array_equal(adata.obs["clr"].to_numpy(), adata.obs["inspire_domain"].to_numpy())


def test_log_ratio_needs_non_negative_values():
    adata = _blobs()
    domains(adata, n_domains=4)
    assert adata.uns["inspire_domain"]["log_ratio"] is False
    with pytest.raises(ValueError, match=r"log_ratio=True.*obsm\['X_inspire'\].*inspire_factors"):
        domains(adata, n_domains=4, log_ratio=True)


needs_leiden = pytest.mark.skipif(
    not HAS_LEIDEN, reason="igraph and leidenalg are not installed (pip install igraph leidenalg)"
)


@needs_leiden
def test_leiden_recovers_blobs():
    adata = _blobs()
    domains(adata, n_domains=4, method="leiden", key_added="leiden")
    assert ari(adata.obs["blob"], adata.obs["leiden"]) == 1.0
    assert adata.uns["leiden"]["method"] == "leiden"
    assert adata.uns["leiden"]["resolution"] >= 0


@needs_leiden
@pytest.mark.parametrize("n_domains", [2, 5, 8])
def test_leiden_reaches_requested_number(n_domains):
    # one connected cloud: the resolution search must find a partition with exactly n_domains clusters
    adata = _blobs(n_blobs=1, n_per=300, dim=3)
    domains(adata, n_domains=n_domains, method="leiden", key_added="leiden")
    assert adata.obs["leiden"].nunique() == n_domains
    assert adata.obs["leiden"].cat.categories.tolist() == [str(i) for i in range(n_domains)]
    assert adata.uns["leiden"]["n_found"] == n_domains


@needs_leiden
def test_leiden_warns_when_unreachable(caplog):
    # four disconnected kNN components cannot be merged into two Leiden communities
    adata = _blobs()
    with caplog.at_level(logging.WARNING, logger="sd_inspire"):
        domains(adata, n_domains=2, method="leiden")
    assert "could not reach exactly 2 domains; keeping 4" in caplog.text
    assert adata.uns["inspire_domain"]["n_found"] == 4


@pytest.mark.skipif(HAS_LEIDEN, reason="igraph and leidenalg are installed")
def test_leiden_without_igraph_says_what_to_install():
    with pytest.raises(ImportError, match="pip install igraph leidenalg"):
        domains(_blobs(), n_domains=4, method="leiden")


@pytest.mark.parametrize("method", ["gmm", "kmeans", *(["leiden"] if HAS_LEIDEN else [])])
def test_same_random_state_same_result(method):
    adata = _blobs(n_per=30, n_blobs=5)
    # structureless data, so that the result depends on the initialisation
    adata.obsm["X_inspire"] = np.random.default_rng(5).normal(size=(adata.n_obs, 2))
    a = domains(adata, n_domains=5, method=method, random_state=7, copy=True)
    b = domains(adata, n_domains=5, method=method, random_state=7, copy=True)
    c = domains(adata, n_domains=5, method=method, random_state=np.random.default_rng(7), copy=True)
    pd.testing.assert_series_equal(a.obs["inspire_domain"], b.obs["inspire_domain"])
    pd.testing.assert_series_equal(a.obs["inspire_domain"], c.obs["inspire_domain"])
    assert a.uns["inspire_domain"]["seed"] == c.uns["inspire_domain"]["seed"]
    assert c.uns["inspire_domain"]["random_state"] is None
    if method != "leiden":  # the seed does reach the clustering
        other = domains(adata, n_domains=5, method=method, random_state=0, copy=True)
        assert ari(a.obs["inspire_domain"], other.obs["inspire_domain"]) < 1


def test_random_state_does_not_touch_global_state():
    adata = _blobs()
    before = np.random.get_state()[1].copy()  # noqa: NPY002 - the legacy global state is what is checked
    domains(adata, n_domains=4, method="gmm", random_state=None)
    domains(adata, n_domains=4, method="kmeans", random_state=None)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # noqa: NPY002


def test_copy_leaves_input_untouched():
    adata = _blobs()
    obs_before, uns_before = adata.obs.copy(), dict(adata.uns)
    out = domains(adata, n_domains=4, method="kmeans", key_added="dom", copy=True)
    assert isinstance(out, AnnData)
    assert out is not adata
    assert "dom" in out.obs
    assert "dom" in out.uns
    pd.testing.assert_frame_equal(adata.obs, obs_before)
    assert dict(adata.uns) == uns_before


def test_single_domain():
    adata = _blobs()
    domains(adata, n_domains=1, method="gmm")
    assert adata.obs["inspire_domain"].cat.categories.tolist() == ["0"]
    assert (adata.obs["inspire_domain"] == "0").all()


def test_missing_obsm_key():
    adata = _blobs()
    with pytest.raises(KeyError, match=r"X_nope.*X_inspire"):
        domains(adata, use_rep="X_nope")


@pytest.mark.parametrize("n_domains", [0, -1, 301])
def test_bad_n_domains(n_domains):
    with pytest.raises(ValueError, match="between 1 and the number of spots"):
        domains(_blobs(), n_domains=n_domains)


def test_bad_method():
    with pytest.raises(ValueError, match="`method` must be one of"):
        domains(_blobs(), method="hdbscan")


def test_non_finite_representation():
    adata = _blobs()
    adata.obsm["X_inspire"][3, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values in 1 rows, e.g. 'c3'"):
        domains(adata, n_domains=2)


def test_spatialdata_input_and_squidpy_nhood_enrichment(sim_sdata, sim_adata):
    import squidpy as sq
    from sklearn.decomposition import PCA

    # SpatialData: the table is updated in place
    table = sim_sdata.tables["table"]
    table.obsm["X_inspire"] = np.log1p(table.X.toarray())[:, :10]
    domains(sim_sdata, n_domains=3, method="kmeans")
    assert sim_sdata.tables["table"].obs["inspire_domain"].nunique() == 3

    # squidpy reads the written key with the graph of sd_inspire
    adata = sim_adata
    adata.obsm["X_pca"] = PCA(10, random_state=0).fit_transform(np.log1p(adata.X.toarray()))
    si.gr.spatial_neighbors(adata)
    domains(adata, n_domains=4, use_rep="X_pca", method="gmm")
    sq.gr.nhood_enrichment(adata, cluster_key="inspire_domain", n_perms=20, seed=0, show_progress_bar=False)
    z = adata.uns["inspire_domain_nhood_enrichment"]["zscore"]
    k = adata.obs["inspire_domain"].cat.categories.size
    assert z.shape == (k, k)
    assert np.isfinite(z).all()
    # the simulated domains are spatially coherent, so the domains found self-enrich
    off_diagonal = z[~np.eye(k, dtype=bool)]
    assert np.diag(z).mean() > 5
    assert np.diag(z).mean() > off_diagonal.mean() + 5


def _noisy_domains(adata, *, seed: int, noise: float) -> np.ndarray:
    """Spatial graph, and ``obsm["noisy"]``: one random centre per true domain plus Gaussian noise; returns the truth."""
    si.gr.spatial_neighbors(adata)
    rng = np.random.default_rng(seed)
    truth = adata.obs["domain"].cat.codes.to_numpy()
    centres = rng.normal(0, 1.0, (truth.max() + 1, 5))
    adata.obsm["noisy"] = centres[truth] + rng.normal(0, noise, (adata.n_obs, 5))
    return truth


def test_smooth_makes_domains_contiguous(sim_adata):
    truth = _noisy_domains(sim_adata, seed=0, noise=1.2)
    raw = domains(sim_adata, n_domains=5, use_rep="noisy", smooth=0, copy=True).obs["inspire_domain"]
    smooth = domains(sim_adata, n_domains=5, use_rep="noisy", smooth=2, copy=True)
    assert smooth.uns["inspire_domain"]["smooth"] == 2
    assert ari(truth, smooth.obs["inspire_domain"]) > ari(truth, raw) + 0.1
    del sim_adata.obsp["spatial_connectivities"]
    with pytest.raises(KeyError, match="needs the graph"):
        domains(sim_adata, n_domains=5, use_rep="noisy", smooth=1)


def test_default_smooths_once_where_there_is_a_graph(sim_adata, caplog):
    """One hop by default with the spatial graph (the same as `smooth=1`); none, with a logged warning, without."""
    _noisy_domains(sim_adata, seed=1, noise=1.2)
    default = domains(sim_adata, n_domains=5, use_rep="noisy", copy=True)
    once = domains(sim_adata, n_domains=5, use_rep="noisy", smooth=1, copy=True)
    assert default.uns["inspire_domain"]["smooth"] == 1
    assert (default.obs["inspire_domain"] == once.obs["inspire_domain"]).all()
    del sim_adata.obsp["spatial_connectivities"]
    with caplog.at_level("WARNING", logger="sd_inspire"):
        no_graph = domains(sim_adata, n_domains=5, use_rep="noisy", copy=True)
    assert no_graph.uns["inspire_domain"]["smooth"] == 0
    assert "No spatial graph `adata.obsp['spatial_connectivities']`" in caplog.text
    raw = domains(sim_adata, n_domains=5, use_rep="noisy", smooth=0, copy=True)
    assert (no_graph.obs["inspire_domain"] == raw.obs["inspire_domain"]).all()


def test_refine_takes_the_neighbour_majority():
    from scipy import sparse

    from sd_inspire.tl._domains import _majority_vote

    # a path 0-1-2-3-4: spot 2 disagrees with both of its neighbours
    edges = [(0, 1), (1, 2), (2, 3), (3, 4)]
    rows, cols = zip(*(edges + [(b, a) for a, b in edges]), strict=True)
    graph = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(5, 5))
    np.testing.assert_array_equal(_majority_vote(np.array([0, 0, 1, 0, 0]), graph, 1), [0, 0, 0, 0, 0])
    # ties stay: spots 1 and 2 have one neighbour of each label
    np.testing.assert_array_equal(_majority_vote(np.array([0, 0, 1, 1, 1]), graph, 5), [0, 0, 1, 1, 1])


def test_refine_removes_speckles(sim_adata):
    truth = _noisy_domains(sim_adata, seed=1, noise=0.9)
    raw = domains(sim_adata, n_domains=5, use_rep="noisy", smooth=0, copy=True).obs["inspire_domain"]
    refined = domains(sim_adata, n_domains=5, use_rep="noisy", smooth=0, refine=3, copy=True)
    assert refined.uns["inspire_domain"]["refine"] == 3
    assert ari(truth, refined.obs["inspire_domain"]) > ari(truth, raw) + 0.05
    with pytest.raises(ValueError, match="`refine` must be at least 0, got -1"):
        domains(sim_adata, n_domains=5, use_rep="noisy", refine=-1)
    del sim_adata.obsp["spatial_connectivities"]
    with pytest.raises(KeyError, match="`refine=1` needs the graph"):
        domains(sim_adata, n_domains=5, use_rep="noisy", refine=1)


def test_gmm_fits_one_at_a_time_are_scikit_learns_best_of_ten():
    # the progress bar runs the initialisations one by one: the same fits as GaussianMixture(n_init=10)
    from sklearn.mixture import GaussianMixture

    from sd_inspire.tl._domains import _gmm

    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(i, 1.0, (200, 4)) for i in range(5)])
    ours = _gmm(x, 6, 6, 11, "tied", show_progress_bar=True)
    theirs = GaussianMixture(6, covariance_type="tied", n_init=10, max_iter=500, random_state=11).fit_predict(x)
    np.testing.assert_array_equal(ours, theirs)
