from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import sd_inspire as si


def _two_panels(n: int = 400, seed: int = 0) -> AnnData:
    """Two slices on grids; the latent space is a smooth map of position; slice B did not measure gene 'g_hidden'."""
    rng = np.random.default_rng(seed)
    side = int(np.sqrt(n))
    xy = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2).astype(float) * 10
    coords = np.vstack([xy, xy])
    latent = np.column_stack([np.sin(coords[:, 0] / 60), np.cos(coords[:, 1] / 45)]) + rng.normal(0, 0.02, (2 * n, 2))
    signal = 2.0 + latent[:, 0] + 0.5 * latent[:, 1]  # the hidden gene is a function of the latent position
    x = np.column_stack([signal + rng.normal(0, 0.3, 2 * n), rng.gamma(2.0, 1.0, size=(2 * n, 3))])
    slices = np.repeat(["A", "B"], n)
    x[slices == "B", 0] = 0.0  # slice B did not measure it
    adata = AnnData(
        X=sparse.csr_matrix(x.astype(np.float32)),
        obs=pd.DataFrame({"slice": pd.Categorical(slices)}, index=[f"s{i}" for i in range(2 * n)]),
        var=pd.DataFrame(index=["g_hidden", "g1", "g2", "g3"]),
    )
    adata.obsm["spatial"] = coords
    adata.obsm["X_inspire"] = latent.astype(np.float32)
    adata.uns["truth"] = signal
    adata.varm["measured"] = pd.DataFrame({"A": [True] * 4, "B": [False, True, True, True]}, index=adata.var_names)
    si.gr.spatial_neighbors(adata, method="knn", n_neighs=6)
    return adata


def test_neighbors_predicts_unmeasured_gene():
    adata = _two_panels()
    si.tl.impute(adata, genes=["g_hidden"], smooth=0)
    layer = adata.layers["inspire_imputed"]
    assert sparse.issparse(layer)
    assert layer.shape == adata.shape
    in_b = (adata.obs["slice"] == "B").to_numpy()
    pred = layer[in_b][:, 0].toarray().ravel()
    truth = adata.uns["truth"][in_b]
    assert np.corrcoef(pred, truth)[0, 1] > 0.95
    assert np.abs(pred - truth).mean() < 0.2  # on the scale of the donors' X
    # the slice that measured the gene keeps its own values; other columns stay empty
    assert np.allclose(layer[~in_b][:, 0].toarray().ravel(), adata.X[~in_b][:, 0].toarray().ravel())
    assert layer[:, 1:].nnz == 0
    assert adata.var["inspire_imputed"].tolist() == [True, False, False, False]
    meta = adata.uns["inspire_imputed"]
    assert meta["n_genes_predicted"] == {"A": 0, "B": 1}
    assert list(meta["genes"]) == ["g_hidden"]


def test_spatial_smoothing_denoises_noisy_latent():
    adata = _two_panels(seed=1)
    rng = np.random.default_rng(3)
    adata.obsm["X_inspire"] = adata.obsm["X_inspire"] + rng.normal(0, 0.25, adata.obsm["X_inspire"].shape)
    in_b = (adata.obs["slice"] == "B").to_numpy()
    truth = adata.uns["truth"][in_b]
    corr = {}
    for smooth in (0, 3):
        si.tl.impute(adata, genes="g_hidden", smooth=smooth, n_neighbors=10)
        corr[smooth] = np.corrcoef(adata.layers["inspire_imputed"][in_b][:, 0].toarray().ravel(), truth)[0, 1]
    assert corr[3] > corr[0] + 0.05


def test_predict_observed_uses_other_slices_only():
    adata = _two_panels()
    adata.X[:, 1] = 0
    adata.X = sparse.csr_matrix(adata.X)
    adata.X[(adata.obs["slice"] == "A").to_numpy().nonzero()[0], 1] = 7.0  # g1: 7 in A, 0 in B, measured by both
    adata.X.eliminate_zeros()
    si.tl.impute(adata, genes=["g1"], observed="predict", smooth=0)
    values = adata.layers["inspire_imputed"][:, 1].toarray().ravel()
    in_a = (adata.obs["slice"] == "A").to_numpy()
    assert np.allclose(values[in_a], 0.0)  # predicted from B
    assert np.allclose(values[~in_a], 7.0)  # predicted from A
    # a gene measured by a single slice keeps that slice's values
    si.tl.impute(adata, genes=["g_hidden"], observed="predict", smooth=0)
    assert adata.uns["inspire_imputed"]["n_genes_predicted"] == {"A": 0, "B": 1}


