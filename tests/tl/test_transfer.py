"""``tl.transfer_labels``: a reference's annotation carried to a query through the latent space."""

from __future__ import annotations

import numpy as np
import pytest

import sd_inspire as si

FAST = {"n_factors": 5, "n_latent": 8, "batch_size": 128, "max_steps": 40, "show_progress_bar": False}


@pytest.fixture(scope="module")
def joint():
    adata = si.datasets.simulate(3, n_spots=200, n_genes=100, random_state=0, output="anndata")
    si.tl.integrate(adata, **FAST)
    reference = adata[adata.obs["slice"] != "slice2"].copy()
    query = adata[adata.obs["slice"] == "slice2"].copy()
    return reference, query


def test_transfer_recovers_the_domains(joint):
    reference, query = joint
    si.tl.transfer_labels(query, reference, key="domain")
    predicted = query.obs["domain_transferred"]
    assert list(predicted.cat.categories) == sorted(reference.obs["domain"].astype(str).unique())
    accuracy = float((predicted.astype(str) == query.obs["domain"].astype(str)).mean())
    assert accuracy > 0.7
    confidence = query.obs["domain_transferred_confidence"].to_numpy()
    assert ((confidence >= 1 / len(predicted.cat.categories) - 1e-6) & (confidence <= 1 + 1e-6)).all()
    # confident spots are right more often than unconfident ones
    right = (predicted.astype(str) == query.obs["domain"].astype(str)).to_numpy()
    high, low = confidence >= 0.9, confidence < 0.9
    if high.any() and low.any():
        assert right[high].mean() >= right[low].mean()
    assert sum(query.uns["domain_transferred"]["n_spots"].values()) == query.n_obs


def test_unassigned_below_the_threshold(joint):
    reference, query = joint
    out = si.tl.transfer_labels(query, reference, key="domain", key_added="t", min_confidence=0.99, copy=True)
    unassigned = out.obs["t"] == "unassigned"
    assert unassigned.any()
    assert (out.obs.loc[unassigned, "t_confidence"] < 0.99).all()
    assert "t" not in query.obs  # copy=True left the query alone


def test_missing_reference_labels_do_not_vote(joint):
    reference, query = joint
    ref = reference.copy()
    ref.obs["partial"] = ref.obs["domain"].astype(object)
    ref.obs.loc[ref.obs_names[::2], "partial"] = np.nan
    si.tl.transfer_labels(query, ref, key="partial")
    assert "nan" not in query.obs["partial_transferred"].cat.categories


def test_with_a_mapped_query(tmp_path):
    adata = si.datasets.simulate(3, n_spots=200, n_genes=100, random_state=1, output="anndata")
    reference = adata[adata.obs["slice"] != "slice2"].copy()
    query = adata[adata.obs["slice"] == "slice2"].copy()
    si.tl.integrate(reference, model_dir=tmp_path / "m", **FAST)
    si.tl.map_query(query, tmp_path / "m", max_steps=10, show_progress_bar=False)
    si.tl.transfer_labels(query, reference, key="domain")
    assert query.obs["domain_transferred"].notna().all()


def test_bad_inputs(joint):
    reference, query = joint
    with pytest.raises(KeyError, match="No column 'layer'"):
        si.tl.transfer_labels(query, reference, key="layer")
    other = query.copy()
    other.uns["inspire"] = {**other.uns["inspire"], "reference_id": "0123456789abcdef"}
    with pytest.raises(ValueError, match="mapped onto model 0123456789abcdef"):
        si.tl.transfer_labels(other, reference, key="domain")
    empty = reference.copy()
    empty.obs["none"] = np.nan
    with pytest.raises(ValueError, match="No spot of the reference has a label"):
        si.tl.transfer_labels(query, empty, key="none")
    narrow = query.copy()
    narrow.obsm["X_inspire"] = narrow.obsm["X_inspire"][:, :3]
    with pytest.raises(ValueError, match="3 columns in the query but 8"):
        si.tl.transfer_labels(narrow, reference, key="domain")
    with pytest.raises(ValueError, match="min_confidence"):
        si.tl.transfer_labels(query, reference, key="domain", min_confidence=1.5)
    with pytest.raises(KeyError, match="X_missing"):
        si.tl.transfer_labels(query, reference, key="domain", use_rep="X_missing")
