"""`datasets.simulate` regimes: domain geometry, partial slices (coverage) and missing domains."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

import sd_inspire as si
from sd_inspire.datasets._simulate import _blended_cumulative

GEOMETRIES = ["layers", "islands", "gradient"]
SMALL = {"n_genes": 100, "n_domains": 4, "output": "anndata"}


def _fingerprint(adata) -> str:
    x = adata.X.copy()
    x.sort_indices()  # canonical form: concatenation may leave the column indices of a row in any order
    h = hashlib.sha256()
    for arr in (
        x.indptr,
        x.indices,
        x.data,
        adata.obs["domain"].cat.codes.to_numpy(),
        adata.obs["n_cells"].to_numpy(),
        np.round(adata.obsm["spatial"], 6),
        adata.obsm["true_proportions"],
    ):
        h.update(np.ascontiguousarray(np.asarray(arr, dtype=np.float64)).tobytes())
    return h.hexdigest()


def _slice(adata, name: str):
    return adata[(adata.obs["slice"] == name).to_numpy()]


def _codes(adata) -> np.ndarray:
    return adata.obs["domain"].cat.codes.to_numpy()


def _neighbour_agreement(xy: np.ndarray, codes: np.ndarray) -> float:
    """Mean fraction of each spot's 6 nearest neighbours that share its domain."""
    _, idx = cKDTree(xy).query(xy, k=7)
    return float((codes[idx[:, 1:]] == codes[:, None]).mean())


# Computed with the code before `geometry`, `coverage` and `missing_domains` existed: the defaults must keep
# reproducing it exactly (same random draws in the same order), for every technology's layout.
PINNED_HASH = "56eb1acc719ff0caec09a9b77454ccf382701b954d26d7469b25500f698190e5"
PINNED_DOMAINS = (
    "0000000000000011110111211111222222222222000000000000111111222222222222201220210200201011121010212110211121212100000"
    "112210101000110"
)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"geometry": "layers", "coverage": 1.0, "missing_domains": None},
        {"coverage": [1, 1.0, 1, 1], "missing_domains": {}},
    ],
)
def test_defaults_reproduce_the_previous_output(kwargs):
    adata = si.datasets.simulate(
        4,
        n_spots=[40, 30, 30, 30],
        n_genes=120,
        n_cell_types=4,
        n_domains=3,
        technology=["visium", "stereoseq", "slideseq", "merfish"],
        output="anndata",
        random_state=11,
        **kwargs,
    )
    assert "".join(adata.obs["domain"].astype(str).str[1:]) == PINNED_DOMAINS
    assert int(adata.X.sum()) == 156966
    assert adata.X.nnz == 8788
    assert adata.obs["n_cells"].sum() == 475
    assert adata.X[[0, 45, 80, 129]].sum(1).A1.astype(int).tolist() == [4088, 577, 160, 103]
    np.testing.assert_allclose(
        adata.obsm["spatial"][[1, 41, 75, 129]],
        [[100.0, 0.0], [25.0, 0.0], [49.062179, 9.081073], [46.73098, 14.897576]],
        atol=1e-6,
    )
    assert _fingerprint(adata) == PINNED_HASH
    params = adata.uns["simulation"]["params"]
    assert params["geometry"] == "layers"
    assert params["coverage"] == [1.0] * 4
    assert params["missing_domains"] == {}


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_every_geometry_has_every_domain(geometry):
    adata = si.datasets.simulate(1, n_spots=400, geometry=geometry, random_state=0, **SMALL)
    assert adata.obs["domain"].cat.categories.tolist() == ["D0", "D1", "D2", "D3"]
    fractions = np.bincount(_codes(adata), minlength=4) / adata.n_obs
    assert fractions.min() > 0.08, fractions
    assert adata.uns["simulation"]["params"]["geometry"] == geometry


@pytest.mark.parametrize("geometry", ["islands", "gradient"])
def test_domains_are_spatially_coherent_and_shared_by_serial_sections(geometry):
    adata = si.datasets.simulate(2, n_spots=400, geometry=geometry, random_state=0, **SMALL)
    first, second = _slice(adata, "slice0"), _slice(adata, "slice1")
    codes = _codes(first)
    xy = first.obsm["spatial"]
    agreement = _neighbour_agreement(xy, codes)
    shuffled = _neighbour_agreement(xy, np.random.default_rng(0).permutation(codes))
    assert agreement > 0.65, agreement
    assert agreement > 2 * shuffled, (agreement, shuffled)
    # same technology and spot count: same spot positions, and the layout drifts only slightly between sections
    np.testing.assert_array_equal(xy, second.obsm["spatial"])
    assert (codes == _codes(second)).mean() > 0.9


