"""The count model's expected shares in numpy, for code that works on its fitted parameters without torch.

Spot ``i`` of slice ``s`` with factor proportions ``β_i`` expects the share ``q_ig = r_ig / Σ_g' r_ig'`` of its
counts on gene ``g``, with ``r_i = β_i b_s`` and the slice's weighted programs ``b_s = B ⊙ exp(γ_s) ⊙ m_s`` (gene
programs ``B``, factors x genes; multiplicative slice gene effects ``exp(γ_s)``; ``m_s`` the genes the slice
measured). :meth:`InspireModule.rates <sd_inspire.model._module.InspireModule.rates>` is the same formula in torch
(a test holds them equal).
"""

from __future__ import annotations

import numpy as np


def slice_programs(programs: np.ndarray, effects: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The weighted programs ``b_s = B ⊙ exp(γ_s) ⊙ m_s`` of every slice.

    Parameters
    ----------
    programs
        Gene programs ``B``, factors x genes (rows sum to 1).
    effects
        Multiplicative slice gene effects ``exp(γ)``, slices x genes.
    mask
        Genes each slice measured, slices x genes (bool or 0/1).

    Returns
    -------
    Slices x factors x genes.

    Examples
    --------
    >>> import numpy as np
    >>> programs = np.array([[0.5, 0.5], [0.1, 0.9]])
    >>> b = slice_programs(programs, np.array([[1.0, 2.0]]), np.array([[True, False]]))
    >>> b.shape, b[0].tolist()  # the second gene was not measured
    ((1, 2, 2), [[0.5, 0.0], [0.1, 0.0]])
    """
    return programs[None] * (effects * mask)[:, None, :]


def expected_shares(beta: np.ndarray, weighted: np.ndarray, genes: np.ndarray | None = None) -> np.ndarray:
    """Each spot's expected share of its counts on each gene, ``q = β b_s / Σ_g β b_s``, for spots of one slice.

    Parameters
    ----------
    beta
        Factor proportions of spots of one slice ``s``, spots x factors.
    weighted
        That slice's weighted programs ``b_s`` (one entry of :func:`slice_programs`), factors x genes.
    genes
        Columns to return; the shares are still normalised over every gene of ``weighted``.

    Returns
    -------
    Spots x genes (or x ``len(genes)``); rows over all genes sum to 1.

    Examples
    --------
    >>> import numpy as np
    >>> programs = np.array([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
    >>> b = slice_programs(programs, np.ones((1, 3)), np.array([[True, True, False]]))[0]
    >>> expected_shares(np.array([[0.5, 0.5]]), b).round(3).tolist()  # the unmeasured gene gets nothing
    [[0.417, 0.583, 0.0]]
    """
    norm = beta @ weighted.sum(axis=1)
    r = beta @ (weighted if genes is None else weighted[:, genes])
    return r / np.maximum(norm, 1e-12)[:, None]
