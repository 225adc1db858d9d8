from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse
from spatialdata.transformations import get_transformation

import sd_inspire as si


def _adata(n=30, genes=("A", "B", "C"), seed=0, names=None):
    rng = np.random.default_rng(seed)
    x = sparse.csr_matrix(rng.poisson(2.0, (n, len(genes))).astype(np.float32))
    obs = pd.DataFrame({"label": rng.choice(["x", "y"], n)}, index=names or [f"bc{i}" for i in range(n)])
    return AnnData(x, obs=obs, var=pd.DataFrame(index=list(genes)), obsm={"spatial": rng.uniform(0, 100, (n, 2))})


def test_concat_anndata_slices():
    a, b = _adata(30, ("A", "B", "C")), _adata(20, ("B", "C", "D"), seed=1)
    sdata = si.pp.concat({"s1": a, "s2": b})
    t = sdata["table"]
    assert t.shape == (50, 4)
    assert t.obs["slice"].cat.categories.tolist() == ["s1", "s2"]
    assert t.obs_names[0] == "bc0-s1"
    assert t.obs_names.is_unique
    assert t.obs["label"].notna().all()  # other obs columns kept
    measured = t.varm["measured"]
    assert measured.loc["A"].tolist() == [True, False]
    assert measured.loc["D"].tolist() == [False, True]
    assert t.var["n_slices_measured"].to_dict() == {"A": 1, "B": 2, "C": 2, "D": 1}
    # genes a slice did not measure are zero there, measured counts are preserved
    rows = (t.obs["slice"] == "s2").to_numpy()
    assert t[rows, "A"].X.nnz == 0
    np.testing.assert_array_equal(t[rows, ["B", "C", "D"]].X.toarray(), b.X.toarray())
    # region/instance link each row to its shape
    assert set(sdata.shapes) == {"s1_shapes", "s2_shapes"}
    attrs = t.uns["spatialdata_attrs"]
    assert attrs["region_key"] == "region"
    assert attrs["instance_key"] == "instance_id"
    assert sorted(attrs["region"]) == ["s1_shapes", "s2_shapes"]
    s2 = sdata.shapes["s2_shapes"]
    inst = t.obs.loc[rows, "instance_id"].to_numpy()
    np.testing.assert_allclose(s2.loc[inst].geometry.x.to_numpy(), b.obsm["spatial"][:, 0])
    # inputs untouched
    assert "slice" not in a.obs
    assert "region" not in a.obs


def test_concat_spatialdata_slices_keeps_elements_and_frames(sim_slices):
    before = {n: get_transformation(sd[f"{n}_shapes"], get_all=True) for n, sd in sim_slices.items()}
    sdata = si.pp.concat(sim_slices)
    t = sdata["table"]
    assert t.n_obs == 750
    # one frame per slice, named after it, none shared; and "global", the slices side by side
    assert set(sdata.coordinate_systems) == {*sim_slices, "global"}
    ranges = []
    for n in sim_slices:
        shapes = sdata[f"{n}_shapes"]
        own = get_transformation(shapes, get_all=True)
        assert set(own) == {n, "global"}
        xy = np.column_stack([shapes.geometry.x, shapes.geometry.y])
        xy = np.hstack([xy, np.ones((len(xy), 1))])
        placed = xy @ own["global"].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")).T
        ranges.append((placed[:, 0].min(), placed[:, 0].max()))
        radius = shapes["radius"].max() if "radius" in shapes else 0.0
        assert placed[:, 1].min() - radius == pytest.approx(0.0, abs=1e-6)  # lowest edges level
    assert all(ranges[i][1] < ranges[i + 1][0] for i in range(len(ranges) - 1))  # left to right, apart
    assert t.obs["technology"].cat.categories.tolist() == ["merfish", "slideseq", "visium"]
    assert not t.varm["measured"]["slice2"].all()  # MERFISH panel
    for n, sd in sim_slices.items():  # inputs keep their transformations
        assert set(get_transformation(sd[f"{n}_shapes"], get_all=True)) == set(before[n])


def test_concat_renames_shared_coordinate_systems():
    parts = {f"p{i}": si.pp.concat({"x": _adata(10, seed=i)}) for i in range(2)}
    assert set(parts["p0"].coordinate_systems) == {"x", "global"}  # both parts have "x" and "global"
    sdata = si.pp.concat(parts)
    assert set(sdata.coordinate_systems) == {"p0", "p1", "global"}
    assert set(sdata.shapes) == {"p0_x_shapes", "p1_x_shapes"}
    assert set(sdata["table"].obs["region"].cat.categories) == {"p0_x_shapes", "p1_x_shapes"}
    # the input objects keep theirs
    assert set(parts["p0"].coordinate_systems) == {"x", "global"}


@pytest.mark.filterwarnings("ignore:.*names are not unique")
def test_concat_gene_key_and_duplicate_genes():
    a = _adata(10, ("g1", "g2", "g2"))
    a.var["ensembl"] = ["E1", "E2", "E3"]
    with pytest.warns(UserWarning, match="gene names repeat"):
        t = si.pp.concat({"a": a})["table"]
    assert t.var_names.tolist() == ["g1", "g2", "g2-1"]
    t = si.pp.concat({"a": a}, gene_key="ensembl")["table"]
    assert t.var_names.tolist() == ["E1", "E2", "E3"]
    with pytest.raises(KeyError, match="no column 'symbol'"):
        si.pp.concat({"a": a}, gene_key="symbol")


@pytest.mark.filterwarnings("ignore:.*names are not unique")
def test_concat_duplicated_obs_names_across_slices():
    a, b = _adata(10), _adata(10, seed=1)
    with pytest.raises(ValueError, match=r"occur more than once, e\.g\. 'bc0'.*slices \['a', 'b'\]"):
        si.pp.concat({"a": a, "b": b}, index_unique=None)
    t = si.pp.concat({"a": a, "b": _adata(5, names=[f"other{i}" for i in range(5)])}, index_unique=None)["table"]
    assert t.obs_names[0] == "bc0"


@pytest.mark.filterwarnings("ignore:.*names are not unique")
def test_concat_duplicated_obs_names_within_slice():
    a = _adata(4, names=["x", "x", "y", "z"])
    with pytest.raises(ValueError, match="slice 'a'.*'x'"):
        si.pp.concat({"a": a})


def test_concat_missing_or_bad_coordinates():
    a = _adata(10)
    del a.obsm["spatial"]
    with pytest.raises(KeyError, match=r"obsm\['spatial'\]"):
        si.pp.concat({"a": a})
    b = _adata(10)
    b.obsm["spatial"][3, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite.*'bc3'"):
        si.pp.concat({"b": b})


def test_concat_bad_input():
    with pytest.raises(ValueError, match="non-empty mapping"):
        si.pp.concat({})
    with pytest.raises(TypeError, match="Slice 'a' is a ndarray"):
        si.pp.concat({"a": np.zeros(3)})


def test_concat_roundtrip_zarr(tmp_path, sim_slices):
    import spatialdata

    sdata = si.pp.concat(sim_slices)
    sdata.write(tmp_path / "x.zarr")
    back = spatialdata.read_zarr(tmp_path / "x.zarr")
    t, u = sdata["table"], back["table"]
    assert (t.X != u.X).nnz == 0
    pd.testing.assert_frame_equal(t.varm["measured"], u.varm["measured"])
    assert u.obs["slice"].cat.categories.tolist() == ["slice0", "slice1", "slice2"]
    assert set(back.shapes) == set(sdata.shapes)
