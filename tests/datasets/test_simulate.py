from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse
from spatialdata import SpatialData

import sd_inspire as si


def test_spatialdata_output_keys_and_shapes():
    sdata = si.datasets.simulate(2, n_spots=[120, 80], n_genes=150, n_cell_types=5, n_domains=4)
    assert isinstance(sdata, SpatialData)
    assert set(sdata.shapes) == {"slice0_shapes", "slice1_shapes"}
    t = sdata["table"]
    assert t.shape == (200, 150)
    assert sparse.isspmatrix_csr(t.X)
    assert t.X.dtype == np.float32
    assert np.all(t.X.data == np.round(t.X.data))
    assert t.X.data.min() > 0
    assert t.obs["slice"].cat.categories.tolist() == ["slice0", "slice1"]
    assert t.obs["slice"].value_counts().to_dict() == {"slice0": 120, "slice1": 80}
    assert isinstance(t.obs["domain"].dtype, pd.CategoricalDtype)
    assert set(t.obs["domain"].cat.categories) == {"D0", "D1", "D2", "D3"}
    props = t.obsm["true_proportions"]
    assert props.shape == (200, 5)
    np.testing.assert_allclose(props.sum(axis=1), 1.0, rtol=1e-5)
    assert t.obsm["spatial"].shape == (200, 2)
    truth = t.uns["simulation"]
    assert truth["profiles"].shape == (5, 150)
    np.testing.assert_allclose(truth["profiles"].sum(axis=1), 1.0)
    assert truth["compositions"].shape == (4, 5)
    assert truth["slice_effects"].shape == (2, 150)
    # the shapes sit at the table's coordinates
    circles = sdata.shapes["slice1_shapes"]
    rows = (t.obs["slice"] == "slice1").to_numpy()
    np.testing.assert_allclose(circles.geometry.x.to_numpy(), t.obsm["spatial"][rows, 0])


def test_visium_layout_in_microns():
    adata = si.datasets.simulate(1, n_spots=400, output="anndata")
    xy = adata.obsm["spatial"]
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=2)
    np.testing.assert_allclose(d[:, 1], 100.0, rtol=1e-6)  # Visium: spot centres 100 µm apart


def test_reproducible_and_seed_dependent():
    a = si.datasets.simulate(2, n_spots=100, n_genes=100, output="anndata", random_state=7)
    b = si.datasets.simulate(2, n_spots=100, n_genes=100, output="anndata", random_state=7)
    c = si.datasets.simulate(2, n_spots=100, n_genes=100, output="anndata", random_state=8)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.obsm["true_proportions"], b.obsm["true_proportions"])
    assert (a.X != c.X).nnz > 0


def test_no_global_rng_use():
    # the legacy global state must neither be read nor advanced
    np.random.seed(123)  # noqa: NPY002
    before = np.random.random()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    si.datasets.simulate(1, n_spots=50, n_genes=60, output="anndata")
    assert np.random.random() == before  # noqa: NPY002


def test_ground_truth_consistent_with_counts():
    adata = si.datasets.simulate(
        1, n_spots=3000, n_genes=200, n_cell_types=4, technology="slideseq", batch_effect=0.0, output="anndata"
    )
    truth = adata.uns["simulation"]
    x = adata.X.toarray()
    props = adata.obsm["true_proportions"]
    # marker genes of each type are highest where that type dominates
    for t, ct in enumerate(truth["cell_types"]):
        genes = [adata.var_names.get_loc(g) for g in truth["marker_genes"][ct]]
        frac = x[:, genes].sum(1) / np.maximum(x.sum(1), 1)
        corr = np.corrcoef(frac, props[:, t])[0, 1]
        assert corr > 0.5, (ct, corr)
    # the pooled expression profile matches the truth: counts/library ~ proportions @ profiles
    expected = props @ truth["profiles"]
    observed = x / x.sum(1, keepdims=True).clip(1)
    r = np.corrcoef(np.log(expected.mean(0)), np.log(observed.mean(0) + 1e-6))[0, 1]
    assert r > 0.95
    # each domain's spots carry that domain's composition
    for k, dom in enumerate(truth["domains"]):
        rows = (adata.obs["domain"] == dom).to_numpy()
        np.testing.assert_allclose(props[rows].mean(0), truth["compositions"][k], atol=0.12)


