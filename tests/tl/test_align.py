from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import sd_inspire as si
from sd_inspire._utils import median_neighbour_distance
from sd_inspire.tl import align
from sd_inspire.tl.metrics import (
    neighbour_agreement,
    neighbour_correlation,
    registration_error,
    target_registration_error,
)

SLICES = ("slice0", "slice1", "slice2")


def _rigid(degrees: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a), tx], [np.sin(a), np.cos(a), ty], [0.0, 0.0, 1.0]])


def _apply(t: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ t[:2, :2].T + t[:2, 2]


@pytest.fixture(scope="module")
def tissue():
    """Three Visium-like slices of one tissue (different sizes: they overlap partly): true positions (µm,
    jittered) and a latent representation that varies smoothly with them."""
    rng = np.random.default_rng(0)
    adata = si.datasets.simulate(3, n_spots=[260, 240, 220], n_genes=40, output="anndata", random_state=0)
    true = adata.obsm["spatial"] + rng.normal(0, 15, adata.obsm["spatial"].shape)
    freq, phase = rng.normal(0, 1 / 400, (2, 8)), rng.uniform(0, 2 * np.pi, 8)
    latent = np.sin(true @ freq + phase) + rng.normal(0, 0.03, (adata.n_obs, 8))
    table = AnnData(obs=adata.obs[["slice"]].copy(), obsm={"X_inspire": latent})
    return table, true


def _moved(tissue, transforms: dict[str, np.ndarray]) -> AnnData:
    """A copy of the tissue whose slices' coordinates are the true positions moved by ``transforms``."""
    table, true = tissue
    adata = table.copy()
    labels = adata.obs["slice"].astype(str).to_numpy()
    coords = true.copy()
    for s, t in transforms.items():
        coords[labels == s] = _apply(t, true[labels == s])
    adata.obsm["spatial"] = coords
    return adata


MOVES = {"slice0": _rigid(25, 300, -200), "slice1": _rigid(-10, -150, 400), "slice2": _rigid(40, 500, 100)}


def _truth(moves: dict[str, np.ndarray], s: str, reference: str) -> np.ndarray:
    """True transform from slice ``s``'s observed frame to the reference's."""
    return moves[reference] @ np.linalg.inv(moves[s])


@pytest.fixture(scope="module")
def aligned_rigid(tissue):
    adata = _moved(tissue, MOVES)
    align(adata)
    return adata


def test_rigid_recovers_rotations_and_translations(aligned_rigid):
    adata = aligned_rigid
    labels = adata.obs["slice"].astype(str).to_numpy()
    transforms = adata.uns["spatial_aligned"]["transforms"]
    assert adata.uns["spatial_aligned"]["params"]["reference"] == "slice1"  # the middle slice by default
    np.testing.assert_array_equal(transforms["slice1"], np.eye(3))
    for s in ("slice0", "slice2"):
        xy = adata.obsm["spatial"][labels == s]
        err = registration_error(transforms[s], _truth(MOVES, s, "slice1"), center=xy.mean(axis=0))
        assert err.rotation < 0.5
        assert err.translation < 10.0  # µm, spots 100 µm apart, jittered by 15 µm
        np.testing.assert_allclose(np.linalg.det(transforms[s][:2, :2]), 1.0, atol=1e-9)  # rigid
        true_xy = _apply(_truth(MOVES, s, "slice1"), xy)
        assert np.sqrt(((adata.obsm["spatial_aligned"][labels == s, :2] - true_xy) ** 2).sum(axis=1).mean()) < 10


def test_uns_contents(aligned_rigid):
    adata = aligned_rigid
    out = adata.uns["spatial_aligned"]
    assert set(out) == {"transforms", "pair_transforms", "pairs", "z", "params"}
    assert list(out["transforms"]) == list(SLICES)
    assert all(t.shape == (3, 3) for t in out["transforms"].values())
    assert set(out["pair_transforms"]) == {"slice0", "slice2"}
    pairs = out["pairs"]
    assert isinstance(pairs, pd.DataFrame)
    assert pairs[["moving", "fixed"]].values.tolist() == [["slice0", "slice1"], ["slice2", "slice1"]]
    columns = ["n_mutual", "n_inliers_latent", "residual_latent", "relative_residual", "n_matches", "n_inliers"]
    columns += ["residual", "refine_rounds", "rotation", "scale"]
    assert set(columns) <= set(pairs.columns)
    assert (pairs["n_inliers_latent"] <= pairs["n_mutual"]).all()
    assert (pairs["n_inliers"] <= pairs["n_matches"]).all()
    assert (pairs["relative_residual"] < 0.5).all()
    assert (pairs["refine_rounds"] >= 1).all()
    np.testing.assert_allclose(pairs["scale"], 1.0)
    # rotation of slice0 onto slice1: -10° - 25°
    assert abs(pairs["rotation"].iloc[0] - (-35.0)) < 0.5
    params = out["params"]
    assert params["model"] == "rigid"
    assert list(params["order"]) == list(SLICES)
    assert params["use_rep"] == "X_inspire"
    assert params["coordinate_system"] == "aligned"
    assert params["random_state"] == 0
    assert out["z"] == {"slice0": 0.0, "slice1": params["spacing"][0], "slice2": 2 * params["spacing"][0]}


def test_refinement_improves_latent_fit(tissue):
    """The ICP-like refinement lowers the error of the fit of the latent matches alone."""
    adata = _moved(tissue, MOVES)
    labels = adata.obs["slice"].astype(str).to_numpy()

    def error(refine: int) -> float:
        align(adata, refine=refine)
        transforms = adata.uns["spatial_aligned"]["transforms"]
        return max(
            target_registration_error(transforms[s], _truth(MOVES, s, "slice1"), adata.obsm["spatial"][labels == s])
            for s in ("slice0", "slice2")
        )

    assert error(10) < error(0)


def test_affine_recovers_shear_and_stretch(tissue):
    stretch = np.array([[1.15, 0.12, 80.0], [-0.05, 0.9, -60.0], [0.0, 0.0, 1.0]]) @ _rigid(20, 100, 50)
    moves = {"slice0": _rigid(0, 0, 0), "slice1": stretch}
    adata = _moved(tissue, moves)
    adata = adata[adata.obs["slice"].isin(["slice0", "slice1"])].copy()
    adata.obs["slice"] = adata.obs["slice"].cat.remove_unused_categories()
    labels = adata.obs["slice"].astype(str).to_numpy()
    xy = adata.obsm["spatial"][labels == "slice1"]
    truth = _truth(moves, "slice1", "slice0")
    errors = {}
    for model in ("affine", "rigid"):
        align(adata, model=model, reference="slice0")
        errors[model] = target_registration_error(adata.uns["spatial_aligned"]["transforms"]["slice1"], truth, xy)
    assert errors["affine"] < 10.0
    assert errors["rigid"] > 5 * errors["affine"]


def test_similarity_recovers_scale(tissue):
    zoom = np.diag([1.3, 1.3, 1.0]) @ _rigid(-15, 40, 20)
    adata = _moved(tissue, {"slice0": np.eye(3), "slice1": np.eye(3), "slice2": zoom})
    align(adata, model="similarity", refine=3)
    pairs = adata.uns["spatial_aligned"]["pairs"].set_index("moving")
    assert abs(pairs.loc["slice2", "scale"] - 1 / 1.3) < 0.01
    assert abs(pairs.loc["slice0", "scale"] - 1.0) < 0.01
    assert abs(pairs.loc["slice2", "rotation"] - 15) < 0.5


def test_chaining_order_and_reference(tissue):
    adata = _moved(tissue, MOVES)
    align(adata, order=["slice2", "slice1", "slice0"], reference="slice2", spacing=[10.0, 30.0], refine=2)
    out = adata.uns["spatial_aligned"]
    assert out["pairs"][["moving", "fixed"]].values.tolist() == [["slice1", "slice2"], ["slice0", "slice1"]]
    np.testing.assert_array_equal(out["transforms"]["slice2"], np.eye(3))
    np.testing.assert_allclose(
        out["transforms"]["slice0"], out["transforms"]["slice1"] @ out["pair_transforms"]["slice0"]
    )
    np.testing.assert_allclose(out["transforms"]["slice1"], out["pair_transforms"]["slice1"])
    labels = adata.obs["slice"].astype(str).to_numpy()
    for s in ("slice0", "slice1"):
        err = registration_error(out["transforms"][s], _truth(MOVES, s, "slice2"))
        assert err.rotation < 0.5
    # z: the first slice of the order at 0, then the gaps in order
    z = adata.obsm["spatial_aligned"][:, 2]
    assert {s: float(np.unique(z[labels == s])[0]) for s in SLICES} == {"slice2": 0, "slice1": 10, "slice0": 40}
    assert out["z"] == {"slice2": 0.0, "slice1": 10.0, "slice0": 40.0}


def test_spacing_default_and_scalar(tissue):
    adata = _moved(tissue, MOVES)
    labels = adata.obs["slice"].astype(str).to_numpy()
    align(adata, refine=0, spacing=25.0)
    np.testing.assert_array_equal(np.unique(adata.obsm["spatial_aligned"][:, 2]), [0.0, 25.0, 50.0])
    align(adata, refine=0, reference="slice0")
    expected = median_neighbour_distance(adata.obsm["spatial"][labels == "slice0"])
    np.testing.assert_allclose(adata.uns["spatial_aligned"]["params"]["spacing"], [expected, expected])
    assert adata.obsm["spatial_aligned"][labels == "slice2", 2][0] == pytest.approx(2 * expected)


def test_deterministic(tissue):
    a, b = _moved(tissue, MOVES), _moved(tissue, MOVES)
    align(a, random_state=3, refine=2)
    align(b, random_state=3, refine=2)
    np.testing.assert_array_equal(a.obsm["spatial_aligned"], b.obsm["spatial_aligned"])
    pd.testing.assert_frame_equal(a.uns["spatial_aligned"]["pairs"], b.uns["spatial_aligned"]["pairs"])
    align(b, random_state=np.random.default_rng(3), refine=2)  # a Generator is accepted too
    np.testing.assert_allclose(a.obsm["spatial_aligned"], b.obsm["spatial_aligned"], atol=1.0)


def test_copy(tissue):
    adata = _moved(tissue, MOVES)
    out = align(adata, copy=True, refine=0)
    assert isinstance(out, AnnData)
    assert "spatial_aligned" in out.obsm
    assert "spatial_aligned" in out.uns
    assert "spatial_aligned" not in adata.obsm
    assert "spatial_aligned" not in adata.uns
    assert align(adata, refine=0, key_added="stack") is None
    assert adata.obsm["stack"].shape == (adata.n_obs, 3)
    assert "stack" in adata.uns


def _sdata_with_latent(tissue, moves):
    """A SpatialData (from `pp.concat`) of the moved tissue, with the synthetic latent in its table."""
    adata = _moved(tissue, moves)
    parts = {}
    for s in SLICES:
        rows = (adata.obs["slice"] == s).to_numpy()
        parts[s] = AnnData(
            X=sparse.csr_matrix((int(rows.sum()), 1), dtype=np.float32),
            obs=pd.DataFrame(index=[f"spot{i}" for i in range(int(rows.sum()))]),
            obsm={k: adata.obsm[k][rows] for k in ("spatial", "X_inspire")},
        )
    return si.pp.concat(parts)


def test_spatialdata_coordinate_system(tissue):
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale, get_transformation, set_transformation

    sdata = _sdata_with_latent(tissue, MOVES)
    # slice2's shapes stored in half units (e.g. image pixels) with a Scale(2) to its frame, where obsm lives
    shapes = sdata.shapes["slice2_shapes"]
    shapes.geometry = shapes.geometry.scale(0.5, 0.5, origin=(0, 0))
    set_transformation(shapes, {"slice2": Scale([2.0, 2.0], axes=("x", "y"))}, set_all=True)
    # slice0's shapes with no transformation to obsm's frame: an affine map is fitted
    shapes0 = sdata.shapes["slice0_shapes"]
    shapes0.geometry = shapes0.geometry.affine_transform([0.5, 0, 0, 0.5, -30, 10])
    # an image in slice2's frame follows its slice
    image = Image2DModel.parse(
        np.zeros((1, 8, 8)), dims=("c", "y", "x"), transformations={"slice2": Scale([500.0, 500.0], axes=("y", "x"))}
    )
    sdata.images["slice2_image"] = image

    align(sdata, refine=2)
    table = sdata["table"]
    aligned = table.obsm["spatial_aligned"]
    for s in SLICES:
        element = sdata.shapes[f"{s}_shapes"]
        assert "aligned" in get_transformation(element, get_all=True)
        centroids = sd.transform(element, to_coordinate_system="aligned").geometry.centroid
        rows = (table.obs["region"] == f"{s}_shapes").to_numpy()
        pos = element.index.get_indexer(table.obs["instance_id"].to_numpy()[rows])
        xy = np.column_stack([centroids.x.to_numpy()[pos], centroids.y.to_numpy()[pos]])
        np.testing.assert_allclose(xy, aligned[rows, :2], atol=1e-6)
    # the image: its scale to slice2's frame, then slice2's transform to the reference
    t2 = table.uns["spatial_aligned"]["transforms"]["slice2"]
    to_aligned = get_transformation(sdata.images["slice2_image"], "aligned")
    matrix = to_aligned.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    np.testing.assert_allclose(matrix, t2 @ np.diag([500.0, 500.0, 1.0]), atol=1e-9)
    assert "aligned" in sdata.coordinate_systems
    # the existing transformations are kept
    assert set(get_transformation(sdata.shapes["slice2_shapes"], get_all=True)) == {"slice2", "aligned"}


def test_spatialdata_copy_leaves_elements(tissue):
    sdata = _sdata_with_latent(tissue, MOVES)
    out = align(sdata, refine=0, copy=True)
    assert "spatial_aligned" in out.obsm
    assert "spatial_aligned" not in sdata["table"].obsm
    assert "aligned" not in sdata.coordinate_systems


def test_spatialdata_unmatched_shapes_warn(tissue):
    import geopandas as gpd
    from spatialdata.transformations import get_transformation

    sdata = _sdata_with_latent(tissue, MOVES)
    shapes = sdata.shapes["slice0_shapes"]
    shuffled = np.random.default_rng(0).permutation(len(shapes))
    shapes.geometry = gpd.GeoSeries(shapes.geometry.to_numpy()[shuffled], index=shapes.index)  # not where obsm says
    with pytest.warns(UserWarning, match="'slice0_shapes'"):
        align(sdata, refine=0)
    assert "aligned" not in get_transformation(sdata.shapes["slice0_shapes"], get_all=True)
    assert "aligned" in get_transformation(sdata.shapes["slice1_shapes"], get_all=True)


def test_spatialdata_written_into_store(tissue, tmp_path):
    import warnings

    import spatialdata as sd
    from spatialdata.transformations import get_transformation

    sdata = _sdata_with_latent(tissue, MOVES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ome-zarr's deprecated Scaler, on import
        sdata.write(tmp_path / "slices.zarr")
    backed = sd.read_zarr(tmp_path / "slices.zarr")
    align(backed, refine=0)
    again = sd.read_zarr(tmp_path / "slices.zarr")
    assert "spatial_aligned" in again["table"].obsm
    np.testing.assert_allclose(again["table"].obsm["spatial_aligned"], backed["table"].obsm["spatial_aligned"])
    for s in SLICES:
        assert "aligned" in get_transformation(again.shapes[f"{s}_shapes"], get_all=True)


# --- bad input --------------------------------------------------------------------------------------------------


def test_one_slice(tissue):
    adata = _moved(tissue, MOVES)
    one = adata[adata.obs["slice"] == "slice0"].copy()
    with pytest.raises(ValueError, match="at least two slices"):
        align(one)


def test_missing_representation(tissue):
    adata = _moved(tissue, MOVES)
    del adata.obsm["X_inspire"]
    with pytest.raises(KeyError, match=r"sd_inspire\.tl\.integrate"):
        align(adata)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": "shear"}, "'shear'"),
        ({"reference": "slice9"}, "'slice9'"),
        ({"order": ["slice0", "slice9", "slice1", "slice2"]}, r"unknown slices \['slice9'\]"),
        ({"order": ["slice0", "slice1"]}, r"leaves out slices \['slice2'\]"),
        ({"order": ["slice0", "slice1", "slice1", "slice2"]}, r"repeats slices \['slice1'\]"),
        ({"order": "slice0"}, "sequence of slice names"),
        ({"spacing": [1.0, 2.0, 3.0]}, "`spacing`"),
        ({"spacing": -1.0}, "`spacing`"),
        ({"n_neighbors": 0}, "`n_neighbors`"),
        ({"refine": -1}, "`refine`"),
    ],
)
def test_bad_arguments(tissue, kwargs, match):
    adata = _moved(tissue, MOVES)
    with pytest.raises(ValueError, match=match):
        align(adata, **kwargs)


