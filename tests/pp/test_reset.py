from __future__ import annotations

import numpy as np
import pytest
from anndata import AnnData
from scipy import sparse
from spatialdata import SpatialData

import sd_inspire as si


def _as_array(x):
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def _integrated_like(sdata):
    """``sdata`` after preprocessing, the spatial graph and (stand-ins for) the results of tl.integrate/tl.domains."""
    si.pp.preprocess(sdata, n_top_genes=50, min_counts=0, min_genes=0)  # every spot kept
    si.gr.spatial_neighbors(sdata)
    table = sdata["table"]
    table.obsm["X_inspire"] = np.zeros((table.n_obs, 2))
    table.obs["inspire_domain"] = "0"
    table.var["inspire_gene"] = table.var["highly_variable"]
    table.varm["inspire_loadings"] = np.ones((table.n_vars, 2))
    table.uns["inspire"] = {"genes": ["a"]}
    table.uns["inspire_domain"] = {"refine": 0}
    table.uns["kept"] = 1
    return table


def test_reset_counts_undoes_preprocessing_and_results(sim_sdata):
    raw = sim_sdata["table"].copy()
    table = _integrated_like(sim_sdata)
    assert table.layers
    assert table.obsp
    assert si.pp.reset_counts(sim_sdata) is None
    assert table is sim_sdata["table"]  # in place
    np.testing.assert_array_equal(_as_array(table.X), _as_array(raw.X))  # the raw counts, QC removed no spot here
    assert not table.layers
    assert not table.obsp
    # every var column / uns key preprocess and spatial_neighbors write is gone (the lists in pp cannot drift):
    # only var["mt"] stays, which each run of preprocess rewrites; pp.concat's n_slices_measured is removed too
    assert set(table.var.columns) == (set(raw.var.columns) - {"n_slices_measured"}) | {"mt"}
    assert set(table.uns) == set(raw.uns) | {"kept"}
    # obs, obsm and varm are kept: the next run overwrites what it writes
    assert "inspire_domain" in table.obs
    assert "total_counts" in table.obs
    assert {"X_inspire", "spatial"} <= set(table.obsm)
    assert {"inspire_loadings", "measured", "highly_variable_rank"} <= set(table.varm)


def test_reset_counts_then_preprocess_equals_preprocessing_raw_counts(sim_sdata):
    expected = si.pp.preprocess(sim_sdata, n_top_genes=30, gene_space="union", copy=True)
    si.pp.preprocess(sim_sdata, n_top_genes=50, min_counts=0, min_genes=0)
    si.pp.reset_counts(sim_sdata)
    si.pp.preprocess(sim_sdata, n_top_genes=30, gene_space="union")
    table = sim_sdata["table"]
    np.testing.assert_array_equal(_as_array(table.X), _as_array(expected.X))
    np.testing.assert_array_equal(_as_array(table.layers["counts"]), _as_array(expected.layers["counts"]))
    assert table.var["highly_variable"].equals(expected.var["highly_variable"])
    assert table.uns["preprocess"] == expected.uns["preprocess"]


def test_reset_counts_copy_and_anndata(sim_adata):
    si.pp.preprocess(sim_adata, n_top_genes=40)
    counts = _as_array(sim_adata.layers["counts"]).copy()
    out = si.pp.reset_counts(sim_adata, copy=True)
    assert isinstance(out, AnnData)
    np.testing.assert_array_equal(_as_array(out.X), counts)
    assert "highly_variable" not in out.var
    assert "preprocess" not in out.uns
    # the input is left as it was
    assert "counts" in sim_adata.layers
    assert "highly_variable" in sim_adata.var
    assert not np.array_equal(_as_array(sim_adata.X), counts)


def test_reset_counts_without_counts_layer_keeps_x(sim_adata):
    x = _as_array(sim_adata.X).copy()
    sim_adata.layers["other"] = sim_adata.X.copy()
    si.pp.reset_counts(sim_adata)
    np.testing.assert_array_equal(_as_array(sim_adata.X), x)
    assert not sim_adata.layers


def test_reset_counts_errors(sim_sdata):
    with pytest.raises(KeyError, match="'nope'"):
        si.pp.reset_counts(sim_sdata, table_key="nope")
    with pytest.raises(TypeError, match="ndarray"):
        si.pp.reset_counts(np.zeros((3, 3)))


def test_concat_reset_counts(sim_slices):
    raw = si.pp.concat(sim_slices)["table"]
    processed = {}
    for name, part in sim_slices.items():
        table = si.pp.preprocess(part, n_top_genes=20, slice_key=None, min_counts=0, min_genes=0, copy=True)
        si.gr.spatial_neighbors(table, slice_key=None)
        processed[name] = SpatialData(shapes=dict(part.shapes), tables={"table": table})
    combined = si.pp.concat(processed, reset_counts=True)["table"]
    np.testing.assert_array_equal(_as_array(combined.X), _as_array(raw.X))
    assert not combined.layers
    assert "preprocess" not in combined.uns
    assert "spatial_neighbors" not in combined.uns
    assert "highly_variable" not in combined.var
    assert combined.var["n_slices_measured"].equals(raw.var["n_slices_measured"])  # written anew by concat
    # the inputs are not modified
    for part in processed.values():
        assert "counts" in part["table"].layers
        assert "preprocess" in part["table"].uns
        assert part["table"].obsp
    # without reset_counts, the preprocessed values are combined as they are
    kept = si.pp.concat(processed)["table"]
    assert "counts" in kept.layers
    assert not np.array_equal(_as_array(kept.X), _as_array(raw.X))
