"""An ensemble of models trained from different seeds: matched, averaged, and its spread as uncertainty.

Factor models are identifiable only up to the order of their factors, and latent spaces only up to a rotation, so
each member is first brought onto the first one: factors by the assignment of gene programs that maximises their
total correlation, latent spaces by an orthogonal Procrustes rotation (with translation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Member:
    """Outputs of one trained model."""

    latent: np.ndarray  # n x d
    factors: np.ndarray  # n x K, rows sum to 1
    loadings: np.ndarray  # genes x K, columns sum to 1
    slice_effects: np.ndarray  # slices x genes, multiplicative
    factors_var: np.ndarray | None = None  # n x K, posterior variance of the factors (Laplace)
    dispersion: np.ndarray | None = None  # per slice


@dataclass
class Ensemble:
    """Averages over members and their per-spot spread."""

    latent: np.ndarray
    factors: np.ndarray
    loadings: np.ndarray
    slice_effects: np.ndarray
    latent_sd: np.ndarray | None = None  # n x d, spread over members
    factors_sd: np.ndarray | None = None  # n x K, posterior and spread over members (law of total variance)
    dispersion: np.ndarray | None = None  # per slice, mean over members
    match: list[float] = field(default_factory=list)  # mean correlation of each member's programs with the first's


def match_factors(reference: np.ndarray, loadings: np.ndarray) -> tuple[np.ndarray, float]:
    """Permutation of the columns of ``loadings`` that best matches ``reference`` (genes x K), and its mean correlation.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.random.default_rng(0).random((50, 4))
    >>> perm, corr = match_factors(ref, ref[:, [2, 0, 3, 1]])
    >>> perm.tolist(), round(corr, 6)
    ([1, 3, 0, 2], 1.0)
    """
    from scipy.optimize import linear_sum_assignment

    a = _standardized(reference)
    b = _standardized(loadings)
    corr = a.T @ b / a.shape[0]
    rows, cols = linear_sum_assignment(-corr)
    perm = cols[np.argsort(rows)]
    return perm, float(corr[np.arange(corr.shape[0]), perm].mean())


def align_latent(reference: np.ndarray, latent: np.ndarray) -> np.ndarray:
    """``latent`` rotated (orthogonal Procrustes) and shifted onto ``reference``, both n x d.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.random.default_rng(0).normal(size=(100, 3))
    >>> q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    >>> np.allclose(align_latent(ref, ref @ q + 5.0), ref)
    True
    """
    from scipy.linalg import orthogonal_procrustes

    mu_ref, mu = reference.mean(axis=0), latent.mean(axis=0)
    rotation, _ = orthogonal_procrustes(latent - mu, reference - mu_ref)
    return ((latent - mu) @ rotation + mu_ref).astype(np.float32)


def combine(members: list[Member]) -> Ensemble:
    """Match every member to the first and average.

    The factors' standard deviation adds the mean posterior variance of the members (when computed) and, with two
    or more members, the variance of their estimates; the latent standard deviation is the spread over members.
    """
    first = members[0]
    latents, factors, loadings, variances, match = [first.latent], [first.factors], [first.loadings], [], []
    perms = [np.arange(first.factors.shape[1])]
    for m in members[1:]:
        perm, corr = match_factors(first.loadings, m.loadings)
        latents.append(align_latent(first.latent, m.latent))
        factors.append(m.factors[:, perm])
        loadings.append(m.loadings[:, perm])
        perms.append(perm)
        match.append(corr)
    for m, perm in zip(members, perms, strict=True):
        if m.factors_var is not None:
            variances.append(m.factors_var[:, perm])
    latent, factor = np.stack(latents), np.stack(factors)
    effects = np.exp(np.mean([np.log(np.maximum(m.slice_effects, 1e-30)) for m in members], axis=0))
    factors_var = np.mean(variances, axis=0) if variances else None
    if len(members) > 1:
        spread = factor.var(axis=0, ddof=1)
        factors_var = spread if factors_var is None else factors_var + spread
    dispersions = [m.dispersion for m in members if m.dispersion is not None]
    return Ensemble(
        latent=latent.mean(axis=0).astype(np.float32),
        factors=factor.mean(axis=0).astype(np.float32),  # a mean of proportions: rows still sum to 1
        loadings=np.mean(loadings, axis=0).astype(np.float32),
        slice_effects=effects.astype(np.float32),
        latent_sd=latent.std(axis=0, ddof=1).astype(np.float32) if len(members) > 1 else None,
        factors_sd=np.sqrt(factors_var).astype(np.float32) if factors_var is not None else None,
        dispersion=np.mean(dispersions, axis=0) if dispersions else None,
        match=match,
    )


def _standardized(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=0)
    return centred / np.maximum(centred.std(axis=0), 1e-12)
