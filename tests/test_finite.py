"""No public function returns NaN for finite input: the whole pipeline on data with the edge cases real data has.

Genes never detected, constant genes, spots at the QC threshold, very deep spots, two spots at one position, a
targeted panel next to a whole transcriptome: every number written (``X``, layers, ``obsm``, ``varm``, ``obsp``,
float columns of ``obs`` and ``var``, arrays in ``uns``) must be finite. The one documented exception is scanpy's
``highly_variable_rank``, ``NaN`` for genes that are not highly variable.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import sd_inspire as si
from sd_inspire.tl import metrics

_SCANPY_NAN = {"highly_variable_rank"}  # scanpy's convention: NaN rank for genes that are not highly variable


def _nonfinite(obj, path: str = "") -> list[str]:
    """Paths of the values in ``obj`` (nested mappings, arrays, data frames) that are NaN or infinite."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() if str(k) not in _SCANPY_NAN for p in _nonfinite(v, f"{path}/{k}")]
    if sparse.issparse(obj):
        return [] if np.isfinite(obj.data).all() else [path]
    if isinstance(obj, pd.DataFrame):
        return [
            p for c in obj.columns if str(c) not in _SCANPY_NAN for p in _nonfinite(obj[c].to_numpy(), f"{path}/{c}")
        ]
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "f":
        return [] if np.isfinite(obj).all() else [path]
    if isinstance(obj, float):
        return [] if np.isfinite(obj) else [path]
    return []


def _table_nonfinite(t) -> list[str]:
    parts = {"X": t.X, "layers": dict(t.layers), "obsm": dict(t.obsm), "varm": dict(t.varm), "obsp": dict(t.obsp)}
    return _nonfinite(parts) + _nonfinite(t.obs, "obs") + _nonfinite(t.var, "var") + _nonfinite(dict(t.uns), "uns")


@pytest.fixture(scope="module")
def hard():
    """A Visium slice and a 40-gene MERFISH panel, with the edge cases of real data written in."""
    sdata = si.datasets.simulate(
        2, n_spots=150, n_genes=80, technology=["visium", "merfish"], panel_size=40, random_state=0
    )
    t = sdata["table"]
    x = t.X.tolil().astype(np.float32)
    x[:, 0] = 0  # a gene never detected
    x[:, 1] = 5  # a constant gene
    x[:3] = 0
    x[:3, 2:12] = 1  # spots with exactly the QC minimum of 10 counts
    x[3:6] = x[3:6] * 1000  # very deep spots
    t.X = x.tocsr()
    t.obsm["spatial"][10] = t.obsm["spatial"][11]  # two spots at one position
    si.pp.preprocess(sdata, gene_space="union", n_top_genes=60)
    si.gr.spatial_neighbors(sdata)
    si.gr.propagate(sdata)
    si.tl.integrate(sdata, n_factors=4, n_latent=8, max_steps=30, n_models=2, show_progress_bar=False)
    si.tl.domains(sdata, n_domains=4)
    si.tl.impute(sdata)
    genes = list(t.var_names[t.var["inspire_gene"].to_numpy()][:5])
    si.tl.impute(sdata, method="model", genes=genes, key_added="imputed_model")
    # a representation that registers the slices for sure (their own positions), so that align's outputs are
    # checked too
    xy = t.obsm["spatial"]
    t.obsm["X_truth"] = (xy - xy.mean(axis=0)) / xy.std()
    si.tl.align(sdata, use_rep="X_truth")
    return sdata


def test_every_written_value_is_finite(hard):
    assert _table_nonfinite(hard["table"]) == []
    assert _table_nonfinite(hard["inspire_factors"]) == []
    t = hard["table"]
    for key in ("X_inspire", "X_inspire_sd", "inspire_factors", "inspire_factors_sd", "spatial_aligned"):
        assert key in t.obsm
    assert "imputed_model" in t.layers


def test_metrics_are_finite_on_the_results(hard):
    t = hard["table"]
    truth, pred = t.obs["domain"].astype(str).to_numpy(), t.obs["inspire_domain"].astype(str).to_numpy()
    slices, latent, xy = t.obs["slice"].to_numpy(), t.obsm["X_inspire"], t.obsm["spatial_aligned"]
    factors, loadings = t.obsm["inspire_factors"], t.varm["inspire_loadings"]
    a, b = slices == "slice0", slices == "slice1"
    values = {
        "ari": metrics.ari(truth, pred),
        "ari, one reference label": metrics.ari(np.zeros(t.n_obs), pred),
        "nmi": metrics.nmi(truth, pred),
        "batch_mixing": metrics.batch_mixing(latent, slices, truth),
        "batch_mixing, all points equal": metrics.batch_mixing(np.zeros((t.n_obs, 3)), slices),
        "silhouette": metrics.silhouette(latent, truth),
        "silhouette, all points equal": metrics.silhouette(np.zeros((t.n_obs, 3)), truth),
        "factor_diversity": metrics.factor_diversity(loadings),
        "factor_recovery": metrics.factor_recovery(factors, factors[:, ::-1]),
        "factor_recovery, constant factors": metrics.factor_recovery(np.ones_like(factors), factors),
        "factor_coherence": metrics.factor_coherence(loadings, t.layers["counts"]),
        "factor_coherence, no counts": metrics.factor_coherence(loadings, sparse.csr_matrix(t.shape)),
        "neighbour_agreement": metrics.neighbour_agreement(pred[a], xy[a], pred[b], xy[b]),
        "neighbour_correlation": metrics.neighbour_correlation(factors[a], xy[a], factors[b], xy[b]),
        "target_registration_error": metrics.target_registration_error(np.eye(3), np.eye(3), np.zeros((4, 2))),
        **{f"per_group_scores {k}": v for k, v in metrics.per_group_scores(truth, pred, slices).items()},
    }
    assert [name for name, v in values.items() if not np.isfinite(v)] == []
    with pytest.raises(ValueError, match="No spot has a defined correlation"):  # returned NaN
        metrics.neighbour_correlation(np.ones((5, 3)), xy[:5], np.ones((5, 3)), xy[5:10])