def test_batch_effect_is_per_slice_and_gene():
    adata = si.datasets.simulate(2, n_spots=2000, n_genes=100, batch_effect=1.0, output="anndata")
    eff = adata.uns["simulation"]["slice_effects"]
    x = adata.X.toarray()
    s = adata.obs["slice"].to_numpy()
    m0, m1 = x[s == "slice0"].mean(0), x[s == "slice1"].mean(0)
    keep = (m0 > 1) & (m1 > 1)
    observed = np.log(m0[keep] / m1[keep])
    expected = np.log(eff[0, keep] / eff[1, keep])
    assert np.corrcoef(observed, expected)[0, 1] > 0.9


def test_technologies_differ():
    adata = si.datasets.simulate(
        4, n_spots=400, n_genes=300, technology=["visium", "stereoseq", "slideseq", "merfish"], output="anndata"
    )
    obs = adata.obs
    depth = adata.X.sum(1).A1
    by_tech = pd.Series(depth).groupby(obs["technology"].to_numpy()).mean()
    assert by_tech["visium"] > by_tech["stereoseq"] > by_tech["slideseq"]
    cells = obs.groupby("technology", observed=True)["n_cells"].mean()
    assert cells["merfish"] == 1
    assert cells["visium"] > 5
    measured = adata.varm["measured"]
    assert measured["slice0"].all()
    assert measured["slice2"].all()
    panel = measured["slice3"]
    assert 0 < panel.sum() < 300
    assert all(panel[g] for g in adata.var_names if "_m" in g)  # every marker is in the panel
    # unmeasured genes carry no counts
    rows = (obs["slice"] == "slice3").to_numpy()
    assert adata.X[rows][:, ~panel.to_numpy()].nnz == 0


def test_anndata_and_slices_outputs():
    adata = si.datasets.simulate(2, n_spots=50, n_genes=80, output="anndata")
    assert isinstance(adata, AnnData)
    parts = si.datasets.simulate(2, n_spots=50, n_genes=80, output="slices")
    assert list(parts) == ["slice0", "slice1"]
    assert all(isinstance(p, SpatialData) for p in parts.values())
    assert parts["slice0"]["table"].n_obs == 50


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"technology": "nanostring"}, "Unknown technology"),
        ({"n_spots": [10, 20, 30]}, "3 entries"),
        ({"n_spots": 0}, "positive"),
        ({"n_genes": 10}, "too small"),
        ({"output": "zarr"}, "output"),
        ({"panel_size": 5}, "panel_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        si.datasets.simulate(2, **kwargs)


@pytest.mark.slow
def test_million_spots_fast_and_light():
    import time
    import tracemalloc

    tracemalloc.start()
    start = time.perf_counter()
    adata = si.datasets.simulate(
        8, n_spots=125_000, n_genes=200, technology=["slideseq", "merfish"] * 4, output="anndata"
    )
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert adata.n_obs == 1_000_000
    assert elapsed < 300
    assert peak < 8e9


def test_abundance_change_makes_a_cell_type_more_abundant_in_chosen_slices():
    kwargs = {"n_spots": 400, "n_genes": 200, "random_state": 3, "output": "anndata"}
    plain = si.datasets.simulate(4, **kwargs)
    changed = si.datasets.simulate(4, abundance_change={2: {"CT1": 3.0}, 3: {"CT1": 3.0}}, **kwargs)
    share = {
        name: {s: a.obsm["true_proportions"][(a.obs["slice"] == s).to_numpy(), 1].mean() for s in ["slice0", "slice2"]}
        for name, a in (("plain", plain), ("changed", changed))
    }
    assert share["changed"]["slice0"] == share["plain"]["slice0"]  # untouched slices are the same draws
    assert share["changed"]["slice2"] > 1.2 * share["plain"]["slice2"]
    np.testing.assert_allclose(changed.obsm["true_proportions"].sum(axis=1), 1.0, rtol=1e-5)
    assert changed.uns["simulation"]["params"]["abundance_change"] == {
        "slice2": {"CT1": 3.0},
        "slice3": {"CT1": 3.0},
    }
    for bad, message in (
        ({7: {"CT1": 2.0}}, "slice indices 0..3"),
        ({0: {"CT9": 2.0}}, "unknown cell type 'CT9'"),
        ({0: {"CT1": 0.0}}, "positive and finite"),
        ({0: {"CT1": "x"}}, "must be a number"),
        ([2.0], "must map slice indices"),
    ):
        with pytest.raises(ValueError, match=message):
            si.datasets.simulate(4, abundance_change=bad, **kwargs)
