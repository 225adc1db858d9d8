from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import sd_inspire as si
from sd_inspire.gr._propagate import normalized_adjacency


@pytest.fixture
def graph_adata(sim_adata):
    si.pp.preprocess(sim_adata, n_top_genes=40)
    si.gr.spatial_neighbors(sim_adata)
    return sim_adata


def _dense_reference(adata, n_hops, mode="symmetric"):
    a = adata.obsp["spatial_connectivities"].toarray()
    a = np.maximum(a, a.T) + np.eye(a.shape[0])
    deg = a.sum(1)
    a_hat = a / np.sqrt(deg[:, None] * deg[None, :]) if mode == "symmetric" else a / deg[:, None]
    x = adata.X[:, adata.var["highly_variable"].to_numpy()].toarray()
    for _ in range(n_hops):
        x = a_hat @ x
    return x


@pytest.mark.parametrize("n_hops", [1, 2])
@pytest.mark.parametrize("mode", ["symmetric", "mean"])
def test_matches_dense_reference(graph_adata, n_hops, mode):
    si.gr.propagate(graph_adata, n_hops=n_hops, normalization=mode, chunk_size=37)
    out = graph_adata.obsm["X_propagated"]
    assert out.shape == (600, 40)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _dense_reference(graph_adata, n_hops, mode), rtol=1e-4, atol=1e-5)
    params = graph_adata.uns["propagated"]
    assert params["n_hops"] == n_hops
    assert params["normalization"] == mode
    assert list(params["var_names"]) == list(graph_adata.var_names[graph_adata.var["highly_variable"]])


def test_chunking_does_not_change_result(graph_adata):
    a = si.gr.propagate(graph_adata, chunk_size=7, copy=True).obsm["X_propagated"]
    b = si.gr.propagate(graph_adata, chunk_size=10_000, copy=True).obsm["X_propagated"]
    np.testing.assert_array_equal(a, b)


def test_mean_of_constant_is_constant(graph_adata):
    graph_adata.obsm["ones"] = np.ones((graph_adata.n_obs, 3))
    si.gr.propagate(graph_adata, use_rep="ones", normalization="mean", key_added="ones")
    np.testing.assert_allclose(graph_adata.obsm["X_ones"], 1.0, rtol=1e-6)


def test_no_leak_across_slices(graph_adata):
    rows = (graph_adata.obs["slice"] == "slice0").to_numpy()
    graph_adata.obsm["marker"] = rows[:, None].astype(float)
    si.gr.propagate(graph_adata, use_rep="marker", n_hops=5, key_added="m")
    assert np.all(graph_adata.obsm["X_m"][~rows] == 0)


def test_isolated_spot_keeps_its_features():
    a = sparse.csr_matrix((3, 3))
    a_hat = normalized_adjacency(a)
    np.testing.assert_allclose(a_hat.toarray(), np.eye(3))
    assert normalized_adjacency(a, self_loops=False).nnz == 0


def test_layer_and_errors(graph_adata):
    si.gr.propagate(graph_adata, layer="counts", use_highly_variable=False, key_added="c")
    assert graph_adata.obsm["X_c"].shape == (600, 200)
    with pytest.raises(KeyError, match="spatial_neighbors"):
        si.gr.propagate(graph_adata, connectivity_key="nope")
    with pytest.raises(KeyError, match="No `adata.obsm\\['X_pca'\\]`"):
        si.gr.propagate(graph_adata, use_rep="X_pca")
    with pytest.raises(ValueError, match="at least 1"):
        si.gr.propagate(graph_adata, n_hops=0)
    del graph_adata.var["highly_variable"]
    with pytest.raises(KeyError, match="highly_variable"):
        si.gr.propagate(graph_adata, use_highly_variable=True)


@pytest.mark.slow
def test_scales_linearly_200k_spots():
    import time
    import tracemalloc

    adata = si.datasets.simulate(
        2, n_spots=100_000, n_genes=60, n_cell_types=4, technology="slideseq", output="anndata"
    )
    si.gr.spatial_neighbors(adata)
    adata.obsm["feat"] = np.ones((adata.n_obs, 64), dtype=np.float32)
    tracemalloc.start()
    start = time.perf_counter()
    si.gr.propagate(adata, use_rep="feat", n_hops=2)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # quadratic would be 200k^2 floats (160 GB); a couple of feature matrices is ~100 MB
    assert peak < 1e9
    assert elapsed < 60


@pytest.mark.parametrize("n_hops", [2.5, True, float("nan"), "2", 0])
def test_n_hops_must_be_a_positive_integer(graph_adata, n_hops):
    with pytest.raises(ValueError, match="`n_hops` must be"):
        si.gr.propagate(graph_adata, n_hops=n_hops)