def test_islands_lie_in_a_background():
    adata = si.datasets.simulate(1, n_spots=400, geometry="islands", random_state=0, **SMALL)
    codes, xy = _codes(adata), adata.obsm["spatial"]
    fractions = np.bincount(codes, minlength=4) / adata.n_obs
    assert fractions.argmax() == 0  # D0 is the background
    # the background reaches every edge of the slice
    lo, hi = xy.min(0), xy.max(0)
    for axis in (0, 1):
        assert (codes[xy[:, axis] == lo[axis]] == 0).any()
        assert (codes[xy[:, axis] == hi[axis]] == 0).any()
    # every other domain is several separate islands (Visium spots are 100 µm apart)
    for k in (1, 2, 3):
        pts = xy[codes == k]
        graph = cKDTree(pts).sparse_distance_matrix(cKDTree(pts), 110.0)
        _, labels = connected_components(graph, directed=False)
        assert (np.bincount(labels) >= 2).sum() >= 2, k


def test_gradient_blends_neighbouring_compositions():
    compositions = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    cum = np.cumsum(compositions, axis=1)
    # ring k spans [k, k + 1): pure at its middle, half-half at the boundaries, pure beyond the outer middles
    position = np.array([0.0, 0.5, 1.0, 1.5, 1.75, 2.5, 3.0])
    blended = np.diff(_blended_cumulative(position, cum), axis=1, prepend=0)
    expected = [
        [1, 0, 0],
        [1, 0, 0],
        [0.5, 0.5, 0],
        [0, 1, 0],
        [0, 0.75, 0.25],
        [0, 0, 1],
        [0, 0, 1],
    ]
    np.testing.assert_allclose(blended, expected, atol=1e-12)
    # end to end: away from ring middles spots mix two domains' cell types, unlike sharp layers
    kwargs = {**SMALL, "n_cell_types": 4, "random_state": 0}
    truth = si.datasets.simulate(1, n_spots=300, **kwargs).uns["simulation"]["compositions"]

    def mismatch(geometry):
        adata = si.datasets.simulate(1, n_spots=300, geometry=geometry, **kwargs)
        return np.abs(adata.obsm["true_proportions"] - truth[_codes(adata)]).sum(1).mean()

    assert mismatch("gradient") > mismatch("layers")


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_partial_slice_holds_other_domain_proportions(geometry):
    adata = si.datasets.simulate(2, n_spots=300, coverage=[1, 0.5], geometry=geometry, random_state=1, **SMALL)
    full, partial = _slice(adata, "slice0"), _slice(adata, "slice1")
    assert full.n_obs == partial.n_obs == 300
    p_full = np.bincount(_codes(full), minlength=4) / full.n_obs
    p_part = np.bincount(_codes(partial), minlength=4) / partial.n_obs
    # islands are spread over the whole tissue, so how much the lower half differs depends on where they fall
    assert 0.5 * np.abs(p_full - p_part).sum() > 0.12, (p_full, p_part)
    assert (p_part < 0.5 * p_full).any(), (p_full, p_part)  # some domain absent or much rarer
    # same spot spacing, so the partial section is a flatter rectangle
    extent_full, extent_part = np.ptp(full.obsm["spatial"], 0), np.ptp(partial.obsm["spatial"], 0)
    assert extent_part[1] / extent_part[0] < 0.6 * extent_full[1] / extent_full[0]
    assert adata.uns["simulation"]["params"]["coverage"] == [1.0, 0.5]


