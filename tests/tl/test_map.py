"""``tl.map_query``: new slices on a trained reference, its encoder and gene programs frozen."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import spatialdata
import torch

import sd_inspire as si
from sd_inspire.model import InspireModel
from sd_inspire.tl.metrics import ari

FAST = {"n_factors": 5, "n_latent": 8, "batch_size": 128, "show_progress_bar": False}


@pytest.fixture(scope="module")
def sim():
    adata = si.datasets.simulate(3, n_spots=200, n_genes=100, random_state=0, output="anndata")
    si.pp.preprocess(adata)
    si.gr.spatial_neighbors(adata)
    return adata


@pytest.fixture(scope="module")
def reference(sim, tmp_path_factory):
    ref = sim[sim.obs["slice"] != "slice2"].copy()
    folder = tmp_path_factory.mktemp("ref") / "model"
    si.tl.integrate(ref, max_steps=40, model_dir=folder, **FAST)
    return ref, folder


def _query(sim):
    return sim[sim.obs["slice"] == "slice2"].copy()


def test_map_query_writes_the_keys_of_integrate_in_the_reference_axes(sim, reference):
    ref, folder = reference
    query = _query(sim)
    si.tl.map_query(query, folder, max_steps=30, show_progress_bar=False)
    assert query.obsm["X_inspire"].shape == (200, 8)
    np.testing.assert_allclose(query.obsm["inspire_factors"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(query.varm["inspire_loadings"], ref.varm["inspire_loadings"])  # frozen programs
    assert query.uns["inspire"]["reference_id"] == ref.uns["inspire"]["reference_id"]
    assert list(query.uns["inspire"]["reference_slices"]) == ["slice0", "slice1"]
    assert list(query.uns["inspire"]["slices"]) == ["slice2"]
    # the query lands on the reference's domains: a mixture fitted on the reference labels the query
    from sklearn.mixture import GaussianMixture

    k = sim.obs["domain"].nunique()
    gmm = GaussianMixture(k, covariance_type="tied", init_params="kmeans", reg_covar=1e-3, random_state=0)
    gmm.fit(ref.obsm["X_inspire"])
    assert ari(query.obs["domain"], gmm.predict(query.obsm["X_inspire"])) > 0.5


def test_frozen_parameters_are_bit_identical(sim, reference):
    _, folder = reference
    ref_model = InspireModel.load(folder)
    query = InspireModel.load_query_data(_query(sim), ref_model)
    query.train(max_steps=10, show_progress_bar=False)
    before, after = ref_model.module.state_dict(), query.module.state_dict()
    specific = {"slice_embedding.weight", "factor_slice_bias", "slice_gene_effect"}
    for name, tensor in after.items():
        if name in specific or name.startswith("discriminator.4"):
            continue
        assert torch.equal(tensor, before[name]), name
    assert not torch.equal(after["slice_gene_effect"], before["slice_gene_effect"].mean(0, keepdim=True))


def test_reproducible(sim, reference):
    _, folder = reference
    runs = [si.tl.map_query(_query(sim), folder, max_steps=10, copy=True, show_progress_bar=False) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].obsm["inspire_factors"], runs[1].obsm["inspire_factors"])


def test_query_with_missing_and_extra_genes(sim, reference, caplog):
    ref, folder = reference
    query = _query(sim)
    genes = list(ref.uns["inspire"]["genes"])
    keep = [g for g in query.var_names if g not in genes[:20]]  # 20 of the reference's genes not measured
    query = query[:, keep].copy()
    extra = ad.AnnData(
        np.ones((query.n_obs, 3), dtype=np.float32), obs=query.obs[[]], var=pd.DataFrame(index=["new1", "new2", "new3"])
    )
    query = ad.concat([query, extra], axis=1, merge="first")
    query.layers["counts"] = query.X.copy()
    query.obs = sim.obs.loc[query.obs_names]
    query.obsm = sim[query.obs_names].obsm.copy()
    query.obsp = sim[query.obs_names].obsp.copy()
    query.uns = {k: v for k, v in sim.uns.items() if k != "inspire"}
    with caplog.at_level("INFO", logger="sd_inspire"):
        si.tl.map_query(query, folder, max_steps=10, show_progress_bar=False)
    assert f"{len(genes) - 20} of the reference's {len(genes)} genes measured" in caplog.text
    assert "3 genes of the query are not in the reference" in caplog.text
    assert np.isfinite(query.obsm["X_inspire"]).all()
    assert not query.var.loc[["new1", "new2", "new3"], "inspire_gene"].any()


def test_cross_technology_query(tmp_path):
    adata = si.datasets.simulate(
        3,
        n_spots=150,
        n_genes=100,
        technology=["visium", "visium", "merfish"],
        panel_size=50,
        random_state=2,
        output="anndata",
    )
    panel = adata[adata.obs["slice"] == "slice2"].copy()
    panel = panel[:, panel.varm["measured"]["slice2"].to_numpy()].copy()  # the query holds its 60 genes only
    ref = adata[adata.obs["slice"] != "slice2"].copy()
    si.tl.integrate(ref, max_steps=15, model_dir=tmp_path / "m", **FAST)
    si.tl.map_query(panel, tmp_path / "m", max_steps=10, show_progress_bar=False)
    assert panel.obsm["X_inspire"].shape == (150, 8)
    assert np.isfinite(panel.obsm["inspire_factors"]).all()


def test_spatialdata_query_is_written_into_its_store(sim, reference, tmp_path):
    _, folder = reference
    store = tmp_path / "q.zarr"
    si.datasets.simulate(1, n_spots=150, n_genes=100, random_state=5, path=store)
    backed = si.io.read_zarr(store)
    si.tl.map_query(backed, folder, max_steps=10, show_progress_bar=False)
    back = spatialdata.read_zarr(store)
    assert back["table"].obsm["X_inspire"].shape == (150, 8)
    assert "inspire_factors" in back.tables


def test_bad_inputs(sim, reference, tmp_path):
    _, folder = reference
    query = _query(sim)
    query.var_names = [f"other{i}" for i in range(query.n_vars)]
    with pytest.raises(ValueError, match="shares 0 of the model's"):
        si.tl.map_query(query, folder, show_progress_bar=False)
    with pytest.raises(FileNotFoundError, match="holds no model"):
        si.tl.map_query(_query(sim), tmp_path, show_progress_bar=False)
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.pt").write_bytes((folder / "model.pt").read_bytes())
    meta = json.loads((folder / "model.json").read_text())
    del meta["reference"]
    (old / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="saved by an sd-inspire version"):
        si.tl.map_query(_query(sim), old, show_progress_bar=False)
    untrained = InspireModel(sim, n_factors=4)
    with pytest.raises(RuntimeError, match="not trained"):
        si.tl.map_query(_query(sim), untrained, show_progress_bar=False)


def test_query_gene_effects_start_at_the_observed_counts(sim, reference):
    # a gene 8x more abundant in the query (another chemistry, say) starts with an effect log(8) higher: the
    # reference slices' mean would take thousands of gradient steps to get there
    _, folder = reference
    ref_model = InspireModel.load(folder)
    query = _query(sim)
    plain = InspireModel.load_query_data(query, ref_model).module.slice_gene_effect.detach().numpy()[0]
    gene = ref_model.genes[3]
    scaled = query.copy()
    counts = scaled.layers["counts"].tolil()
    column = scaled.var_names.get_loc(gene)
    counts[:, column] = counts[:, column].multiply(8)
    scaled.layers["counts"] = counts.tocsr()
    shifted = InspireModel.load_query_data(scaled, ref_model).module.slice_gene_effect.detach().numpy()[0]
    others = np.delete(shifted - plain, 3)
    assert (shifted - plain)[3] - np.median(others) == pytest.approx(np.log(8), abs=0.25)


def test_query_input_takes_the_reference_spread(sim, reference, tmp_path):
    # a query whose input is 3x noisier/larger than the reference's (another technology, say) is rescaled, column by
    # column within each slice, to the reference's spread before the frozen encoder sees it
    from sd_inspire.model._features import within_slice_sd

    _, folder = reference
    ref_model = InspireModel.load(folder)
    target = np.asarray(ref_model._reference_info()["input_sd"])
    assert target.shape == (ref_model._reference_info()["n_input"],)
    assert (target > 0).all()
    two = sim[sim.obs["slice"] != "slice0"].copy()  # two query slices, matched each on its own
    matched = InspireModel.load_query_data(two, ref_model)
    data = matched.data
    for k in range(len(data.slice_names)):
        rows = data.slices == k
        sd = within_slice_sd(data.features[rows], np.zeros(int(rows.sum()), dtype=np.int64), 1)
        np.testing.assert_allclose(sd, target, rtol=1e-4)
    plain = InspireModel.load_query_data(two, ref_model, match_input_scale=False)
    assert not np.allclose(plain.data.features, data.features)
    # a model folder without the record warns and maps the query unchanged
    old = tmp_path / "old"
    old.mkdir()
    for name in ("model.pt", "reduction.npy"):
        (old / name).write_bytes((folder / name).read_bytes())
    meta = json.loads((folder / "model.json").read_text())
    del meta["reference"]["input_sd"]
    (old / "model.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="no record of its input's spread"):
        unmatched = InspireModel.load_query_data(two, old)
    np.testing.assert_array_equal(unmatched.data.features, plain.data.features)


def test_within_slice_sd_pools_the_slices():
    from sd_inspire.model._features import match_input_scale, within_slice_sd

    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(5, 1, (400, 2)), rng.normal(-5, 3, (400, 2))])
    codes = np.repeat([0, 1], 400)
    sd = within_slice_sd(x, codes, 2)
    np.testing.assert_allclose(sd, np.sqrt((1 + 9) / 2), rtol=0.1)  # the slice means do not count
    y = x.copy()
    factors = match_input_scale(y, codes, 2, np.array([2.0, 0.5]))
    assert factors.shape == (2, 2)
    np.testing.assert_allclose(y[codes == 1].std(axis=0, ddof=1), [2.0, 0.5], rtol=1e-6)
    constant = np.ones((10, 1))
    assert match_input_scale(constant, np.zeros(10, dtype=np.int64), 1, np.array([3.0]))[0, 0] == 1.0
