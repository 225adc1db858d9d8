"""Tests of the figures of ``sd_inspire.pl``: factors, loadings, history, domains, alignment.

Inputs are built by hand (three slices on small grids, synthetic factors, loadings, history and aligned
coordinates); nothing is trained. The image tests compare low-resolution renderings with the PNGs in
``tests/pl/baseline/``. After an intended change of a figure, regenerate them with

    SD_INSPIRE_UPDATE_BASELINES=1 .venv/bin/pytest tests/pl/test_figures.py -k image

(the image tests then write their baseline and skip), look at the new PNGs, and commit them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.testing import set_font_settings_for_testing
from matplotlib.testing.compare import compare_images

import sd_inspire as si

BASELINE = Path(__file__).parent / "baseline"
UPDATE = os.environ.get("SD_INSPIRE_UPDATE_BASELINES", "") not in ("", "0")
DPI = 40
TOLERANCE = 1.0  # RMS of the pixel differences (0-255); a changed gene name in a factor label gives 1.4

SLICES = ["s0", "s1", "s2"]
NX, NY = 6, 5  # grid of each slice
GENES = [f"g{i}" for i in range(12)]
N_STEPS = 200


def make_adata() -> AnnData:
    """Three 6 x 5 grids with synthetic factors, loadings, history, domains and aligned coordinates."""
    n = NX * NY
    gx, gy = (a.ravel().astype(float) for a in np.meshgrid(np.arange(NX), np.arange(NY), indexing="ij"))
    obs = pd.DataFrame(
        {"slice": pd.Categorical(np.repeat(SLICES, n), categories=SLICES)},
        index=[f"{s}_{i}" for s in SLICES for i in range(n)],
    )
    x, y = np.tile(gx, 3), np.tile(gy, 3)
    k = np.repeat(np.arange(3), n)
    expr = np.outer(x + 1, np.arange(1, 13)) / 10 + k[:, None]
    adata = AnnData(expr.astype(np.float32), obs=obs, var=pd.DataFrame(index=GENES))
    adata.obsm["spatial"] = np.column_stack([10 * x, 10 * y])
    raw = np.column_stack([x / (NX - 1) + 0.1, y / (NY - 1) + 0.1, 0.2 * (k + 1)])
    adata.obsm["inspire_factors"] = raw / raw.sum(1, keepdims=True)
    adata.obsm["inspire_factors_sd"] = 0.01 + 0.02 * np.abs(x - 2.5)[:, None] * (k + 1)[:, None] * np.ones((1, 3))
    rng = np.random.default_rng(0)
    loadings = rng.random((len(GENES), 3))
    loadings[-1] = 5.0  # outside the model: must never be shown
    adata.varm["inspire_loadings"] = loadings
    adata.var["inspire_gene"] = [True] * (len(GENES) - 1) + [False]
    t = np.arange(N_STEPS, dtype=float)
    adata.uns["inspire"] = {
        "history": {
            "poisson": 3 * np.exp(-t / 40) + 1 + 0.1 * rng.standard_normal(N_STEPS),
            "prior": 0.5 * np.exp(-t / 80) + 0.05 * rng.random(N_STEPS),
            "adversarial": -0.7 + 0.1 * np.sin(t / 10),
            "loss": 3 * np.exp(-t / 40) + 0.8,
            "_seconds": np.array([12.5]),
        }
    }
    band = np.digitize(x, [2, 4])  # 0, 1, 2 along x
    adata.obs["inspire_domain"] = pd.Categorical(band.astype(str))
    layer = np.array(["L3", "L1", "L2"])[band]
    layer[(x == 1) & (y == 0)] = "L1"  # a few disagreements
    adata.obs["layer"] = pd.Categorical(layer, categories=["L1", "L2", "L3"])
    angle = np.deg2rad(15 * k)
    cx, cy = 10 * x - 25, 10 * y - 20
    adata.obsm["spatial_aligned"] = np.column_stack(
        [np.cos(angle) * cx - np.sin(angle) * cy, np.sin(angle) * cx + np.cos(angle) * cy, 10.0 * k]
    )
    return adata


def to_sdata(adata: AnnData):
    """The table with one circle shapes element per slice, each in its own coordinate system."""
    import geopandas as gpd
    from shapely.geometry import Point
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    table = adata.copy()
    table.obs["region"] = pd.Categorical([f"{s}_shapes" for s in table.obs["slice"]])
    table.obs["instance_id"] = np.tile(np.arange(NX * NY), len(SLICES))
    shapes = {}
    for s in SLICES:
        xy = table.obsm["spatial"][(table.obs["slice"] == s).to_numpy()]
        gdf = gpd.GeoDataFrame({"radius": np.full(len(xy), 4.0)}, geometry=[Point(p) for p in xy])
        shapes[f"{s}_shapes"] = ShapesModel.parse(gdf, transformations={s: Identity()})
    table = TableModel.parse(
        table, region=[f"{s}_shapes" for s in SLICES], region_key="region", instance_key="instance_id"
    )
    return SpatialData(shapes=shapes, tables={"table": table})


@pytest.fixture
def adata() -> AnnData:
    return make_adata()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def rows_of(adata: AnnData, s: str) -> np.ndarray:
    return (adata.obs["slice"] == s).to_numpy()


def top_scores(adata: AnnData, k: int, rank: str = "specificity") -> pd.Series:
    """Scores of the model genes in program k, computed independently, best first."""
    b = adata.varm["inspire_loadings"]
    score = b[:, k] if rank == "loading" else b[:, k] * np.log(b[:, k] / b.mean(axis=1))
    score = pd.Series(score, index=adata.var_names)[adata.var["inspire_gene"]]
    return score.sort_values(ascending=False, kind="stable")


def true_top(adata: AnnData, k: int, n: int, rank: str = "specificity") -> list[str]:
    return list(top_scores(adata, k, rank).index[:n])


# --- factors


def test_factors_grid_titles_and_row_scales(adata):
    fig = si.pl.factors(adata, factors=[2, 0], n_genes=2, vmax=None)
    maps = fig.axes[:6]
    assert len(fig.axes) == 6 + 2  # 2 factors x 3 slices, one colorbar per factor row
    assert [ax.get_title() for ax in maps[:3]] == SLICES
    assert [ax.get_title() for ax in maps[3:]] == ["", "", ""]
    assert maps[0].get_ylabel() == "factor_2\n" + ", ".join(true_top(adata, 2, 2))
    assert maps[3].get_ylabel() == "factor_0\n" + ", ".join(true_top(adata, 0, 2))
    for row, k in ((maps[:3], 2), (maps[3:], 0)):
        values = adata.obsm["inspire_factors"][:, k]
        norms = {(c.norm.vmin, c.norm.vmax) for ax in row for c in ax.collections}
        assert len(norms) == 1
        assert norms.pop() == (0.0, pytest.approx(values.max()))
        for ax, s in zip(row, SLICES, strict=True):
            (coll,) = ax.collections
            np.testing.assert_allclose(coll.get_offsets(), adata.obsm["spatial"][rows_of(adata, s)])
            np.testing.assert_allclose(coll.get_array(), values[rows_of(adata, s)])
    assert maps[0].collections[0].norm.vmax != maps[3].collections[0].norm.vmax
    for cbar_ax, k in zip(fig.axes[6:], [2, 0], strict=True):
        assert cbar_ax.get_ylim()[1] == pytest.approx(adata.obsm["inspire_factors"][:, k].max())


def test_factors_one_scale_for_the_figure(adata):
    fig = si.pl.factors(adata, share="all", vmax="p90")
    assert len(fig.axes) == 9 + 1
    norms = {(c.norm.vmin, c.norm.vmax) for ax in fig.axes[:9] for c in ax.collections}
    assert len(norms) == 1
    assert norms.pop() == (0.0, pytest.approx(np.percentile(adata.obsm["inspire_factors"], 90)))
    assert [ax.get_ylabel() for ax in fig.axes[:9:3]] == ["factor_0", "factor_1", "factor_2"]


def test_factors_uncertainty_maps_and_spatialdata(adata, tmp_path):
    sdata = to_sdata(adata)
    fig = si.pl.factors(sdata, 1, obsm_key="inspire_factors_sd", save=tmp_path / "sd.png")
    assert (tmp_path / "sd.png").stat().st_size > 1000
    assert len(fig.axes) == 3 + 1
    sd = adata.obsm["inspire_factors_sd"][:, 1]
    for ax, s in zip(fig.axes[:3], SLICES, strict=True):
        np.testing.assert_allclose(ax.collections[0].get_array(), sd[rows_of(adata, s)])
    assert fig.axes[3].get_ylabel() == "standard deviation"  # the colour bar says what it shows


@pytest.mark.filterwarnings("ignore:The set_bad function:PendingDeprecationWarning")  # spatialdata-plot 0.4
def test_factors_real_shapes(adata):
    pytest.importorskip("spatialdata_plot")
    sdata = to_sdata(adata)
    fig = si.pl.factors(sdata, [0, 1], shapes=True, vmax=None)
    assert len(fig.axes) == 6 + 2
    for ax, k in ((fig.axes[0], 0), (fig.axes[4], 1)):
        (coll,) = ax.collections
        assert len(coll.get_paths()) == NX * NY  # one circle per spot
        assert coll.norm.vmax == pytest.approx(adata.obsm["inspire_factors"][:, k].max())
    assert [ax.get_title() for ax in fig.axes[:3]] == SLICES
    with pytest.raises(ValueError, match="pass the SpatialData"):
        si.pl.factors(adata, shapes=True)


def test_factors_errors(adata):
    with pytest.raises(ValueError, match=r"Factors \[3, 7\] out of range: .*has 3 factors"):
        si.pl.factors(adata, factors=[0, 3, 7])
    with pytest.raises(ValueError, match=r"Factors \[-1\] out of range"):
        si.pl.factors(adata, factors=-1)
    with pytest.raises(TypeError, match="integer index"):
        si.pl.factors(adata, factors=["factor_0"])
    with pytest.raises(ValueError, match="`share`"):
        si.pl.factors(adata, share="column")
    with pytest.raises(KeyError, match=r"obsm\['other_factors'\].*run `sd_inspire.tl.integrate` first"):
        si.pl.factors(adata, key="other")
    del adata.obsm["inspire_factors_sd"]
    with pytest.raises(
        KeyError, match=r"obsm\['inspire_factors_sd'\].*run `sd_inspire.tl.integrate\(\.\.\., uncertainty=True\)`"
    ):
        si.pl.factors(adata, obsm_key="inspire_factors_sd")
    del adata.varm["inspire_loadings"]
    with pytest.raises(KeyError, match=r"varm\['inspire_loadings'\]"):
        si.pl.factors(adata, n_genes=3)


# --- loadings


@pytest.mark.parametrize("rank", ["specificity", "loading"])
def test_loadings_bars_are_the_top_genes(adata, rank):
    fig = si.pl.loadings(adata, n_top=4, rank=rank)
    assert [ax.get_title() for ax in fig.axes] == ["factor_0", "factor_1", "factor_2"]
    for k, ax in enumerate(fig.axes):
        names = [t.get_text() for t in ax.get_yticklabels()]
        assert names == true_top(adata, k, 4, rank)
        assert "g11" not in names  # outside the model despite its large loading
        widths = [p.get_width() for p in ax.patches]
        np.testing.assert_allclose(widths, top_scores(adata, k, rank)[names], rtol=1e-6)
        assert ax.yaxis_inverted()  # largest at the top
        assert ax.get_xlabel().split()[0] == rank


def test_specificity_prefers_program_genes_over_shared_ones():
    # "shared" weighs 0.4 in every program; "marker" 0.2 in program 0 and 0.01 elsewhere
    adata = AnnData(np.zeros((2, 3), dtype=np.float32), var=pd.DataFrame(index=["shared", "marker", "rest"]))
    adata.varm["inspire_loadings"] = np.array([[0.4, 0.4, 0.4], [0.2, 0.01, 0.01], [0.4, 0.59, 0.59]])
    by_loading = si.pl.loadings(adata, [0], n_top=2, rank="loading").axes[0].get_yticklabels()
    by_specificity = si.pl.loadings(adata, [0], n_top=2).axes[0].get_yticklabels()
    assert [t.get_text() for t in by_loading] == ["shared", "rest"]
    assert [t.get_text() for t in by_specificity] == ["marker", "shared"]
    fig = si.pl.factors(_one_slice(adata), [0], n_genes=1)
    assert fig.axes[0].get_ylabel() == "factor_0\nmarker"
    with pytest.raises(ValueError, match="rank"):
        si.pl.loadings(adata, rank="weight")
    with pytest.raises(ValueError, match="rank"):
        si.pl.factors(_one_slice(adata), rank="weight")


def _one_slice(adata: AnnData) -> AnnData:
    adata = adata.copy()
    adata.obs["slice"] = pd.Categorical(["a", "a"])
    adata.obsm["spatial"] = np.array([[0.0, 0.0], [1.0, 0.0]])
    adata.obsm["inspire_factors"] = np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    return adata


def test_loadings_selection_symbols_and_errors(adata):
    adata.var["symbol"] = [g.upper() for g in GENES]
    fig = si.pl.loadings(adata, [1], n_top=50, gene_symbols="symbol")
    assert len(fig.axes) == 1
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [g.upper() for g in true_top(adata, 1, 11)]
    with pytest.raises(ValueError, match=r"Factors \[3\] out of range"):
        si.pl.loadings(adata, [3])
    with pytest.raises(ValueError, match="n_top"):
        si.pl.loadings(adata, n_top=0)
    with pytest.raises(KeyError, match="'name'"):
        si.pl.loadings(adata, gene_symbols="name")
    with pytest.raises(KeyError, match=r"varm\['x_loadings'\].*tl.integrate"):
        si.pl.loadings(adata, key="x")


# --- history


def test_history_raw_and_smoothed_curves(adata):
    window = 15
    fig = si.pl.history(adata, smooth=window)
    hist = adata.uns["inspire"]["history"]
    titles = [ax.get_title() for ax in fig.axes]
    assert [t.split("\n")[0] for t in titles] == ["loss", "poisson", "adversarial", "prior"]  # fixed, no "_seconds"
    assert titles[0] == "loss\nstill falling (-2.0% in last tenth)"  # the check of tl.integrate, in words
    for ax in fig.axes:
        y = hist[ax.get_title().split("\n")[0]]
        raw, smoothed = ax.lines
        np.testing.assert_allclose(raw.get_xdata(), np.arange(1, N_STEPS + 1))
        np.testing.assert_allclose(raw.get_ydata(), y)
        s = smoothed.get_ydata()
        h = window // 2
        np.testing.assert_allclose(s[h : N_STEPS - h], np.convolve(y, np.ones(window) / window, mode="valid"))
        assert s[0] == pytest.approx(y[: h + 1].mean())
        assert s[-1] == pytest.approx(y[-h - 1 :].mean())
        assert raw.get_color() == smoothed.get_color()
        assert ax.get_yscale() == "linear"


def test_history_says_whether_training_converged(adata):
    steps = np.arange(100.0)
    adata.uns["inspire"]["history"]["loss"] = 10 - 0.05 * steps  # still falling: -0.5 / 5.775 over the last tenth
    assert si.pl.history(adata, terms="loss").axes[0].get_title() == "loss\nstill falling (-8.7% in last tenth)"
    adata.uns["inspire"]["history"]["loss"] = steps[:10]
    assert si.pl.history(adata, terms="loss").axes[0].get_title() == "loss\ntoo few steps to judge"


def test_history_terms_log_and_errors(adata):
    fig = si.pl.history(adata, terms=["adversarial", "poisson"], smooth=0, log=True)
    assert [ax.get_title() for ax in fig.axes] == ["adversarial", "poisson"]
    assert [len(ax.lines) for ax in fig.axes] == [1, 1]
    assert [ax.get_yscale() for ax in fig.axes] == ["linear", "log"]  # negative values: no log axis
    assert len(si.pl.history(adata, terms="prior").axes) == 1
    with pytest.raises(KeyError, match=r"Terms \['kl'\] are not in"):
        si.pl.history(adata, terms=["poisson", "kl"])
    del adata.uns["inspire"]["history"]
    with pytest.raises(KeyError, match="no training history"):
        si.pl.history(adata)
    with pytest.raises(KeyError, match=r"uns\['other'\].*run `sd_inspire.tl.integrate` first"):
        si.pl.history(adata, key="other")


# --- domains


def legend_colors(where) -> dict[str, tuple[float, ...]]:
    """Label -> colour of the legend of an axis (or a figure's first legend)."""
    legend = where.legends[0] if hasattr(where, "legends") else where.get_legend()
    return {
        t.get_text(): mpl.colors.to_rgba(h.get_color())
        for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)
    }


