"""A trained model is kept: saved by ``tl.integrate(model_dir=...)``, loaded with or without its data."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sd_inspire as si
from sd_inspire.model import InspireModel

FAST = {"n_factors": 4, "n_latent": 8, "max_steps": 15, "batch_size": 64, "show_progress_bar": False}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    adata = si.datasets.simulate(2, n_spots=150, n_genes=80, random_state=0, output="anndata")
    folder = tmp_path_factory.mktemp("models") / "reference"
    si.tl.integrate(adata, model_dir=folder, **FAST)
    return adata, folder


def test_integrate_keeps_the_model(trained):
    adata, folder = trained
    assert {p.name for p in folder.iterdir()} == {"model.pt", "model.json", "reduction.npy"}
    assert adata.uns["inspire"]["model_dir"] == str(folder.resolve())
    model = InspireModel.load(folder, adata)  # with the data: the same results as the run that saved it
    np.testing.assert_array_equal(model.get_latent_representation(), adata.obsm["X_inspire"])
    np.testing.assert_array_equal(model.get_latent(), adata.obsm["X_inspire"])
    assert model.reference_id == adata.uns["inspire"]["reference_id"]


def test_load_without_data(trained):
    adata, folder = trained
    model = InspireModel.load(folder)
    genes = list(adata.uns["inspire"]["genes"])
    assert model.genes == genes
    assert model.slice_names == ["slice0", "slice1"]
    assert model.reference_id == adata.uns["inspire"]["reference_id"]
    loadings = adata.varm["inspire_loadings"][adata.var_names.get_indexer(genes)]
    np.testing.assert_allclose(model.get_loadings(), loadings, rtol=1e-6)
    np.testing.assert_allclose(model.get_slice_effects(), adata.uns["inspire"]["slice_gene_effects"], rtol=1e-6)
    assert set(model.history) == set(adata.uns["inspire"]["history"])
    assert model.convergence["loss_change"] == pytest.approx(adata.uns["inspire"]["loss_change"], nan_ok=True)
    with pytest.raises(RuntimeError, match="loaded without data"):
        model.get_latent_representation()
    with pytest.raises(RuntimeError, match="loaded without data"):
        model.train(max_steps=5)


def test_a_model_loaded_without_data_saves_the_same_model(trained, tmp_path):
    _, folder = trained
    InspireModel.load(folder).save(tmp_path / "again")
    again = InspireModel.load(tmp_path / "again")
    assert again.reference_id == InspireModel.load(folder).reference_id
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "reduction.npy"), np.load(folder / "reduction.npy"))


def test_ensemble_members_are_kept(tmp_path):
    adata = si.datasets.simulate(2, n_spots=100, n_genes=60, random_state=1, output="anndata")
    si.tl.integrate(adata, n_models=2, model_dir=tmp_path / "ens", **FAST)
    ids = {InspireModel.load(tmp_path / "ens" / f"member{k}").reference_id for k in range(2)}
    assert len(ids) == 2
    assert adata.uns["inspire"]["reference_id"] in ids


def test_model_dir_holding_a_model_is_refused_before_training(trained):
    adata, folder = trained
    fresh = adata.copy()
    del fresh.obsm["X_inspire"]
    with pytest.raises(ValueError, match="already holds a model"):
        si.tl.integrate(fresh, model_dir=folder, **FAST)
    assert "X_inspire" not in fresh.obsm


def test_old_or_damaged_model_files_give_clear_errors(trained, tmp_path):
    _, folder = trained
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.pt").write_bytes((folder / "model.pt").read_bytes())
    meta = json.loads((folder / "model.json").read_text())
    del meta["reference"]  # as saved before models recorded what they need without data
    (old / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model.json: saved by an sd-inspire version that did not record"):
        InspireModel.load(old)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("model.pt", "model.json"):
        (damaged / name).write_bytes((folder / name).read_bytes())
    (damaged / "reduction.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match=r"reduction.npy: not a readable input reduction"):
        InspireModel.load(damaged)
