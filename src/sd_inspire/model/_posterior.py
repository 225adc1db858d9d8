"""Per-spot uncertainty of the spatial factors: a Laplace approximation of the count likelihood.

With the gene programs ``B`` and slice effects fixed, a spot's counts follow a multinomial with probabilities
``q_g = r_g / S``, ``r = β b`` and ``b = B ⊙ exp(γ_s) ⊙ m_s`` (the genes its slice measured), ``S = Σ_g r_g``. The
Fisher information of ``β`` is ``I = (L / S) [b diag(1/r) bᵀ - c cᵀ / S]`` with ``c = b 1`` and ``L`` the spot's
counts. ``I β = 0`` (the likelihood does not see the scale of ``β``), so the covariance on the simplex is
``P (P I P)⁺ P``, ``P`` the projection onto ``{v : Σ v = 0}``. Counts are overdispersed relative to the multinomial:
each slice's Pearson dispersion ``φ_s`` (quasi-likelihood) scales the covariance, and a standard deviation never
exceeds 1/2, the largest a proportion can have. Memory: one block of rows at a
time; work ``O(n G K²)`` as matrix products.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from sd_inspire._chunks import row_blocks
from sd_inspire.model._counts import slice_programs

if TYPE_CHECKING:
    from collections.abc import Iterator


def factor_sd(
    beta: np.ndarray,
    loadings: np.ndarray,
    effects: np.ndarray,
    mask: np.ndarray,
    counts: Any,
    slices: np.ndarray,
    *,
    chunk_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Standard deviation of each spot's factor proportions, and the dispersion of each slice.

    Parameters
    ----------
    beta
        Factor proportions, n x K (rows sum to 1).
    loadings
        Gene programs ``B``, K x G (rows sum to 1).
    effects
        Multiplicative slice gene effects ``exp(γ)``, S x G.
    mask
        Genes each slice measured, S x G (bool).
    counts
        Raw counts of the G genes, n x G (SciPy sparse, or a dask array read in blocks).
    slices
        Slice code of each spot.
    chunk_size
        Spots per block.

    Returns
    -------
    ``sd`` (n x K) and ``dispersion`` (S, at least 1), with ``sd`` already scaled by ``sqrt(dispersion)`` of the
    spot's slice and at most 1/2.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import sparse
    >>> rng = np.random.default_rng(0)
    >>> programs = rng.dirichlet(np.ones(50) * 0.3, size=3)
    >>> beta = rng.dirichlet(np.ones(3), size=200)
    >>> def draw(depth):
    ...     return sparse.csr_matrix(np.vstack([rng.multinomial(depth, p) for p in beta @ programs]))
    >>> ones, everywhere = np.ones((1, 50)), np.ones((1, 50), dtype=bool)
    >>> shallow, _ = factor_sd(beta, programs, ones, everywhere, draw(100), np.zeros(200, int))
    >>> deep, _ = factor_sd(beta, programs, ones, everywhere, draw(10_000), np.zeros(200, int))
    >>> bool(np.median(shallow / deep) > 5)  # sd shrinks like 1 / sqrt(depth): about 10x here
    True
    """
    n, k = beta.shape
    var = np.zeros((n, k))
    pearson = np.zeros(effects.shape[0])
    dof = np.zeros(effects.shape[0])
    weights = slice_programs(loadings, effects, mask)  # S x K x G
    projection = np.eye(k) - 1.0 / k
    for rows, x, s in _slice_blocks(counts, slices, chunk_size, np.float64):
        b = weights[s]
        r = beta[rows] @ b  # spots x G
        total = np.maximum(r.sum(axis=1), 1e-300)
        # a gene whose programs are all absent from the spot (proportions that underflowed to 0) would give an
        # infinite information: floor its expected share at 1e-10 of the spot's total
        r = np.maximum(r, 1e-10 * total[:, None])
        library = x.sum(axis=1)
        c = b.sum(axis=1)
        info = np.einsum("kg,ng,lg->nkl", b, 1.0 / r, b, optimize=True)
        info -= c[None, :, None] * c[None, None, :] / total[:, None, None]
        info *= (library / total)[:, None, None]
        cov = projection @ np.linalg.pinv(projection @ info @ projection, hermitian=True) @ projection
        var[rows] = np.clip(np.diagonal(cov, axis1=1, axis2=2), 0.0, None)
        mu = library[:, None] * r / total[:, None]
        measured = mask[s]
        pearson[s] += float((((x - mu) ** 2)[:, measured] / np.maximum(mu[:, measured], 1e-300)).sum())
        dof[s] += rows.size * (measured.sum() - 1 - (k - 1))
    dispersion = np.where(dof > 0, pearson / np.maximum(dof, 1), 1.0)
    dispersion = np.maximum(dispersion, 1.0)  # never narrower than the multinomial's own noise
    var *= dispersion[slices][:, None]
    # a proportion varies by at most 1/2: the bound where the approximation breaks down (little information, e.g.
    # few counts or programs the spot's genes cannot tell apart)
    var = np.minimum(var, 0.25)
    return np.sqrt(var).astype(np.float32), dispersion


