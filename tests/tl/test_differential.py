"""``tl.differential_factors`` (samples as replicates) and ``tl.metrics.redundant_factors``."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import sd_inspire as si
from sd_inspire.tl.metrics import program_specificity, redundant_factors


def _samples(n_per_condition=(3, 3), effect=0.0, n_spots=100, n_factors=4, seed=0):
    """Spots of samples whose factor-1 usage is multiplied by ``exp(effect)`` in the second condition."""
    rng = np.random.default_rng(seed)
    rows, samples, conditions = [], [], []
    for c, n in enumerate(n_per_condition):
        for s in range(n):
            alpha = np.ones(n_factors) * 5 * rng.lognormal(0, 0.1, n_factors)  # sample-to-sample variation
            if c == 1:
                alpha[1] *= np.exp(effect)
            rows.append(rng.dirichlet(alpha, n_spots))
            samples += [f"c{c}s{s}"] * n_spots
            conditions += [["control", "case", "other"][c]] * n_spots
    adata = ad.AnnData(np.zeros((len(samples), 2), dtype=np.float32))
    adata.obs["sample"] = pd.Categorical(samples)
    adata.obs["condition"] = pd.Categorical(conditions, categories=["control", "case", "other"][: len(n_per_condition)])
    adata.obsm["inspire_factors"] = np.vstack(rows)
    return adata


def test_a_factor_with_an_effect_is_found_and_the_table_is_tidy():
    adata = _samples(effect=1.0)
    si.tl.differential_factors(adata, condition_key="condition", sample_key="sample")
    out = adata.uns["inspire_differential"]
    results = out["results"]
    assert list(results.columns) == [
        "factor",
        "condition",
        "reference",
        "usage",
        "usage_reference",
        "log2_fold_change",
        "difference",
        "statistic",
        "pvalue",
        "pvalue_adj",
    ]
    assert len(results) == 4
    assert set(results["condition"]) == {"case"}
    assert set(results["reference"]) == {"control"}
    top = results.iloc[0]
    assert top["factor"] == "factor_1"
    assert top["pvalue_adj"] < 0.05
    assert top["log2_fold_change"] > 0
    assert (results["pvalue"].diff().dropna() >= 0).all()  # sorted by p
    assert out["usage"].shape == (6, 5)
    assert list(out["usage"]["condition"].cat.categories) == ["control", "case"]
    assert out["params"]["n_samples"] == {"control": 3, "case": 3}
    assert out["params"]["dof"] == 4


def test_the_test_is_a_pooled_t_test_on_sample_means():
    adata = _samples(seed=3)
    si.tl.differential_factors(adata, condition_key="condition", sample_key="sample", transform="none", moderated=False)
    results = adata.uns["inspire_differential"]["results"].set_index("factor")
    usage = adata.uns["inspire_differential"]["usage"]
    for k in range(4):
        a = usage.loc[usage["condition"] == "case", f"factor_{k}"]
        b = usage.loc[usage["condition"] == "control", f"factor_{k}"]
        expected = stats.ttest_ind(a, b, equal_var=True)
        assert results.loc[f"factor_{k}", "statistic"] == pytest.approx(expected.statistic)
        assert results.loc[f"factor_{k}", "pvalue"] == pytest.approx(expected.pvalue)
    assert (results["pvalue_adj"] >= results["pvalue"]).all()


def test_variance_prior_recovers_a_known_prior():
    # variances drawn as s0² d0 / chi²(d0), then observed with d degrees of freedom: the estimate finds d0 and s0²
    from sd_inspire.tl._differential import _variance_prior

    rng = np.random.default_rng(0)
    d0, s0, d = 8.0, 0.3, 4
    true = s0 * d0 / rng.chisquare(d0, 20_000)
    observed = true * rng.chisquare(d, true.size) / d
    prior_dof, prior_variance = _variance_prior(observed, d)
    assert prior_dof == pytest.approx(d0, rel=0.1)
    assert prior_variance == pytest.approx(s0, rel=0.05)
    same = 0.3 * rng.chisquare(d, 20_000) / d  # one variance for all: no spread beyond sampling
    assert _variance_prior(same, d)[0] > 100


@pytest.mark.parametrize("n_factors", [4, 12])
def test_moderated_statistic_uses_the_shrunk_variance(n_factors):
    adata = _samples(effect=1.0, seed=2, n_factors=n_factors)
    si.tl.differential_factors(adata, condition_key="condition", sample_key="sample", transform="none", moderated=True)
    out = adata.uns["inspire_differential"]
    usage, results = out["usage"], out["results"].set_index("factor")
    d0 = out["params"]["prior_dof"]
    assert out["params"]["moderated"]
    assert d0 > 0
    values = usage.drop(columns="condition")
    groups = usage["condition"].to_numpy()
    means = values.groupby(groups, observed=True).transform("mean")
    s2 = ((values - means) ** 2).sum() / 4
    from sd_inspire.tl._differential import _variance_prior

    _, prior = _variance_prior(s2.to_numpy(), 4)
    shrunk = prior if np.isinf(d0) else (d0 * prior + 4 * s2) / (d0 + 4)
    diff = values[groups == "case"].mean() - values[groups == "control"].mean()
    t = diff / np.sqrt(shrunk * (1 / 3 + 1 / 3))
    np.testing.assert_allclose(results.loc[t.index, "statistic"], t, rtol=1e-8)
    p = 2 * (stats.norm.sf(np.abs(t)) if np.isinf(d0) else stats.t.sf(np.abs(t), 4 + d0))
    np.testing.assert_allclose(results.loc[t.index, "pvalue"], p, rtol=1e-8)


@pytest.mark.parametrize("moderated", [False, True])
def test_null_samples_give_few_calls(moderated):
    calls = 0
    for seed in range(40):
        adata = _samples(seed=seed)
        si.tl.differential_factors(adata, condition_key="condition", sample_key="sample", moderated=moderated)
        calls += int((adata.uns["inspire_differential"]["results"]["pvalue_adj"] < 0.05).any())
    assert calls <= 5  # family-wise rate about 5% (Benjamini-Hochberg under the complete null)


def test_three_conditions_compare_each_with_the_reference():
    adata = _samples((2, 3, 2), effect=1.0)
    si.tl.differential_factors(adata, condition_key="condition", sample_key="sample", reference="case", key_added="d")
    results = adata.uns["d"]["results"]
    assert set(results["condition"]) == {"control", "other"}
    assert len(results) == 8
    assert adata.uns["d"]["params"]["dof"] == 7 - 3


def test_bad_inputs_are_named():
    adata = _samples()
    with pytest.raises(KeyError, match="'cond'"):
        si.tl.differential_factors(adata, condition_key="cond", sample_key="sample")
    with pytest.raises(KeyError, match="other_factors"):
        si.tl.differential_factors(adata, condition_key="condition", sample_key="sample", key="other")
    with pytest.raises(ValueError, match="'treated' is not a condition"):
        si.tl.differential_factors(adata, condition_key="condition", sample_key="sample", reference="treated")
    with pytest.raises(ValueError, match="`transform`"):
        si.tl.differential_factors(adata, condition_key="condition", sample_key="sample", transform="log")
    mixed = adata.copy()
    mixed.obs["condition"] = mixed.obs["condition"].astype(str)
    mixed.obs.iloc[0, mixed.obs.columns.get_loc("condition")] = "case"
    with pytest.raises(ValueError, match="'c0s0'"):
        si.tl.differential_factors(mixed, condition_key="condition", sample_key="sample")
    few = _samples((1, 3))
    with pytest.raises(ValueError, match="fewer than two samples.*'control': 1"):
        si.tl.differential_factors(few, condition_key="condition", sample_key="sample")
    one = adata[adata.obs["condition"] == "control"].copy()
    with pytest.raises(ValueError, match="one condition"):
        si.tl.differential_factors(one, condition_key="condition", sample_key="sample")


def test_spots_without_a_sample_are_left_out_and_copy_leaves_the_input():
    adata = _samples(effect=1.0)
    adata.obs["sample"] = adata.obs["sample"].astype(object)
    adata.obs.iloc[:10, adata.obs.columns.get_loc("sample")] = np.nan
    out = si.tl.differential_factors(adata, condition_key="condition", sample_key="sample", copy=True)
    assert "inspire_differential" not in adata.uns
    assert out.uns["inspire_differential"]["usage"].shape[0] == 6


def test_results_survive_a_zarr_round_trip(tmp_path):
    adata = _samples(effect=1.0)
    si.tl.differential_factors(adata, condition_key="condition", sample_key="sample")
    with ad.settings.override(zarr_write_format=3):
        adata.write_zarr(tmp_path / "a.zarr")
    back = ad.read_zarr(tmp_path / "a.zarr").uns["inspire_differential"]
    pd.testing.assert_frame_equal(
        back["results"].reset_index(drop=True),
        adata.uns["inspire_differential"]["results"],
        check_dtype=False,
    )


def test_redundant_factors_flags_a_split_program_only():
    rng = np.random.default_rng(0)
    programs = rng.dirichlet(np.full(60, 0.3), 4).T
    shared = rng.dirichlet(np.full(60, 0.1))[:, None]  # a few genes every program holds (housekeeping)
    loadings = 0.3 * programs + 0.7 * shared
    loadings = np.hstack([loadings, loadings[:, [2]] * rng.uniform(0.97, 1.03, (60, 1))])
    loadings /= loadings.sum(axis=0)
    usage = rng.dirichlet(np.ones(4), 300)
    factors = np.hstack([usage[:, :2], usage[:, [2]] * 0.6, usage[:, [3]], usage[:, [2]] * 0.4])
    table = redundant_factors(loadings, factors)
    assert table[["factor", "similar_to"]].values.tolist() == [["factor_2", "factor_4"]]
    assert table.loc[0, "program_similarity"] > 0.95
    assert table.loc[0, "usage_correlation"] > 0.9
    # the raw loadings of every pair correlate (shared genes); the specificities do not
    assert np.corrcoef(loadings.T)[0, 1] > 0.9 > 0.5 > np.corrcoef(program_specificity(loadings).T)[0, 1]
    # a similar program used elsewhere is not flagged
    apart = factors.copy()
    apart[:, 4] = np.roll(apart[:, 4], 150)
    assert redundant_factors(loadings, apart, min_usage_correlation=0.5).empty
    with pytest.raises(ValueError, match="5 factors but `factors` has 4"):
        redundant_factors(loadings, factors[:, :4])
    with pytest.raises(ValueError, match="non-negative"):
        program_specificity(-loadings)