def test_copy_and_deterministic():
    adata = _two_panels()
    out = si.tl.impute(adata, genes=["g_hidden"], copy=True)
    assert "inspire_imputed" not in adata.layers
    again = si.tl.impute(adata, genes=["g_hidden"], copy=True)
    assert (out.layers["inspire_imputed"] != again.layers["inspire_imputed"]).nnz == 0


def test_default_genes_are_those_some_slice_lacks():
    adata = _two_panels()
    si.tl.impute(adata, smooth=0)
    assert adata.uns["inspire_imputed"]["genes"].tolist() == ["g_hidden"]
    full = adata.copy()
    full.varm["measured"]["B"] = True
    with pytest.raises(ValueError, match="nothing to impute"):
        si.tl.impute(full)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"genes": ["nope", "g1"]}, KeyError, r"not in the table, e.g. \['nope'\]"),
        ({"genes": []}, ValueError, "empty"),
        ({"genes": ["g1", "g1"]}, ValueError, "duplicates"),
        ({"genes": ["g1"], "use_rep": "X_missing"}, KeyError, "tl.integrate"),
        ({"genes": ["g1"], "n_neighbors": 0}, ValueError, "n_neighbors"),
        ({"genes": ["g1"], "method": "magic"}, ValueError, "method"),
        ({"genes": ["g1"], "observed": "maybe"}, ValueError, "observed"),
        ({"genes": ["g1"], "method": "model"}, KeyError, "tl.integrate"),
    ],
)
def test_bad_input(kwargs, error, match):
    adata = _two_panels(n=100)
    with pytest.raises(error, match=match):
        si.tl.impute(adata, **kwargs)


def test_gene_measured_nowhere():
    adata = _two_panels(n=100)
    adata.varm["measured"].loc["g2", :] = False
    with pytest.raises(ValueError, match=r"measured by no slice.*'g2'"):
        si.tl.impute(adata, genes=["g2"])


@pytest.fixture(scope="module")
def panels():
    """Visium-like slice + MERFISH-like panel, integrated in the union gene space (short training)."""
    sdata = si.datasets.simulate(
        2, n_spots=[300, 300], n_genes=150, technology=["visium", "merfish"], panel_size=60, random_state=4
    )
    si.pp.preprocess(sdata, gene_space="union", n_top_genes=120)
    si.tl.integrate(sdata, n_factors=6, max_steps=60, show_progress_bar=False)
    return sdata


def test_impute_after_integrate_union(panels):
    table = panels["table"]
    lacking = table.var_names[~table.varm["measured"]["slice1"].to_numpy()]
    out = si.tl.impute(panels, genes=lacking[:10], copy=True)
    layer = out.layers["inspire_imputed"]
    in_merfish = (table.obs["slice"] == "slice1").to_numpy()
    cols = table.var_names.get_indexer(lacking[:10])
    pred = layer[in_merfish][:, cols].toarray()
    assert np.isfinite(pred).all()
    assert (pred >= 0).all()
    assert (pred > 0).mean() > 0.5  # filled for the panel's spots
    assert "inspire_imputed" not in table.layers  # copy=True leaves the SpatialData alone


def test_model_method(panels):
    table = panels["table"]
    in_model = table.var["inspire_gene"].to_numpy()
    lacking = table.var_names[~table.varm["measured"]["slice1"].to_numpy() & in_model][:5]
    out = si.tl.impute(panels, genes=lacking, method="model", copy=True)
    in_merfish = (table.obs["slice"] == "slice1").to_numpy()
    pred = out.layers["inspire_imputed"][in_merfish][:, table.var_names.get_indexer(lacking)].toarray()
    # by hand for the first spot: q from factors x programs with slice0's gene effects, renormalised over slice0
    meta = table.uns["inspire"]
    model_cols = table.var_names.get_indexer(meta["genes"])
    beta = table.obsm["inspire_factors"][in_merfish][0].astype(float)
    programs = table.varm["inspire_loadings"][model_cols].T.astype(float)
    effect = meta["slice_gene_effects"][0] * table.varm["measured"]["slice0"].to_numpy()[model_cols]
    q = (beta @ programs) * effect
    q /= q.sum()
    counts = table.layers["counts"]
    in_v = (table.obs["slice"] == "slice0").to_numpy()
    share = np.mean(np.asarray(counts[in_v][:, model_cols].sum(1)).ravel() / table.obs["total_counts"][in_v])
    pos = pd.Index(model_cols).get_indexer(table.var_names.get_indexer(lacking))
    assert np.allclose(pred[0], np.log1p(1e4 * share * q[pos]), rtol=1e-4)
    outside = table.var_names[~in_model & ~table.varm["measured"]["slice1"].to_numpy()]
    if outside.size:
        with pytest.raises(ValueError, match="outside"):
            si.tl.impute(panels, genes=outside[:1], method="model")
