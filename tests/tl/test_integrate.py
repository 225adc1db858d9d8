from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import spatialdata
from spatialdata.models import PointsModel

import sd_inspire as si

FAST = {"n_factors": 4, "n_latent": 8, "max_steps": 15, "batch_size": 64, "show_progress_bar": False}


def _sdata(seed=0):
    return si.datasets.simulate(2, n_spots=120, n_genes=90, n_cell_types=4, random_state=seed)


def test_integrate_spatialdata_writes_every_key():
    sdata = _sdata()
    assert si.tl.integrate(sdata, **FAST) is None  # raw counts only: preprocess and graph run by themselves
    t = sdata["table"]
    assert t.obsm["X_inspire"].shape == (240, 8)
    beta = t.obsm["inspire_factors"]
    assert beta.shape == (240, 4)
    np.testing.assert_allclose(beta.sum(axis=1), 1.0, rtol=1e-5)
    loadings = t.varm["inspire_loadings"]
    assert loadings.shape == (t.n_vars, 4)
    assert (loadings >= 0).all()
    in_model = t.var["inspire_gene"].to_numpy()
    assert in_model.sum() == len(t.uns["inspire"]["genes"])
    assert (loadings[~in_model] == 0).all()
    uns = t.uns["inspire"]
    assert uns["params"]["n_factors"] == 4
    assert uns["slice_gene_effects"].shape == (2, in_model.sum())
    assert len(uns["history"]["loss"]) == 15
    assert len(uns["history"]["factor_refit"]) == 45  # the final fit: three times the training's steps
    check = si._utils.convergence(uns["history"]["factor_refit"])  # judged on it (tests/model/test_guards.py)
    assert uns["loss_change"] == pytest.approx(check["loss_change"])
    assert uns["converged"] is check["converged"]
    assert "torch" in uns["versions"]
    import torch

    assert uns["train_params"]["torch_threads"] == torch.get_num_threads()  # float sums depend on it: recorded
    redundant = uns["redundant_factors"]
    assert list(redundant.columns) == ["factor", "similar_to", "program_similarity", "usage_correlation"]
    expected = si.tl.metrics.redundant_factors(loadings[in_model], beta)
    pd.testing.assert_frame_equal(redundant, expected)
    factors = sdata.tables["inspire_factors"]
    assert factors.var_names.tolist() == ["factor_0", "factor_1", "factor_2", "factor_3"]
    np.testing.assert_array_equal(factors.X, beta)
    assert factors.uns["spatialdata_attrs"]["region"] == t.uns["spatialdata_attrs"]["region"]
    np.testing.assert_array_equal(factors.obs["instance_id"], t.obs["instance_id"])


def test_integrate_anndata_copy_and_key_added():
    adata = _sdata()["table"]
    out = si.tl.integrate(adata, key_added="run1", copy=True, **FAST)
    assert "X_run1" in out.obsm
    assert "run1_factors" in out.obsm
    assert "X_run1" not in adata.obsm
    assert "counts" not in adata.layers


def test_same_seed_same_result():
    a = si.tl.integrate(_sdata()["table"], copy=True, random_state=4, **FAST)
    b = si.tl.integrate(_sdata()["table"], copy=True, random_state=4, **FAST)
    np.testing.assert_array_equal(a.obsm["X_inspire"], b.obsm["X_inspire"])


def test_zarr_store_keeps_other_elements(tmp_path):
    sdata = _sdata()
    points = PointsModel.parse(np.random.default_rng(0).uniform(0, 100, (50, 2)), transformations=None)
    sdata.points["transcripts"] = points
    store = tmp_path / "x.zarr"
    sdata.write(store)
    backed = spatialdata.read_zarr(store)
    si.tl.integrate(backed, **FAST)
    back = spatialdata.read_zarr(store)
    assert set(back.points) == {"transcripts"}
    assert set(back.shapes) == set(sdata.shapes)
    assert set(back.tables) == {"table", "inspire_factors"}
    np.testing.assert_array_equal(back["table"].obsm["X_inspire"], backed["table"].obsm["X_inspire"])
    assert back["transcripts"].compute().shape[0] == 50
    # running again replaces the results in place
    si.tl.integrate(backed, random_state=1, **FAST)
    again = spatialdata.read_zarr(store)
    np.testing.assert_array_equal(again["table"].obsm["X_inspire"], backed["table"].obsm["X_inspire"])
    assert not any("backup" in k for k in again.tables)


def test_single_slice_warns_and_works():
    adata = si.datasets.simulate(1, n_spots=150, n_genes=90, n_cell_types=4, output="anndata")
    with pytest.warns(UserWarning, match="single slice"):
        si.tl.integrate(adata, **FAST)
    assert not {"adversarial", "alignment"} & set(adata.uns["inspire"]["history"])


def test_bad_inputs():
    adata = _sdata()["table"]
    with pytest.raises(ValueError, match="n_factors"):
        si.tl.integrate(adata.copy(), **{**FAST, "n_factors": 1})
    negative = adata.copy()
    negative.X = negative.X * -1.0
    with pytest.raises(ValueError, match="[Nn]egative"):
        si.tl.integrate(negative, **FAST)


