from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

import sd_inspire as si


def test_categorical_panels_and_save(sim_sdata, tmp_path):
    fig = si.pl.spatial(sim_sdata, color="domain", save=tmp_path / "d.png")
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["slice0", "slice1", "slice2"]
    assert (tmp_path / "d.png").stat().st_size > 1000
    # one colour per domain, the same in every panel
    colours = {}
    t = sim_sdata["table"]
    for ax, s in zip(fig.axes, ["slice0", "slice1", "slice2"], strict=True):
        doms = t.obs.loc[t.obs["slice"] == s, "domain"].astype(str).to_numpy()
        fc = ax.collections[0].get_facecolors()
        for d, c in zip(doms, fc, strict=True):
            assert colours.setdefault(d, tuple(c)) == tuple(c)
    plt.close(fig)


def test_continuous_shared_scale(sim_sdata):
    si.pp.preprocess(sim_sdata, n_top_genes=30)
    gene = sim_sdata["table"].var_names[0]
    fig = si.pl.spatial(sim_sdata, color=gene, vmax=None)
    norms = {(c.norm.vmin, c.norm.vmax) for ax in fig.axes[:3] for c in ax.collections}
    assert len(norms) == 1
    assert norms.pop()[1] == pytest.approx(float(sim_sdata["table"][:, gene].X.max()))
    plt.close(fig)


def test_unknown_color(sim_sdata):
    with pytest.raises(KeyError, match="neither a column"):
        si.pl.spatial(sim_sdata, color="nope")


def test_no_color_single_panel(sim_adata):
    fig = si.pl.spatial(sim_adata, slice_key=None)
    assert len(fig.axes) == 1
    assert np.allclose(fig.axes[0].collections[0].get_offsets(), sim_adata.obsm["spatial"])
    plt.close(fig)