def test_domains_colours_shared_across_slices(adata):
    fig = si.pl.domains(adata)
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == SLICES
    assert fig.axes[0].get_ylabel() == "inspire_domain"
    palette = legend_colors(fig.axes[-1])
    assert list(palette) == ["0", "1", "2"]
    for ax, s in zip(fig.axes, SLICES, strict=True):
        labels = adata.obs.loc[rows_of(adata, s), "inspire_domain"].astype(str)
        np.testing.assert_allclose(ax.collections[0].get_facecolors(), [palette[v] for v in labels])


def test_domains_with_reference_matched_colours(adata):
    fig = si.pl.domains(adata, reference="layer")
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:3]] == SLICES
    assert [fig.axes[0].get_ylabel(), fig.axes[3].get_ylabel()] == ["inspire_domain", "layer"]
    domains, layers = legend_colors(fig.axes[2]), legend_colors(fig.axes[5])
    assert list(layers) == ["L1", "L2", "L3"]
    assert [domains[d] for d in ["0", "1", "2"]] == [layers[lab] for lab in ["L3", "L1", "L2"]]
    for ax, s in zip(fig.axes[3:], SLICES, strict=True):
        labels = adata.obs.loc[rows_of(adata, s), "layer"].astype(str)
        np.testing.assert_allclose(ax.collections[0].get_facecolors(), [layers[v] for v in labels])
    unmatched = legend_colors(si.pl.domains(adata, reference="layer", match_colors=False).axes[2])
    assert unmatched["0"] == layers["L1"]  # both first in their own order