@pytest.mark.parametrize("option", ["encoder", "features", "structure", "alignment"])
def test_options_are_checked_before_preprocessing(monkeypatch, option):
    """A misspelt option fails at once, naming it, before the preprocessing and the graph (and never trains)."""
    _fail_if_trained(monkeypatch)
    monkeypatch.setattr(
        si.pp, "preprocess", lambda *a, **k: pytest.fail("preprocessed before the options were checked")
    )
    table = _sdata()["table"]  # raw counts, no graph: tl.integrate would preprocess and build the graph first
    with pytest.raises(ValueError, match=f"`{option}` must be one of .*, got 'harmony'"):
        si.tl.integrate(table, **{option: "harmony"}, max_steps=5, show_progress_bar=False)
    assert "X_inspire" not in table.obsm


def _fail_if_trained(monkeypatch):
    from sd_inspire.model import InspireModel

    def train(*args, **kwargs):
        raise AssertionError("training started although the results could not be written")

    monkeypatch.setattr(InspireModel, "train", train)


@pytest.mark.parametrize(
    ("key_added", "match"),
    [
        ("", "`key_added` must be a non-empty string"),
        (3, "`key_added` must be a non-empty string"),
        ("__hidden", "gives the table name '__hidden_factors', which spatialdata refuses"),
        ("a/b", "gives the table name 'a/b_factors', which spatialdata refuses"),
        ("table", None),  # allowed: 'table_factors' is a new table
    ],
)
def test_key_added_is_checked_before_training(monkeypatch, key_added, match):
    _fail_if_trained(monkeypatch)
    sdata = _sdata()
    if match is None:
        with pytest.raises(AssertionError, match="training started"):
            si.tl.integrate(sdata, key_added=key_added, max_steps=5, show_progress_bar=False)
        return
    with pytest.raises(ValueError, match=match):
        si.tl.integrate(sdata, key_added=key_added, max_steps=5, show_progress_bar=False)
    assert "X_inspire" not in sdata["table"].obsm


def test_factor_table_may_not_replace_the_integrated_table(monkeypatch):
    _fail_if_trained(monkeypatch)
    sdata = _sdata()
    sdata.tables["cells_factors"] = sdata.tables.pop("table")
    with pytest.raises(ValueError, match="over the table being integrated"):
        si.tl.integrate(sdata, table_key="cells_factors", key_added="cells", max_steps=5, show_progress_bar=False)


def test_duplicated_gene_names_are_refused_before_training(monkeypatch):
    _fail_if_trained(monkeypatch)
    adata = _sdata()["table"].copy()
    names = adata.var_names.tolist()
    names[4] = names[2]
    adata.var_names = names
    with pytest.raises(ValueError, match=r"1 duplicated gene names \(e.g. '.*'\).*var_names_make_unique"):
        si.tl.integrate(adata, max_steps=5, show_progress_bar=False)


def test_spatialdata_plot_draws_all_slices_in_one_global_panel():
    import matplotlib.pyplot as plt
    import spatialdata_plot  # noqa: F401  (registers .pl)

    sdata = _sdata()
    si.tl.integrate(sdata, **FAST)
    assert set(sdata.coordinate_systems) == {"slice0", "slice1", "global"}
    fig, ax = plt.subplots()
    with warnings.catch_warnings():  # spatialdata-plot's own use of matplotlib's older API
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        sdata.pl.render_shapes(color="factor_0", table_name="inspire_factors").pl.show(
            coordinate_systems="global", ax=ax, colorbar=False
        )
    assert len(ax.collections) == 2  # both slices, in one panel
    left, right = (c.get_datalim(ax.transData) for c in ax.collections)
    assert left.x1 < right.x0  # side by side
    plt.close(fig)


def _spot_log_likelihoods(adata) -> np.ndarray:
    """Each spot's multinomial log-likelihood of its counts under its factors and the fitted programs."""
    uns = adata.uns["inspire"]
    cols = adata.var_names.get_indexer(uns["genes"])
    programs = adata.varm["inspire_loadings"][cols].T.astype(np.float64)
    weighted = si.model.slice_programs(programs, uns["slice_gene_effects"], np.ones_like(uns["slice_gene_effects"]))
    codes = adata.obs["slice"].cat.codes.to_numpy()
    x = adata.layers["counts"][:, cols].toarray()
    beta = adata.obsm["inspire_factors"].astype(np.float64)
    shares = np.empty(x.shape)
    for s in np.unique(codes):
        shares[codes == s] = si.model.expected_shares(beta[codes == s], weighted[s])
    return (x * np.log(np.maximum(shares, 1e-300))).sum(axis=1)


def test_refined_factors_fit_each_spot_and_leave_the_rest():
    plain = si.tl.integrate(_sdata()["table"], copy=True, refine_factors=0, **FAST)
    refined = si.tl.integrate(_sdata()["table"], copy=True, **FAST)
    assert plain.uns["inspire"]["refine_factors"] == 0
    assert refined.uns["inspire"]["refine_factors"] == 5
    np.testing.assert_array_equal(plain.obsm["X_inspire"], refined.obsm["X_inspire"])
    np.testing.assert_array_equal(plain.varm["inspire_loadings"], refined.varm["inspire_loadings"])
    np.testing.assert_allclose(refined.obsm["inspire_factors"].sum(axis=1), 1.0, rtol=1e-5)
    assert np.abs(refined.obsm["inspire_factors"] - plain.obsm["inspire_factors"]).max() > 0.01
    before, after = _spot_log_likelihoods(plain), _spot_log_likelihoods(refined)
    assert (after >= before - 1e-3 * np.abs(before)).all()  # EM passes never lower a spot's likelihood
    assert after.sum() > before.sum()
    with pytest.raises(ValueError, match="refine_factors"):
        si.tl.integrate(_sdata()["table"], copy=True, refine_factors=-1, **FAST)