def test_bad_representation(tissue):
    adata = _moved(tissue, MOVES)
    adata.obsm["X_inspire"][3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        align(adata)


def test_too_few_mutual_neighbours(tissue):
    adata = _moved(tissue, MOVES)
    keep = (adata.obs["slice"] != "slice2").to_numpy() | (np.arange(adata.n_obs) >= adata.n_obs - 3)
    small = adata[keep].copy()  # slice2 keeps 3 spots: at most 3 x 3 mutual pairs
    with pytest.raises(ValueError, match="'slice2' and 'slice1' share only"):
        align(small)


def test_unrelated_slices(tissue):
    adata = _moved(tissue, MOVES)
    rng = np.random.default_rng(1)
    second = (adata.obs["slice"] == "slice1").to_numpy()
    adata.obsm["X_inspire"][second] = rng.permutation(adata.obsm["X_inspire"][second])  # latent unrelated to place
    with pytest.raises(ValueError, match="'slice0' and 'slice1'.*do not agree"):
        align(adata, refine=0)


# --- scores -----------------------------------------------------------------------------------------------------


def test_registration_error():
    err = registration_error(_rigid(30, 10, 0), _rigid(-20, 10, 0))
    assert err.rotation == pytest.approx(50.0)
    assert err.translation == pytest.approx(0.0, abs=1e-12)
    assert registration_error(_rigid(179, 0, 0), _rigid(-179, 0, 0)).rotation == pytest.approx(2.0)
    # translation error measured at a centre: a rotation error moves a far centre more
    err = registration_error(_rigid(1, 0, 0), np.eye(3), center=(1000, 0))
    assert err.translation == pytest.approx(2 * 1000 * np.sin(np.deg2rad(0.5)))
    # the rotation of an affine map is its closest rotation
    shear = np.array([[2.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 1.0]])
    assert registration_error(_rigid(30, 0, 0) @ shear, _rigid(30, 0, 0)).rotation == pytest.approx(0.0, abs=1e-9)
    assert target_registration_error(_rigid(0, 3, 4), np.eye(3), [[0, 0], [5, 5]]) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="homogeneous"):
        registration_error(np.ones((3, 3)), np.eye(3))
    with pytest.raises(ValueError, match="3 x 3"):
        registration_error(np.eye(2), np.eye(3))
    with pytest.raises(ValueError, match="singular"):
        registration_error(np.diag([0.0, 1.0, 1.0]), np.eye(3))
    with pytest.raises(ValueError, match="center"):
        registration_error(np.eye(3), np.eye(3), center=(1, 2, 3))