def test_domains_unannotated_and_errors(adata):
    adata.obs["layer"] = adata.obs["layer"].astype(object)
    adata.obs.loc[adata.obs_names[:4], "layer"] = np.nan
    fig = si.pl.domains(adata, reference="layer")
    layers = legend_colors(fig.axes[5])
    assert list(layers) == ["L1", "L2", "L3", "nan"]  # missing last, in grey
    assert layers["nan"] == pytest.approx((0.85, 0.85, 0.85, 1.0))
    with pytest.raises(KeyError, match="layer2"):
        si.pl.domains(adata, reference="layer2")
    del adata.obs["inspire_domain"]
    with pytest.raises(KeyError, match=r"obs\['inspire_domain'\].*run `sd_inspire.tl.domains` first"):
        si.pl.domains(adata)


# --- alignment


def test_alignment_slices_at_their_height(adata):
    fig = si.pl.alignment(adata, elev=35, azim=-50)
    (ax,) = fig.axes
    assert ax.name == "3d"
    assert (ax.elev, ax.azim) == (35, -50)
    assert len(ax.collections) == 3
    aligned = adata.obsm["spatial_aligned"]
    for k, (coll, s) in enumerate(zip(ax.collections, SLICES, strict=True)):
        xs, ys, zs = (np.asarray(v) for v in coll._offsets3d)
        np.testing.assert_allclose(zs, 10.0 * k)
        np.testing.assert_allclose(np.column_stack([xs, ys]), aligned[rows_of(adata, s), :2])
    assert [t.get_text() for t in ax.get_zticklabels()] == SLICES
    assert list(legend_colors(fig)) == SLICES


