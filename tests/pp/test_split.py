from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from spatialdata import SpatialData
from spatialdata.models import TableModel

import sd_inspire as si


def _as_array(x):
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def test_split_gives_each_slice_its_rows_and_elements(sim_slices):
    sdata = si.pp.concat(sim_slices)
    table = sdata["table"]
    n_elements = len(list(sdata.gen_spatial_elements()))
    parts = si.pp.split(sdata)
    assert list(parts) == list(sim_slices)  # in the order of the table
    for name, part in parts.items():
        assert isinstance(part, SpatialData)
        assert list(part.tables) == ["table"]
        t = part["table"]
        rows = (table.obs["slice"] == name).to_numpy()
        assert t.obs_names.tolist() == table.obs_names[rows].tolist()
        genes = table.varm["measured"][name].to_numpy()  # the genes the slice measured
        np.testing.assert_array_equal(_as_array(t.X), _as_array(table[rows][:, genes].X))
        # the table annotates only its own shapes, which come along (shared, not copied), and no other slice's
        attrs = t.uns[TableModel.ATTRS_KEY]
        assert attrs["region"] == [f"{name}_shapes"]
        assert t.obs["region"].cat.categories.tolist() == [f"{name}_shapes"]
        assert list(part.shapes) == [f"{name}_shapes"]
        assert part.shapes[f"{name}_shapes"] is sdata.shapes[f"{name}_shapes"]
    # the input is left as it was
    assert sdata["table"] is table
    assert table.n_obs == sum(p["table"].n_obs for p in parts.values())
    assert len(list(sdata.gen_spatial_elements())) == n_elements


def test_split_then_concat_is_the_combined_table(sim_slices):
    sdata = si.pp.concat(sim_slices)
    again = si.pp.concat(si.pp.split(sdata), index_unique=None)["table"]
    table = sdata["table"]
    assert again.obs_names.tolist() == table.obs_names.tolist()
    assert again.var_names.tolist() == table.var_names.tolist()
    np.testing.assert_array_equal(_as_array(again.X), _as_array(table.X))
    np.testing.assert_array_equal(again.obsm["spatial"], table.obsm["spatial"])
    pd.testing.assert_series_equal(again.obs["slice"], table.obs["slice"])
    # each part keeps the genes its slice measured: a panel stays a panel when combined again
    parts = si.pp.split(sdata)
    for name, part in parts.items():
        measured = table.varm["measured"][name]
        assert part["table"].var_names.tolist() == measured.index[measured.to_numpy()].tolist()
    assert not table.varm["measured"]["slice2"].all()  # MERFISH: a panel
    assert parts["slice2"]["table"].n_vars < table.n_vars
    pd.testing.assert_frame_equal(again.varm["measured"], table.varm["measured"])
    pd.testing.assert_series_equal(again.obs["slice"], table.obs["slice"])


def test_split_a_single_slice(sim_slices):
    part = sim_slices["slice1"]
    table = part["table"]
    assert "slice" not in table.obs
    with pytest.raises(KeyError, match="'slice'.*`name=`"):
        si.pp.split(part)
    parts = si.pp.split(part, name="mine")
    assert list(parts) == ["mine"]
    assert parts["mine"]["table"].n_obs == table.n_obs
    assert parts["mine"]["table"] is not table  # a copy
    assert set(parts["mine"].shapes) == set(part.shapes)  # one slice keeps every element
    # another slice column
    table = table.copy()
    table.obs["section"] = np.where(np.arange(table.n_obs) < 10, "a", "b")
    parts = si.pp.split(SpatialData(shapes=dict(part.shapes), tables={"table": table}), slice_key="section")
    assert {k: v["table"].n_obs for k, v in parts.items()} == {"a": 10, "b": table.n_obs - 10}


def test_split_errors(sim_slices):
    sdata = si.pp.concat(sim_slices)
    with pytest.raises(TypeError, match="SpatialData"):
        si.pp.split(sdata["table"])
    with pytest.raises(KeyError, match="'nope'"):
        si.pp.split(sdata, table_key="nope")
    with pytest.raises(KeyError, match="'section'"):
        si.pp.split(sdata, slice_key="section")
    table = sdata["table"].copy()
    del table.uns[TableModel.ATTRS_KEY]  # a table that annotates no element
    bare = SpatialData(shapes=dict(sdata.shapes), tables={"table": table})
    with pytest.raises(ValueError, match="Table 'table' does not annotate any spatial element"):
        si.pp.split(bare)
    with pytest.raises(ValueError, match="The table of slice 'store' does not annotate any spatial element"):
        si.pp.split(bare, name="store")
