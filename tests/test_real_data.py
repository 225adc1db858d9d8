"""The foundation flow on the four real DLPFC Visium slices in ../shared/data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.conftest import DLPFC_SLICES


def test_concat_dlpfc(dlpfc_raw):
    t = dlpfc_raw["table"]
    sizes = t.obs["slice"].value_counts().to_dict()
    assert sizes == {"151673": 3639, "151674": 3673, "151675": 3592, "151676": 3460}
    assert t.n_vars == 11088  # by symbol: two Ensembl ids with the symbol NKX3-1 / ERV3-1 merge
    assert set(dlpfc_raw.shapes) == set(DLPFC_SLICES)


def test_concat_dlpfc_on_ensembl_ids(dlpfc_raw, dlpfc_dir):
    import sd_inspire as si

    slices = {s: si.io.visium(dlpfc_dir / s / "outs", images=False) for s in DLPFC_SLICES}
    t = si.pp.concat(slices, gene_key="gene_ids")["table"]
    assert t.n_vars == 11089  # union of the per-slice top-5000 genes (SOURCE.txt)
    assert int(t.varm["measured"].all(axis=1).sum()) == 1125  # genes shared by all four (SOURCE.txt)


def test_preprocess_dlpfc(dlpfc_processed):
    t = dlpfc_processed
    assert t.var["highly_variable"].sum() == 1000
    assert t.varm["measured"].loc[t.var["highly_variable"]].all(axis=None)  # shared gene space
    for gene in ("MOBP", "PCP4"):  # white matter and layer 5 markers
        assert gene in t.var_names


def test_graph_dlpfc(dlpfc_processed):
    t = dlpfc_processed
    conn = t.obsp["spatial_connectivities"]
    degree = np.asarray(conn.sum(axis=1)).ravel()
    assert degree.max() == 6  # hexagonal lattice: at most 6 neighbours per in-tissue spot
    assert np.median(degree) == 6
    coo = conn.tocoo()
    codes = t.obs["slice"].cat.codes.to_numpy()
    assert np.all(codes[coo.row] == codes[coo.col])  # no edge across slices
    # neighbours are adjacent spots on the array: |d row| + |d col| == 2 on Visium's staggered grid
    dr = np.abs(t.obs["array_row"].to_numpy()[coo.row] - t.obs["array_row"].to_numpy()[coo.col])
    dc = np.abs(t.obs["array_col"].to_numpy()[coo.row] - t.obs["array_col"].to_numpy()[coo.col])
    assert np.all(dr + dc == 2)


def test_nhood_enrichment_on_manual_layers(dlpfc_processed, dlpfc_dir):
    import squidpy as sq

    t = dlpfc_processed.copy()
    layers = pd.read_csv(dlpfc_dir / "barcode_level_layer_map.tsv", sep="\t", header=None, names=["bc", "s", "layer"])
    layers.index = layers["bc"] + "-" + layers["s"].astype(str)
    t.obs["layer"] = pd.Categorical(layers["layer"].reindex(t.obs_names))
    assert t.obs["layer"].notna().mean() > 0.98
    t = t[t.obs["layer"].notna()].copy()
    sq.gr.nhood_enrichment(t, cluster_key="layer", n_perms=20, seed=0, show_progress_bar=False)
    z = pd.DataFrame(t.uns["layer_nhood_enrichment"]["zscore"], index=t.obs["layer"].cat.categories)
    assert np.all(np.diag(z.to_numpy()) > 5)  # cortical layers are spatially contiguous


def test_propagate_dlpfc_smooths_markers(dlpfc_processed):
    import sd_inspire as si

    t = si.gr.propagate(dlpfc_processed, copy=True)
    x = t.obsm["X_propagated"]
    assert x.shape == (t.n_obs, 1000)
    genes = list(t.uns["propagated"]["var_names"])
    j = genes.index("MOBP")
    raw = t[:, "MOBP"].X.toarray().ravel()
    assert x[:, j].var() < raw.var()  # smoothing shrinks variance
    assert np.corrcoef(x[:, j], raw)[0, 1] > 0.5


def test_write_and_read_back(dlpfc_raw, tmp_path):
    import spatialdata

    import sd_inspire as si

    sdata = spatialdata.SpatialData(shapes=dict(dlpfc_raw.shapes), tables={"table": dlpfc_raw["table"].copy()})
    si.pp.preprocess(sdata, n_top_genes=500)
    si.gr.spatial_neighbors(sdata)
    sdata.write(tmp_path / "dlpfc.zarr")
    back = spatialdata.read_zarr(tmp_path / "dlpfc.zarr")
    t, u = sdata["table"], back["table"]
    assert (t.obsp["spatial_connectivities"] != u.obsp["spatial_connectivities"]).nnz == 0
    assert (t.layers["counts"] != u.layers["counts"]).nnz == 0
    assert u.var["highly_variable"].sum() == 500
    assert u.uns["spatial_neighbors"]["params"]["per_slice"]["151673"]["method"] == "grid"


@pytest.mark.parametrize("name", ["SOURCE.txt"])
def test_shared_data_is_read_only_in_place(dlpfc_dir, name):
    assert (dlpfc_dir / name).exists()