def test_alignment_gene_colour_shared_scale(adata):
    fig = si.pl.alignment(adata, color="g3", vmax=None)
    assert len(fig.axes) == 2  # 3D view and colorbar
    norms = {(c.norm.vmin, c.norm.vmax) for c in fig.axes[0].collections}
    assert len(norms) == 1
    assert norms.pop() == (pytest.approx(adata[:, "g3"].X.min()), pytest.approx(adata[:, "g3"].X.max()))


def test_alignment_errors(adata):
    with pytest.raises(KeyError, match=r"obsm\['spatial_3d'\].*run `sd_inspire.tl.align` first"):
        si.pl.alignment(adata, key="spatial_3d")
    with pytest.raises(ValueError, match="needs x, y and z"):
        si.pl.alignment(adata, key="spatial")
    with pytest.raises(KeyError, match="neither a column"):
        si.pl.alignment(adata, color="nope")


# --- images


IMAGES = {
    "factors": lambda a, path: si.pl.factors(a, n_genes=2, panel_size=1.6, save=path, dpi=DPI),
    "loadings": lambda a, path: si.pl.loadings(a, n_top=5, panel_size=2.0, save=path, dpi=DPI),
    "history": lambda a, path: si.pl.history(a, smooth=15, log=True, panel_size=2.5, save=path, dpi=DPI),
    "domains": lambda a, path: si.pl.domains(a, reference="layer", panel_size=1.6, save=path, dpi=DPI),
    "alignment": lambda a, path: si.pl.alignment(a, color="inspire_domain", figsize=(4, 3.5), save=path, dpi=DPI),
}