def refine_factors(
    beta: np.ndarray,
    loadings: np.ndarray,
    effects: np.ndarray,
    mask: np.ndarray,
    counts: Any,
    slices: np.ndarray,
    *,
    n_passes: int,
    chunk_size: int = 4096,
) -> np.ndarray:
    """Each spot's factor proportions moved towards its own counts by EM passes, the programs fixed.

    The factor head reads the latent codes, which summarise a spot's neighbourhood: its proportions are smooth over
    the graph and miss what a spot's own counts say of its composition (cells pooled in a spot, a cell's own type).
    With the programs and slice effects fixed, a spot's counts are a multinomial over genes whose probabilities mix
    the slice's normalised programs ``φ_k = b_k / c_k`` (``b = B ⊙ exp(γ_s) ⊙ m_s``, ``c_k = Σ_g b_kg``) with
    weights ``θ_k ∝ β_k c_k``, its shares of the counts. Each pass is one EM step of those weights (the
    multiplicative update of a KL non-negative factorisation with the programs fixed),
    ``θ_k ← θ_k Σ_g (x_g / L) φ_kg / Σ_k' θ_k' φ_k'g``, which never lowers the spot's likelihood; the proportions
    are ``β_k ∝ θ_k / c_k`` again. Starting from the model's own proportions and stopping after a few passes keeps
    them near the spatial fit where a spot's counts say little (few counts, programs its genes cannot tell apart).
    Spots without counts keep their proportions. Work ``O(n G K)`` per pass, one block of rows at a time.

    Parameters
    ----------
    beta
        Factor proportions to start from, n x K (rows sum to 1).
    loadings
        Gene programs ``B``, K x G (rows sum to 1).
    effects
        Multiplicative slice gene effects ``exp(γ)``, S x G.
    mask
        Genes each slice measured, S x G (bool).
    counts
        Counts (or the non-negative values of a KL factorisation) of the G genes, n x G (SciPy sparse, or a dask
        array read in blocks).
    slices
        Slice code of each spot.
    n_passes
        EM passes; 0 returns ``beta`` unchanged.
    chunk_size
        Spots per block.

    Returns
    -------
    Refined proportions, n x K, float32 (rows sum to 1).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import sparse
    >>> rng = np.random.default_rng(0)
    >>> programs = rng.dirichlet(np.ones(50) * 0.3, size=3)
    >>> truth = rng.dirichlet(np.ones(3), size=300)
    >>> counts = sparse.csr_matrix(np.vstack([rng.multinomial(2000, p) for p in truth @ programs]))
    >>> flat = np.full((300, 3), 1 / 3)  # no spot-level information to start from
    >>> fitted = refine_factors(
    ...     flat, programs, np.ones((1, 50)), np.ones((1, 50), bool), counts, np.zeros(300, int), n_passes=50
    ... )
    >>> bool(np.abs(fitted - truth).mean() < 0.05)
    True
    """
    beta = np.asarray(beta, dtype=np.float64)
    if n_passes <= 0:
        return beta.astype(np.float32)
    weights = slice_programs(np.asarray(loadings, np.float64), np.asarray(effects, np.float64), mask)  # S x K x G
    scale = np.maximum(weights.sum(axis=2), 1e-300)  # c, S x K
    shares = (weights / scale[:, :, None]).astype(np.float32)  # φ, S x K x G
    out = np.empty(beta.shape, dtype=np.float32)
    for rows, xs, s in _slice_blocks(counts, slices, chunk_size, np.float32):
        phi, c = shares[s], scale[s]
        theta = beta[rows] * c
        theta /= np.maximum(theta.sum(axis=1, keepdims=True), 1e-300)
        total = xs.sum(axis=1, dtype=np.float64)
        has = total > 0
        xs = xs[has] / total[has, None].astype(np.float32)  # each spot's shares of its counts
        t = theta[has].astype(np.float32)
        for _ in range(n_passes):
            mix = t @ phi  # spots x G: the expected shares
            t = t * ((xs / np.maximum(mix, np.float32(1e-30))) @ phi.T)
            t /= np.maximum(t.sum(axis=1, keepdims=True), np.float32(1e-30))
        theta[has] = t
        b = theta / c
        out[rows] = b / np.maximum(b.sum(axis=1, keepdims=True), 1e-300)
    return out


def _slice_blocks(
    counts: Any, slices: np.ndarray, chunk_size: int, dtype: type
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """``(rows, x, s)`` for the spots of each slice ``s`` in each block of rows: their indices and dense counts."""
    for start, _, block in row_blocks(counts, chunk_size):
        x = block.toarray().astype(dtype)
        codes = slices[start : start + x.shape[0]]
        for s in np.unique(codes):
            local = np.flatnonzero(codes == s)
            yield start + local, x[local], int(s)
