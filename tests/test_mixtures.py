"""The suite's third generator (``benchmarks/_mixtures.py``): domains as mixtures of real cell types, pooled into spots."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from tests.conftest import load_benchmark

load_benchmark("_common")
load_benchmark("_resample")
mixtures = load_benchmark("_mixtures")

N_TYPES, GENES_PER_TYPE = 3, 10


@pytest.fixture(scope="module")
def reference():
    """Three cell types, each putting all its counts (about 200 per cell) on ten genes of its own."""
    rng = np.random.default_rng(0)
    types = np.repeat(np.arange(N_TYPES), 100)
    x = np.zeros((types.size, N_TYPES * GENES_PER_TYPE))
    for t in range(N_TYPES):
        x[types == t, GENES_PER_TYPE * t : GENES_PER_TYPE * (t + 1)] = rng.poisson(20.0, size=(100, GENES_PER_TYPE))
    genes = np.array([f"g{j}" for j in range(x.shape[1])])
    return sparse.csr_matrix(x), genes, types


SPOTS = mixtures.Mixing(2, 400, "layers", 3, 5.0, 0.8, 100.0, (1.0, 0.25), 0.0)
CELLS = replace(SPOTS, cells_per_spot=1.0, spot_radius=0.0, spacing=15.0, depth=(1.0,))


def _type_shares(table) -> np.ndarray:
    """Share of each spot's counts on each cell type's genes (spots x types)."""
    x = table.X.toarray()
    per_type = x.reshape(x.shape[0], N_TYPES, GENES_PER_TYPE).sum(axis=-1)
    return per_type / np.maximum(per_type.sum(axis=1, keepdims=True), 1)


def test_tables_shapes_labels_and_pooled_depth(reference):
    table = mixtures.mix(SPOTS, seed=1, reference=reference)
    assert table.obs["slice"].cat.categories.tolist() == ["slice0", "slice1"]
    assert table.n_vars == N_TYPES * GENES_PER_TYPE
    assert table.obsm["spatial"].shape == (table.n_obs, 2)
    assert set(table.obs["domain"]) <= {"M0", "M1", "M2"}
    assert all(350 <= n <= 450 for n in table.obs["slice"].value_counts())
    x = table.X.toarray()
    assert np.array_equal(x, np.round(x))
    # a spot pools 1 + Poisson(4) cells of about 200 counts each; the second slice has a quarter of the depth
    depth = pd.Series(x.sum(axis=1)).groupby(table.obs["slice"].to_numpy()).mean()
    assert depth["slice0"] == pytest.approx(5 * 200, rel=0.15)
    assert depth["slice1"] / depth["slice0"] == pytest.approx(0.25, rel=0.15)
    # pooled spots mix cell types; their layers are contiguous
    assert (_type_shares(table).max(axis=1) < 0.99).mean() > 0.5
    m = (table.obs["slice"] == "slice0").to_numpy()
    xy, dom = table.obsm["spatial"][m], table.obs["domain"].to_numpy()[m]
    nearest = np.argsort(np.linalg.norm(xy[:, None] - xy[None], axis=-1), axis=1)[:, 1]
    assert (dom == dom[nearest]).mean() > 0.85
    # the truth for factor recovery: each spot's cells by type, which the counts follow (cells of similar depth)
    props = table.obsm["true_proportions"]
    assert props.shape == (table.n_obs, N_TYPES)
    np.testing.assert_allclose(props.sum(axis=1), 1.0)
    shares = _type_shares(table)
    assert all(np.corrcoef(props[:, t], shares[:, t])[0, 1] > 0.9 for t in range(N_TYPES))


def test_single_cells_and_domain_compositions(reference):
    table = mixtures.mix(replace(CELLS, n_spots=900, n_slices=1), seed=2, reference=reference)
    shares = _type_shares(table)
    # every "spot" is one cell: all its counts on one type's genes
    assert np.allclose(shares.max(axis=1), 1.0)
    np.testing.assert_array_equal(table.obsm["true_proportions"], shares.round())  # one cell: one-hot
    # the domains hold the same types in different proportions
    dom = table.obs["domain"].to_numpy()
    props = np.array([shares[dom == d].mean(axis=0) for d in np.unique(dom)])
    assert len(props) >= 2
    assert np.abs(props[:, None] - props[None]).sum(axis=-1).max() > 0.2


def test_same_seed_same_table_and_geometries(reference):
    a, b = (mixtures.mix(SPOTS, seed=3, reference=reference) for _ in range(2))
    assert (a.X != b.X).nnz == 0
    assert np.array_equal(a.obs["domain"], b.obs["domain"])
    c = mixtures.mix(SPOTS, seed=4, reference=reference)
    assert a.n_obs != c.n_obs or (a.X != c.X).nnz > 0
    fields = mixtures.mix(replace(SPOTS, geometry="fields"), seed=3, reference=reference)
    assert set(fields.obs["domain"]) <= {"M0", "M1", "M2"}
    with pytest.raises(ValueError, match="geometry must be 'layers' or 'fields'"):
        mixtures.mix(replace(SPOTS, geometry="rings"), seed=0, reference=reference)


def test_layers_are_bands_of_the_tissue():
    rng = np.random.default_rng(0)
    side = np.linspace(0, 1, 100)
    grid = np.stack(np.meshgrid(side, side), axis=-1).reshape(-1, 2)
    layers = mixtures.layered_domains(4, rng)(grid)
    assert set(np.unique(layers)) == {0, 1, 2, 3}
    # bands: on a fine grid, almost every point shares its layer with the next point along either axis
    image = layers.reshape(100, 100)
    assert (image[:, 1:] == image[:, :-1]).mean() > 0.9
    assert (image[1:] == image[:-1]).mean() > 0.9


def test_xenium_reference_cell_types():
    common = load_benchmark("_common")
    if not (common.SHARED_DATA / "xenium" / "xenium_small").is_dir():
        pytest.skip(f"the Xenium reference is not at {common.SHARED_DATA / 'xenium' / 'xenium_small'}")
    counts, genes, types = mixtures.xenium_cells()
    assert counts.shape == (types.size, genes.size)
    assert genes.size == 248
    assert np.bincount(types).size == mixtures.N_TYPES
    assert np.bincount(types).min() > 100
    table = mixtures.mix(replace(SPOTS, n_spots=300), seed=0)
    assert table.n_vars == 248
    assert np.asarray(table.X.sum(axis=1)).min() > 0