@pytest.mark.parametrize("name", list(IMAGES))
def test_image(name, adata, tmp_path):
    actual = tmp_path / f"{name}.png"
    with mpl.rc_context():
        plt.style.use("default")
        set_font_settings_for_testing()
        IMAGES[name](adata, actual)
    expected = BASELINE / f"{name}.png"
    if UPDATE:
        BASELINE.mkdir(exist_ok=True)
        shutil.copyfile(actual, expected)
        pytest.skip(f"baseline written: {expected}")
    if not expected.is_file():
        pytest.fail(f"no baseline {expected}; write it with SD_INSPIRE_UPDATE_BASELINES=1 (see the module docstring)")
    diff = compare_images(str(expected), str(actual), tol=TOLERANCE)
    assert diff is None, diff


def test_loadings_titles_name_near_duplicate_factors(adata):
    adata.uns["inspire"] = {
        "redundant_factors": pd.DataFrame(
            {
                "factor": ["factor_0"],
                "similar_to": ["factor_2"],
                "program_similarity": [0.97],
                "usage_correlation": [0.6],
            }
        )
    }
    fig = si.pl.loadings(adata, n_top=2)
    assert [ax.get_title() for ax in fig.axes] == ["factor_0\n≈ factor_2", "factor_1", "factor_2\n≈ factor_0"]