def test_partial_layers_keep_the_lower_layers():
    adata = si.datasets.simulate(1, n_spots=300, coverage=0.5, random_state=0, **SMALL)
    present = set(adata.obs["domain"].unique())
    assert {"D0", "D1"} <= present
    assert "D3" not in present


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("as_mapping", [False, True])
def test_missing_domains_drop_those_labels_from_that_slice_only(geometry, as_mapping):
    kwargs = {**SMALL, "n_genes": 80, "n_spots": 200, "geometry": geometry, "random_state": 2}
    missing = {1: ["D1", "D3"]} if as_mapping else [[], ["D1", "D3"], "D2"]
    adata = si.datasets.simulate(3, missing_domains=missing, **kwargs)
    reference = si.datasets.simulate(3, **kwargs)
    expected_missing = {"slice0": set(), "slice1": {"D1", "D3"}, "slice2": set() if as_mapping else {"D2"}}
    assert adata.obs["domain"].cat.categories.tolist() == ["D0", "D1", "D2", "D3"]
    for name, lacks in expected_missing.items():
        part, ref = _slice(adata, name), _slice(reference, name)
        present = set(part.obs["domain"].astype(str))
        assert present == set(ref.obs["domain"].astype(str)) - lacks
        assert part.n_obs == (~ref.obs["domain"].isin(lacks)).sum() <= 200
    # slices before the first one with a missing domain are untouched
    first, ref = _slice(adata, "slice0"), _slice(reference, "slice0")
    assert (first.X != ref.X).nnz == 0
    np.testing.assert_array_equal(first.obsm["spatial"], ref.obsm["spatial"])
    recorded = adata.uns["simulation"]["params"]["missing_domains"]
    assert {k: list(v) for k, v in recorded.items()} == {k: sorted(v) for k, v in expected_missing.items() if v}


def test_every_slice_keeps_every_domain_category():
    slices = si.datasets.simulate(
        2, n_spots=100, n_genes=80, coverage=[1, 0.3], missing_domains={1: ["D0"]}, output="slices", random_state=0
    )
    for sdata in slices.values():
        assert sdata["table"].obs["domain"].cat.categories.tolist() == ["D0", "D1", "D2", "D3", "D4"]
    assert "D0" not in set(slices["slice1"]["table"].obs["domain"].astype(str))


def test_missing_domains_must_leave_a_spot(tmp_path):
    # a slice covering the bottom tenth of a layered tissue holds only D0
    with pytest.raises(ValueError, match="missing_domains"):
        si.datasets.simulate(1, n_spots=100, coverage=0.1, missing_domains=[["D0"]], random_state=0, **SMALL)
    # written slices are cleaned up when a later one fails
    kwargs = {"n_spots": 100, "n_genes": 80, "coverage": [1, 0.1], "missing_domains": {1: ["D0"]}}
    with pytest.raises(ValueError, match="missing_domains"):
        si.datasets.simulate(2, path=tmp_path / "sim.zarr", **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"geometry": "islands", "coverage": [1, 0.5], "missing_domains": {1: ["D1"]}},
        {"geometry": "gradient"},
        {},  # nothing missing: an empty mapping in uns
    ],
)
def test_regimes_with_path_match_memory(tmp_path, kwargs):
    kwargs = {"n_spots": 80, "n_genes": 80, "random_state": 3, **kwargs}
    on_disk = si.datasets.simulate(2, path=tmp_path / "sim.zarr", **kwargs)["table"]
    in_memory = si.datasets.simulate(2, output="anndata", **kwargs)
    assert on_disk.n_obs == in_memory.n_obs
    np.testing.assert_array_equal(on_disk.obs["domain"].to_numpy(), in_memory.obs["domain"].to_numpy())
    np.testing.assert_array_equal(np.asarray(on_disk.X[:].toarray()), in_memory.X.toarray())
    params = on_disk.uns["simulation"]["params"]
    assert params["geometry"] == kwargs.get("geometry", "layers")
    assert len(params["missing_domains"]) == len(kwargs.get("missing_domains", {}))
    assert not (tmp_path / ".sim.zarr.slices").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"geometry": "rings"}, "`geometry`"),
        ({"coverage": 0}, "`coverage`"),
        ({"coverage": 1.5}, "`coverage`"),
        ({"coverage": -0.2}, "`coverage`"),
        ({"coverage": float("nan")}, "`coverage`"),
        ({"coverage": "half"}, "`coverage`"),
        ({"coverage": [1, 0.5, 0.5]}, "`coverage` has 3 entries"),
        ({"missing_domains": [["D9"], []]}, "`missing_domains`.*D9"),
        ({"missing_domains": {0: ["layer1"]}}, "`missing_domains`.*layer1"),
        ({"missing_domains": [["D1"]]}, "`missing_domains` has 1 entries"),
        ({"missing_domains": {2: ["D1"]}}, "`missing_domains` keys"),
        ({"missing_domains": "D1"}, "`missing_domains`"),
        ({"missing_domains": {0: ["D0", "D1", "D2", "D3", "D4"]}}, "`missing_domains` removes every domain"),
    ],
)
def test_bad_regime_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        si.datasets.simulate(2, n_spots=20, n_genes=80, **kwargs)
