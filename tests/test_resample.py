"""The suite's second generator (``benchmarks/_resample.py``): real spots resampled into random-field domains."""

from __future__ import annotations

from dataclasses import replace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from tests.conftest import load_benchmark

resampling = load_benchmark("_resample")


@pytest.fixture(scope="module")
def reference():
    """Three domains whose spots put all their counts on genes of their own (20 genes each), plus unlabelled spots."""
    rng = np.random.default_rng(0)
    n, labels = 300, np.repeat(["A", "B", "C"], 100)
    x = np.zeros((n, 60))
    for i, d in enumerate("ABC"):
        x[labels == d, 20 * i : 20 * (i + 1)] = rng.poisson(20.0, size=(100, 20))
    obs = pd.DataFrame({"domain": labels.astype(object)}, index=[f"r{i}" for i in range(n)])
    obs.iloc[:5, 0] = np.nan  # unannotated spots are never drawn
    return ad.AnnData(sparse.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(60)]))


DESIGN = resampling.Resampling("reference", 3, 400, "hex", 100.0, (1.0, 0.25), 0.0)


def test_tables_shapes_and_labels(reference):
    table = resampling.resample(DESIGN, reference, seed=1)
    assert table.obs["slice"].cat.categories.tolist() == ["slice0", "slice1", "slice2"]
    assert table.n_vars == 60
    assert table.obsm["spatial"].shape == (table.n_obs, 2)
    assert set(table.obs["domain"]) <= {"A", "B", "C"}
    # 400 spots per slice, give or take the hexagonal grid's rounding
    assert all(350 <= n <= 450 for n in table.obs["slice"].value_counts())
    # counts stay integers, and each spot's counts sit on its own domain's genes (no domain drawn from another)
    x = table.X.toarray()
    assert np.array_equal(x, np.round(x))
    own = {d: slice(20 * i, 20 * (i + 1)) for i, d in enumerate("ABC")}
    for d, cols in own.items():
        rows = x[(table.obs["domain"] == d).to_numpy()]
        assert rows[:, cols].sum() == rows.sum() > 0


def test_depth_factor_and_neighbour_spacing(reference):
    table = resampling.resample(DESIGN, reference, seed=2)
    depth = pd.Series(np.asarray(table.X.sum(axis=1)).ravel()).groupby(table.obs["slice"].to_numpy()).mean()
    assert depth["slice1"] / depth["slice0"] == pytest.approx(0.25, rel=0.1)  # depth factors cycle: 1, 0.25, 1
    assert depth["slice2"] / depth["slice0"] == pytest.approx(1.0, rel=0.1)
    xy = table.obsm["spatial"][(table.obs["slice"] == "slice0").to_numpy()]
    nearest = np.sort(np.linalg.norm(xy[:, None] - xy[None], axis=-1), axis=1)[:, 1]
    assert np.median(nearest) == pytest.approx(100.0, rel=0.15)


def test_same_seed_same_table_and_domains_are_patches(reference):
    a, b = (resampling.resample(DESIGN, reference, seed=3) for _ in range(2))
    assert (a.X != b.X).nnz == 0
    assert np.array_equal(a.obs["domain"], b.obs["domain"])
    c = resampling.resample(DESIGN, reference, seed=4)
    assert a.n_obs != c.n_obs or (a.X != c.X).nnz > 0
    # domains are contiguous patches: most spots share the domain of their nearest neighbour
    cells = replace(DESIGN, layout="cells", n_spots=500)
    table = resampling.resample(cells, reference, seed=5)
    m = (table.obs["slice"] == "slice0").to_numpy()
    xy, dom = table.obsm["spatial"][m], table.obs["domain"].to_numpy()[m]
    nearest = np.argsort(np.linalg.norm(xy[:, None] - xy[None], axis=-1), axis=1)[:, 1]
    assert (dom == dom[nearest]).mean() > 0.85


def test_domain_map_covers_every_domain():
    rng = np.random.default_rng(0)
    side = np.linspace(0, 1, 120)
    grid = np.stack(np.meshgrid(side, side), axis=-1).reshape(-1, 2)
    share = np.bincount(resampling.random_field_domains(6, 0.18, 0.04, rng)(grid), minlength=6) / len(grid)
    assert share.min() >= 0.04