# --- differential factors


def test_differential_factors_points_are_the_samples_usage():
    rng = np.random.default_rng(1)
    n, samples = 40, [f"s{i}" for i in range(6)]
    adata = AnnData(np.zeros((n * 6, 1), dtype=np.float32))
    adata.obs["sample"] = np.repeat(samples, n)
    adata.obs["condition"] = np.repeat(["ctrl"] * 3 + ["case"] * 3, n)
    adata.obsm["inspire_factors"] = rng.dirichlet(np.ones(3), n * 6)
    si.tl.differential_factors(adata, condition_key="condition", sample_key="sample", reference="ctrl")
    usage = adata.uns["inspire_differential"]["usage"]
    results = adata.uns["inspire_differential"]["results"]
    fig = si.pl.differential_factors(adata, n_top=2)
    assert len(fig.axes) == 2
    for ax, name in zip(fig.axes, results["factor"][:2], strict=True):
        assert ax.get_title().startswith(f"{name}\nadj. p = ")
        assert [t.get_text() for t in ax.get_xticklabels()] == ["case", "ctrl"]  # the categories' (sorted) order
        points = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if c.get_offsets().shape[0] == 3])
        np.testing.assert_allclose(np.sort(points), np.sort(usage[name].to_numpy()))
    assert [ax.get_title().split("\n")[0] for ax in si.pl.differential_factors(adata, [2, 0]).axes] == [
        "factor_2",
        "factor_0",
    ]
    with pytest.raises(KeyError, match=r"uns\['x'\].*tl.differential_factors"):
        si.pl.differential_factors(adata, key="x")
    with pytest.raises(ValueError, match="out of range"):
        si.pl.differential_factors(adata, [5])


