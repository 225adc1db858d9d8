"""The result of ``tl.integrate`` on slices from every reader plots with squidpy, spatialdata-plot and ``si.pl``.

Two small slices per technology are written in the vendor's layout (the writers of the reader tests), read,
integrated and clustered; then the ecosystem's default calls draw them as the docs say.
"""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from tests.io.test_merfish import make_region, write_merscope
from tests.io.test_slideseq import make_puck, write_slideseq
from tests.io.test_stereoseq import write_gem
from tests.io.test_visium import write_visium

import sd_inspire as si

N_GENES = 30


def _visium(folder, seed):
    write_visium(folder / "outs", n_spots=40, n_genes=N_GENES, seed=seed)
    return si.io.visium(folder / "outs", dataset_id=folder.name)


def _slideseq(folder, seed):
    write_slideseq(folder, *make_puck(n_beads=60, n_genes=N_GENES, seed=seed))
    return si.io.slideseq(folder)


def _merfish(folder, seed):
    write_merscope(folder, *make_region(n_cells=60, n_genes=N_GENES, seed=seed))
    return si.io.merfish(folder)


def _stereoseq(folder, seed):
    rng = np.random.default_rng(seed)
    n = 3000
    genes = np.array([f"Gene{i}" for i in range(N_GENES)])
    lines = pd.DataFrame(
        {
            "geneID": genes[rng.integers(0, N_GENES, n)],
            "x": rng.integers(0, 200, n),
            "y": rng.integers(0, 200, n),
            "MIDCount": rng.integers(1, 4, n),
        }
    )
    folder.mkdir()
    return si.io.stereoseq(write_gem(folder / f"{folder.name}.gem", lines), bin_size=20)


READERS = {"visium": _visium, "slideseq": _slideseq, "merfish": _merfish, "stereoseq": _stereoseq}


@pytest.fixture(scope="module", params=list(READERS))
def result(request, tmp_path_factory):
    """Two slices of one technology, integrated and clustered."""
    root = tmp_path_factory.mktemp(request.param)
    slices = {name: READERS[request.param](root / name, seed) for seed, name in enumerate(("s1", "s2"))}
    sdata = si.pp.concat(slices)
    si.tl.integrate(sdata, n_factors=3, n_latent=4, max_steps=5, batch_size=64, show_progress_bar=False)
    si.tl.domains(sdata, n_domains=2, show_progress_bar=False)
    yield request.param, sdata
    plt.close("all")


def test_squidpy_spatial_scatter(result):
    import squidpy as sq

    technology, sdata = result
    table = sdata["table"]
    # squidpy draws spots on their tissue image where one was read (Visium with images: tests/io/test_visium.py);
    # without an image (these tiny Space Ranger folders have none; the other technologies) it draws points with
    # shape=None, as squidpy requires and the plotting docs say
    if technology == "visium":
        assert set(table.uns["spatial"]) == {"s1", "s2"}
        assert table.uns["spatial"]["s1"]["scalefactors"]["spot_diameter_fullres"] > 0
    else:
        assert "spatial" not in table.uns
    with warnings.catch_warnings():  # squidpy's own use of matplotlib's API
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        warnings.filterwarnings("ignore", message="No data for colormapping")  # categorical colours, shape=None
        axes = sq.pl.spatial_scatter(table, color="inspire_domain", library_key="slice", shape=None, return_ax=True)
    assert len(axes) == 2
    assert all(ax.collections for ax in axes)


def test_spatialdata_plot_global_panel(result):
    import spatialdata_plot  # noqa: F401  (registers .pl)

    _, sdata = result
    assert {"s1", "s2", "global"} <= set(sdata.coordinate_systems)
    fig, ax = plt.subplots()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        warnings.filterwarnings("ignore", message="The table is annotating")
        sdata.pl.render_shapes(color="factor_0", table_name="inspire_factors").pl.show(
            coordinate_systems="global", ax=ax, colorbar=False
        )
    assert len(ax.collections) == 2  # both slices, one panel
    left, right = (c.get_datalim(ax.transData) for c in ax.collections)
    assert left.x1 < right.x0  # side by side


def test_sd_inspire_plots(result):
    _, sdata = result
    figures = {
        "spatial": si.pl.spatial(sdata, color="inspire_domain", show=False),
        "domains": si.pl.domains(sdata, show=False),
        "factors": si.pl.factors(sdata, factors=[0, 1], show=False),
        "loadings": si.pl.loadings(sdata, factors=[0, 1], n_top=5, show=False),
        "history": si.pl.history(sdata, show=False),
    }
    for name, fig in figures.items():
        assert fig is not None, name
        assert fig.axes, name
    table = sdata["table"]
    first = table[table.obs["slice"] == "s1"].copy()
    first.obs["slice"] = first.obs["slice"].cat.remove_unused_categories()
    fig, (left, right) = plt.subplots(1, 2)
    assert si.pl.spatial(first, color="inspire_domain", ax=left) is fig
    assert si.pl.loadings(sdata, factors=[0], n_top=5, ax=right) is fig
    assert left.collections  # drawn into the given axes
    assert right.patches
