from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import sd_inspire as si
from sd_inspire.model._posterior import factor_sd, refine_factors
from sd_inspire.tl._ensemble import Member, combine


def _mixtures(n: int, depth: int, seed: int, dispersion: float | None = None):
    """Spots mixing 3 known programs over 60 genes; multinomial counts (or gamma-Poisson overdispersed)."""
    rng = np.random.default_rng(seed)
    programs = rng.dirichlet(np.ones(60) * 0.3, size=3)
    beta = rng.dirichlet(np.ones(3) * 2, size=n)
    rates = beta @ programs
    if dispersion is None:
        x = np.vstack([rng.multinomial(depth, p) for p in rates])
    else:
        x = rng.poisson(rng.gamma(1 / dispersion, dispersion * depth * rates))
    return beta, programs, sparse.csr_matrix(x.astype(np.float32))


def _em(x: np.ndarray, programs: np.ndarray, n_iter: int = 300) -> np.ndarray:
    """Maximum-likelihood mixture proportions per spot with known programs (EM)."""
    beta = np.full((x.shape[0], programs.shape[0]), 1.0 / programs.shape[0])
    for _ in range(n_iter):
        r = beta @ programs
        beta = beta * ((x / np.maximum(r, 1e-300)) @ programs.T)
        beta /= beta.sum(axis=1, keepdims=True)
    return beta


def test_laplace_intervals_cover_at_nominal_rate():
    truth, programs, counts = _mixtures(600, depth=300, seed=0)
    estimate = _em(counts.toarray(), programs)
    ones, everywhere = np.ones((1, 60)), np.ones((1, 60), dtype=bool)
    sd, dispersion = factor_sd(estimate, programs, ones, everywhere, counts, np.zeros(600, dtype=int))
    assert dispersion[0] == pytest.approx(1.0, abs=0.1)  # multinomial counts: no overdispersion
    err = np.abs(estimate - truth)
    assert 0.62 < (err <= sd).mean() < 0.74  # measured 0.68
    assert 0.90 < (err <= 1.96 * sd).mean() < 0.98  # measured 0.93


def test_overdispersion_widens_intervals():
    _, programs, plain = _mixtures(300, depth=300, seed=1)
    truth, _, over = _mixtures(300, depth=300, seed=1, dispersion=0.5)
    ones, everywhere = np.ones((1, 60)), np.ones((1, 60), dtype=bool)
    codes = np.zeros(300, dtype=int)
    sd_plain, d_plain = factor_sd(truth, programs, ones, everywhere, plain, codes)
    sd_over, d_over = factor_sd(truth, programs, ones, everywhere, over, codes)
    assert d_over[0] > 3 * d_plain[0]
    assert np.median(sd_over / np.maximum(sd_plain, 1e-12)) > 1.5
    assert (sd_over <= 0.5).all()  # never above a proportion's largest sd


def test_combine_matches_permuted_members():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(100, 4))
    factors = rng.dirichlet(np.ones(3), size=100)
    loadings = rng.dirichlet(np.ones(30), size=3).T
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    perm = np.array([2, 0, 1])
    first = Member(latent, factors, loadings, np.ones((2, 30)))
    second = Member(latent @ q + 3, factors[:, perm], loadings[:, perm], np.ones((2, 30)))
    ens = combine([first, second])
    assert np.allclose(ens.factors, factors, atol=1e-6)
    assert np.allclose(ens.loadings, loadings, atol=1e-6)
    assert np.allclose(ens.latent, latent, atol=1e-5)
    assert np.allclose(ens.factors_sd, 0, atol=1e-6)
    assert np.allclose(ens.latent_sd, 0, atol=1e-5)
    assert ens.match == [pytest.approx(1.0)]


@pytest.fixture(scope="module")
def ensemble_run():
    sdata = si.datasets.simulate(2, n_spots=250, n_genes=120, random_state=3)
    si.tl.integrate(sdata, n_factors=4, max_steps=60, n_models=2, show_progress_bar=False)
    return sdata


def test_ensemble_keys_and_shapes(ensemble_run):
    table = ensemble_run["table"]
    n = table.n_obs
    assert table.obsm["inspire_factors_sd"].shape == (n, 4)
    assert table.obsm["X_inspire_sd"].shape == (n, 32)
    assert np.allclose(table.obsm["inspire_factors"].sum(axis=1), 1, atol=1e-5)
    model_genes = table.var["inspire_gene"].to_numpy()
    assert np.allclose(table.varm["inspire_loadings"][model_genes].sum(axis=0), 1, atol=1e-4)
    assert (table.obsm["inspire_factors_sd"] > 0).mean() > 0.9
    assert np.allclose(
        table.obs["inspire_uncertainty"], np.sqrt((table.obsm["inspire_factors_sd"].astype(float) ** 2).mean(1))
    )
    summary = table.uns["inspire"]["uncertainty"]
    assert list(summary["slices"]) == ["slice0", "slice1"]
    for key in ("mean_factor_sd", "dispersion", "mean_latent_sd"):
        assert summary[key].shape == (2,)
    assert summary["program_match"].shape == (1,)
    assert table.uns["inspire"]["n_models"] == 2