def test_loadings_exclude_leaves_out_matching_genes(adata):
    top = true_top(adata, 0, 4)
    fig = si.pl.loadings(adata, [0], n_top=3, exclude=f"^({top[0]}|{top[2]})$")
    names = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert names == [g for g in true_top(adata, 0, 6) if g not in (top[0], top[2])][:3]
    assert fig.axes[0].get_xlabel() == "specificity\nB log(B/mean B)"
    fig = si.pl.factors(adata, [0], n_genes=2, exclude=f"^{top[0]}$")
    assert top[0] not in fig.axes[0].get_ylabel()


def test_stored_domain_colours_are_used_by_every_figure(adata):
    from matplotlib.colors import to_rgba

    si.tl.domains(adata, n_domains=3, method="kmeans", use_rep="inspire_factors", show_progress_bar=False)
    colours = adata.uns["inspire_domain_colors"]
    assert len(colours) == adata.obs["inspire_domain"].cat.categories.size
    adata.uns["inspire_domain_colors"] = ["#ff0000", "#00ff00", "#0000ff"][: len(colours)]  # e.g. set in scanpy
    expected = {
        c: to_rgba(h)
        for c, h in zip(adata.obs["inspire_domain"].cat.categories, adata.uns["inspire_domain_colors"], strict=True)
    }
    for fig in (si.pl.spatial(adata, color="inspire_domain"), si.pl.domains(adata)):
        ax = fig.axes[0]
        first = adata.obs.loc[adata.obs["slice"] == ax.get_title(), "inspire_domain"].astype(str).to_numpy()
        drawn = ax.collections[0].get_facecolors()
        for label, colour in zip(first, drawn, strict=True):
            assert tuple(colour) == expected[label]


def test_factor_colour_bars_say_proportion(adata):
    fig = si.pl.factors(adata, [0, 1])
    labels = [ax.get_ylabel() for ax in fig.axes[6:]]  # 2 factors x 3 slices of maps, then the colour bars
    assert labels == ["proportion", "proportion"]


def test_show_returns_none_and_closes_the_figure(adata, monkeypatch):
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(True))
    before = len(plt.get_fignums())
    assert si.pl.history(adata, show=True) is None  # shown once (Jupyter displays it, no returned object)
    assert shown == [True]
    assert len(plt.get_fignums()) == before
    assert si.pl.history(adata, show=False) is not None
    with si.settings.override(verbosity="warning"):
        si.settings.autoshow = True
        try:
            assert si.pl.history(adata) is None  # show=None follows settings.autoshow
            fig, ax = plt.subplots()
            assert si.pl.history(adata, terms="loss", ax=ax) is fig  # composing a figure: not shown, not closed
            assert plt.fignum_exists(fig.number)
        finally:
            si.settings.autoshow = False
    assert len(shown) == 2


def test_ax_draws_one_panel_into_a_given_axis(adata):
    one = adata[adata.obs["slice"] == adata.obs["slice"].cat.categories[0]].copy()
    one.obs["slice"] = one.obs["slice"].cat.remove_unused_categories()
    for draw in (
        lambda ax: si.pl.spatial(one, color="inspire_domain" if "inspire_domain" in one.obs else None, ax=ax),
        lambda ax: si.pl.factors(one, [1], ax=ax),
        lambda ax: si.pl.loadings(adata, [0], n_top=3, ax=ax),
        lambda ax: si.pl.history(adata, terms="poisson", ax=ax),
    ):
        fig, (left, right) = plt.subplots(1, 2)
        assert draw(right) is right.figure
        assert right.has_data() or right.patches or right.lines
        assert not left.has_data()
        plt.close(fig)
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="`ax` takes a plot of one panel; this one has 3: choose one of the factors"):
        si.pl.loadings(adata, ax=ax)
    with pytest.raises(ValueError, match="3D axis"):
        si.pl.alignment(adata, ax=ax)
    plt.close(fig)