def test_neighbour_correlation():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (150, 2))
    expr = np.column_stack([np.sin(xy[:, 0] / 15 + k) * np.cos(xy[:, 1] / 20 - k) for k in range(12)]) + 2
    assert neighbour_correlation(expr, xy, expr, xy, n_neighbors=1) == pytest.approx(1.0)
    shuffled = neighbour_correlation(expr, xy, expr, rng.permutation(xy), n_neighbors=1)
    assert shuffled < 0.5
    # best of more neighbours is at least as good
    assert neighbour_correlation(expr, xy, expr, rng.permutation(xy), n_neighbors=6) >= shuffled
    # sparse and dense features give the same score; 3D coordinates work
    dense = neighbour_correlation(expr, xy, expr[::-1], xy[::-1] + 1.0)
    assert neighbour_correlation(sparse.csr_matrix(expr), xy, sparse.csr_matrix(expr[::-1]), xy[::-1] + 1.0) == (
        pytest.approx(dense)
    )
    xyz = np.column_stack([xy, np.zeros(len(xy))])
    assert neighbour_correlation(expr, xyz, expr, xyz + [0, 0, 10]) == pytest.approx(1.0)
    # matches np.corrcoef on one spot and its neighbour
    one = neighbour_correlation(expr[:1], xy[:1], expr[5:6], xy[5:6])
    assert one == pytest.approx(np.corrcoef(expr[0], expr[5])[0, 1])
    # constant spots are left out
    flat = expr.copy()
    flat[0] = 1.0
    assert np.isfinite(neighbour_correlation(flat, xy, expr, xy))
    with pytest.raises(ValueError, match="No spot has a defined correlation"):  # it returned NaN
        neighbour_correlation(flat[:1], xy[:1], expr, xy)
    with pytest.raises(ValueError, match="columns"):
        neighbour_correlation(expr, xy, expr[:, :3], xy)
    with pytest.raises(ValueError, match="rows"):
        neighbour_correlation(expr, xy[:10], expr, xy)
    with pytest.raises(ValueError, match="n_neighbors"):
        neighbour_correlation(expr, xy, expr, xy, n_neighbors=0)


def test_neighbour_agreement():
    xy = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [30.0, 0.0]])
    assert neighbour_agreement(["a", "b", "c", np.nan], xy, ["a", "b", "c", "d"], xy, n_neighbors=1) == 1.0
    assert neighbour_agreement(["a", "b", "c", "d"], xy, ["b", "a", "d", None], xy, n_neighbors=1) == 0.0
    assert neighbour_agreement(["a", "b", "c", "d"], xy, ["b", "a", "d", None], xy, n_neighbors=2) == 0.75
    assert neighbour_agreement([1, 2, 3, 4], xy, ["1", "2", "3", "4"], xy, n_neighbors=1) == 1.0
    with pytest.raises(ValueError, match="No spot"):
        neighbour_agreement([None] * 4, xy, ["a"] * 4, xy)
    with pytest.raises(ValueError, match="rows"):
        neighbour_agreement(["a"] * 3, xy, ["a"] * 4, xy)