def test_ensemble_deterministic_and_stale_keys_removed(ensemble_run):
    table = ensemble_run["table"]
    again = si.tl.integrate(ensemble_run, n_factors=4, max_steps=60, n_models=2, show_progress_bar=False, copy=True)
    assert np.array_equal(again.obsm["inspire_factors_sd"], table.obsm["inspire_factors_sd"])
    assert np.array_equal(again.obsm["X_inspire"], table.obsm["X_inspire"])
    single = si.tl.integrate(ensemble_run, n_factors=4, max_steps=60, show_progress_bar=False, copy=True)
    for key in ("inspire_factors_sd", "X_inspire_sd"):
        assert key not in single.obsm
    assert "inspire_uncertainty" not in single.obs
    assert "uncertainty" not in single.uns["inspire"]


def test_single_model_uncertainty(ensemble_run):
    out = si.tl.integrate(ensemble_run, n_factors=4, max_steps=60, uncertainty=True, show_progress_bar=False, copy=True)
    assert "X_inspire_sd" not in out.obsm  # a latent spread needs an ensemble
    assert (out.obsm["inspire_factors_sd"] <= 0.5).all()
    assert set(out.uns["inspire"]["uncertainty"]) == {"slices", "mean_factor_sd", "dispersion"}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_n_models(sim_adata, bad):
    with pytest.raises(ValueError, match="n_models"):
        si.tl.integrate(sim_adata, n_models=bad, max_steps=5, show_progress_bar=False)


def _log_likelihood(beta: np.ndarray, programs: np.ndarray, x: np.ndarray) -> float:
    """Multinomial log-likelihood of counts ``x`` (up to a constant) with proportions ``beta`` of ``programs``."""
    r = beta @ programs
    q = r / r.sum(axis=1, keepdims=True)
    return float((x * np.log(np.maximum(q, 1e-300))).sum())


def test_refine_factors_moves_each_spot_towards_its_counts():
    truth, programs, counts = _mixtures(400, depth=500, seed=2)
    ones, everywhere, codes = np.ones((1, 60)), np.ones((1, 60), dtype=bool), np.zeros(400, dtype=int)
    smooth = np.tile(truth.mean(axis=0), (400, 1))  # what a fit blind to each spot's own counts would say
    x = counts.toarray()
    previous, path = _log_likelihood(smooth, programs, x), [smooth]
    for n in range(1, 6):
        refined = refine_factors(smooth, programs, ones, everywhere, counts, codes, n_passes=n)
        assert refined.dtype == np.float32
        np.testing.assert_allclose(refined.sum(axis=1), 1.0, rtol=1e-5)
        now = _log_likelihood(refined.astype(np.float64), programs, x)
        assert now >= previous - 1e-6 * abs(previous)  # an EM pass never lowers the likelihood
        previous = now
        path.append(refined)
    assert np.abs(path[-1] - truth).mean() < 0.5 * np.abs(smooth - truth).mean()
    # run long enough, the passes reach each spot's maximum-likelihood proportions
    converged = refine_factors(smooth, programs, ones, everywhere, counts, codes, n_passes=300)
    np.testing.assert_allclose(converged, _em(x, programs), atol=2e-3)
    np.testing.assert_array_equal(
        refine_factors(smooth, programs, ones, everywhere, counts, codes, n_passes=0), smooth.astype(np.float32)
    )


def test_refine_factors_per_slice_effects_mask_and_empty_spots():
    truth, programs, _ = _mixtures(300, depth=400, seed=3)
    rng = np.random.default_rng(3)
    effects = np.ones((2, 60))
    effects[1] = np.exp(rng.normal(0, 0.7, 60))  # the second slice's own gene effects
    mask = np.ones((2, 60), dtype=bool)
    mask[1, 40:] = False  # which measured only 40 genes
    codes = np.repeat([0, 1], 150)
    weighted = programs[None] * (effects * mask)[:, None, :]
    x = np.zeros((300, 60))
    for i in range(300):
        r = truth[i] @ weighted[codes[i]]
        x[i] = rng.multinomial(400, r / r.sum())
    x[5] = 0  # a spot without counts keeps what it had
    start = np.full((300, 3), 1 / 3)
    refined = refine_factors(start, programs, effects, mask, sparse.csr_matrix(x), codes, n_passes=30)
    np.testing.assert_allclose(refined[5], start[5], rtol=1e-6)
    ok = np.arange(300) != 5
    assert np.abs(refined - truth)[ok].mean() < 0.05
    # values on genes a slice did not measure are not read
    junk = x.copy()
    junk[150:, 40:] = rng.poisson(50, size=(150, 20))
    again = refine_factors(start, programs, effects, mask, sparse.csr_matrix(junk), codes, n_passes=30)
    np.testing.assert_allclose(again, refined, atol=1e-5)
