from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import sd_inspire as si


def _slice_of_each_row(adata):
    return adata.obs["slice"].cat.codes.to_numpy()


def _assert_no_cross_slice_edges(adata, key="spatial_connectivities"):
    g = adata.obsp[key].tocoo()
    codes = _slice_of_each_row(adata)
    assert g.nnz > 0
    assert np.all(codes[g.row] == codes[g.col])


def test_keys_and_defaults_per_technology():
    adata = si.datasets.simulate(
        4, n_spots=400, n_genes=100, technology=["visium", "stereoseq", "slideseq", "merfish"], output="anndata"
    )
    si.gr.spatial_neighbors(adata)
    conn, dist = adata.obsp["spatial_connectivities"], adata.obsp["spatial_distances"]
    assert conn.shape == dist.shape == (1600, 1600)
    assert conn.diagonal().sum() == 0
    _assert_no_cross_slice_edges(adata)
    deg = pd.Series(np.asarray(conn.sum(axis=1)).ravel()).groupby(adata.obs["technology"].to_numpy()).agg(["max"])
    assert deg.loc["visium", "max"] == 6
    assert deg.loc["stereoseq", "max"] == 8
    assert deg.loc["slideseq", "max"] >= 8  # k-NN: 8 out-edges, symmetric in-edges may add
    params = adata.uns["spatial_neighbors"]
    assert params["connectivities_key"] == "spatial_connectivities"
    assert params["distances_key"] == "spatial_distances"
    per = params["params"]["per_slice"]
    assert per["slice0"]["method"] == "grid"
    assert per["slice2"]["method"] == "knn"
    # Visium spot centres are 100 µm apart: every grid edge has that length
    rows = (adata.obs["slice"] == "slice0").to_numpy()
    sub = conn[rows][:, rows].tocoo()
    xy = adata.obsm["spatial"][rows]
    np.testing.assert_allclose(np.linalg.norm(xy[sub.row] - xy[sub.col], axis=1), 100.0)


def test_overrides(sim_adata):
    si.gr.spatial_neighbors(sim_adata, method="knn", n_neighs=3, key_added="knn3")
    assert "knn3_connectivities" in sim_adata.obsp
    assert np.asarray(sim_adata.obsp["knn3_connectivities"].sum(axis=1)).ravel().min() == 3
    si.gr.spatial_neighbors(sim_adata, method="radius", radius=150.0, key_added="r")
    d = sim_adata.obsp["r_distances"]
    assert d.data.max() <= 150.0
    _assert_no_cross_slice_edges(sim_adata, "r_connectivities")
    si.gr.spatial_neighbors(sim_adata, method="delaunay", key_added="dl")
    _assert_no_cross_slice_edges(sim_adata, "dl_connectivities")


def test_overlapping_slices_never_connect():
    # two slices on top of each other: nearest neighbours of a spot are in the other slice
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (50, 2))
    adata = AnnData(
        obs=pd.DataFrame({"slice": pd.Categorical(["a"] * 50 + ["b"] * 50)}, index=[str(i) for i in range(100)])
    )
    adata.obsm["spatial"] = np.vstack([xy, xy + 0.01])
    si.gr.spatial_neighbors(adata, method="knn", n_neighs=4)
    _assert_no_cross_slice_edges(adata)


def test_copy_and_spatialdata(sim_sdata):
    out = si.gr.spatial_neighbors(sim_sdata, copy=True)
    assert "spatial_connectivities" in out.obsp
    assert "spatial_connectivities" not in sim_sdata["table"].obsp
    assert si.gr.spatial_neighbors(sim_sdata) is None
    assert "spatial_connectivities" in sim_sdata["table"].obsp


def test_squidpy_reads_the_graph(sim_adata):
    import squidpy as sq

    si.gr.spatial_neighbors(sim_adata)
    sq.gr.nhood_enrichment(sim_adata, cluster_key="domain", n_perms=20, seed=0, show_progress_bar=False)
    z = sim_adata.uns["domain_nhood_enrichment"]["zscore"]
    assert z.shape == (5, 5)
    assert np.all(np.diag(z) > 0)  # layered domains: spots neighbour their own domain


def test_bad_input(sim_adata):
    bad = sim_adata.copy()
    del bad.obsm["spatial"]
    with pytest.raises(KeyError, match=r"obsm\['spatial'\]` is missing"):
        si.gr.spatial_neighbors(bad)
    bad = sim_adata.copy()
    bad.obsm["spatial"][7] = [np.inf, 0]
    with pytest.raises(ValueError, match=r"NaN or infinite coordinates for 1 observations in slice 'slice0'"):
        si.gr.spatial_neighbors(bad)
    with pytest.raises(ValueError, match="needs `radius=`"):
        si.gr.spatial_neighbors(sim_adata, method="radius")
    with pytest.raises(ValueError, match="`method` must be"):
        si.gr.spatial_neighbors(sim_adata, method="voronoi")
    with pytest.raises(KeyError, match="No column 'batch'"):
        si.gr.spatial_neighbors(sim_adata, slice_key="batch")


def test_tiny_slices():
    adata = AnnData(obs=pd.DataFrame({"slice": pd.Categorical(["a", "b", "b"])}, index=["x", "y", "z"]))
    adata.obsm["spatial"] = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    si.gr.spatial_neighbors(adata)
    conn = adata.obsp["spatial_connectivities"].toarray()
    assert conn[0].sum() == 0
    assert conn[1, 2] == 1


def _two_slices(second):
    grid = np.stack(np.meshgrid(np.arange(6), np.arange(5)), -1).reshape(-1, 2) * 10.0
    return AnnData(
        np.ones((30 + len(second), 3), dtype=np.float32),
        obs=pd.DataFrame(
            {"slice": pd.Categorical(["a"] * 30 + ["b"] * len(second))},
            index=[f"s{i}" for i in range(30 + len(second))],
        ),
        obsm={"spatial": np.vstack([grid, second])},
    )


def test_a_slice_without_edges_is_reported():
    adata = _two_slices(np.arange(20)[:, None] * np.array([[100.0, 100.0]]))  # 141 apart, radius 15
    with pytest.warns(UserWarning, match=r"Slice 'b': the spatial graph has no edges \(20 spots"):
        si.gr.spatial_neighbors(adata, method="radius", radius=15.0)


def test_delaunay_on_one_point_names_the_slice():
    adata = _two_slices(np.full((20, 2), 5.0))
    with pytest.raises(ValueError, match=r"Slice 'b': A Delaunay graph needs spots that span an area"):
        si.gr.spatial_neighbors(adata, method="delaunay")
