"""A second generator for the suite: real spots or cells resampled into new tissue layouts.

:func:`sd_inspire.datasets.simulate` draws counts from a parametric model (cell types, gene programs, negative
binomial noise) in three geometries (layers, islands, gradients); the model was developed on it. Here nothing of that
is used: the expression comes from a labelled real dataset, and the geometry from smooth random fields.

- **Domains** are the argmax of ``K`` smooth Gaussian random fields over a square tissue (random Fourier features with
  a correlation length of a fraction of the tissue), each field offset so that every domain covers a share of the
  tissue: irregular patches of unequal sizes, none of them layered, the same tissue for every slice.
- **Slices** are square windows of the tissue at random positions and rotations, so their domain compositions differ
  (a small domain may be missing from a slice). Spots sit on a hexagonal grid (spot technologies) or on a jittered
  grid (single cells).
- **Counts**: each spot of domain ``k`` takes the counts of a reference spot annotated ``k``, drawn at random (with
  replacement) from the real dataset, then ``x' ~ Poisson(x · d_s · f_sg)``: ``d_s`` the slice's depth factor,
  ``f_sg`` a log-normal gene effect of the slice (centred so the geometric mean over genes is 1). The real data's
  gene-gene structure, noise and sparsity are kept; the within-domain spatial pattern is not (spots of one domain are
  exchangeable), nor does position inside a domain matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Callable

#: Random Fourier features per domain field.
_N_FEATURES = 64


@dataclass(frozen=True)
class Resampling:
    """A design of the generator: the reference, the slices and their differences."""

    reference: str  # name of a loader of benchmarks/suite.py: a labelled table of integer counts
    n_slices: int
    n_spots: int  # per slice
    layout: str  # "hex" (spots) or "cells" (jittered grid)
    spacing: float  # distance between neighbouring spots, in the coordinates' units
    depth: tuple[float, ...]  # per-slice depth factor d_s (cycled)
    gene_effect: float  # sd of the log gene effects f_sg
    window: float = 0.6  # side of a slice's window, as a fraction of the tissue's side
    length_scale: float = 0.18  # correlation length of the domain fields, as a fraction of the tissue's side
    min_share: float = 0.04  # every domain covers at least this share of the tissue


def random_field_domains(
    n_domains: int, length_scale: float, min_share: float, rng
) -> Callable[[np.ndarray], np.ndarray]:
    """The domain index (0..K-1) of points of the plane: the argmax of K smooth random fields, drawn once.

    Each field is offset so that its domain covers at least ``min_share`` of a fine grid of the unit square (the
    tissue); the fields extend beyond it. Returns a function of points (n x 2) to their domains.
    """
    freq = rng.normal(scale=1.0 / length_scale, size=(n_domains, _N_FEATURES, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(n_domains, _N_FEATURES))

    def fields(p: np.ndarray) -> np.ndarray:
        arg = np.einsum("nd,kmd->nkm", p, freq) + phase[None]
        return np.cos(arg).sum(axis=-1) * np.sqrt(2.0 / _N_FEATURES)

    side = np.linspace(0, 1, 120)
    grid = np.stack(np.meshgrid(side, side), axis=-1).reshape(-1, 2)
    values, offset = fields(grid), np.zeros(n_domains)
    for _ in range(200):
        share = np.bincount(np.argmax(values + offset, axis=1), minlength=n_domains) / len(grid)
        if share.min() >= min_share:
            break
        offset[np.argmin(share)] += 0.05
    return lambda points: np.argmax(fields(points) + offset, axis=1)


def _layout(n: int, kind: str, rng) -> np.ndarray:
    """About ``n`` points in the unit square: a hexagonal grid, or a grid jittered by a third of its spacing."""
    if kind == "hex":
        step = np.sqrt(2.0 / (np.sqrt(3.0) * n))
        rows = []
        for i, y in enumerate(np.arange(0, 1, step * np.sqrt(3.0) / 2)):
            x = np.arange((i % 2) * step / 2, 1, step)
            rows.append(np.column_stack([x, np.full(x.size, y)]))
        return np.vstack(rows)
    step = 1.0 / np.sqrt(n)
    side = np.arange(step / 2, 1, step)
    pts = np.stack(np.meshgrid(side, side), axis=-1).reshape(-1, 2)
    return np.clip(pts + rng.uniform(-step / 3, step / 3, size=pts.shape), 0, 1)


def resample(design: Resampling, reference, seed: int):
    """A multi-slice table drawn from ``reference`` (AnnData: integer counts in X, obs["domain"]) by ``design``.

    Returns an AnnData with counts in ``X``, ``obs["slice"]``, ``obs["domain"]`` (the reference's labels) and
    ``obsm["spatial"]``.
    """
    rng = np.random.default_rng(seed)
    labels = reference.obs["domain"].astype(str).to_numpy()
    keep = pd.notna(reference.obs["domain"]).to_numpy() & (labels != "nan")
    counts = sparse.csr_matrix(reference.X)[keep]
    labels = labels[keep]
    domains = np.unique(labels)
    if domains.size < 2:
        raise ValueError(f"The reference {design.reference!r} has {domains.size} annotated domains; at least 2 needed.")
    pools = [np.flatnonzero(labels == d) for d in domains]

    # one tissue for every slice (fields from a generator of their own); each slice a rotated window of it
    field_rng = np.random.default_rng(np.random.default_rng(rng.integers(2**32)).integers(2**32))
    domains_at = random_field_domains(len(domains), design.length_scale, design.min_share, field_rng)
    parts = []
    for s in range(design.n_slices):
        local, to_tissue = slice_window(design.n_spots, design.layout, design.window, rng)
        dom = domains_at(to_tissue(local))
        rows = np.array([rng.choice(pools[d]) for d in dom])
        drawn = redraw(counts[rows], design.depth[s % len(design.depth)], design.gene_effect, rng)
        coords = local * design.spacing * np.sqrt(design.n_spots)  # neighbours about `spacing` apart
        parts.append(slice_table(drawn, s, domains[dom], reference.var_names, coords))
    return concat_slices(parts)


def slice_window(n: int, layout: str, window: float, rng):
    """About ``n`` positions of a slice (its own unit square) and the map from them to the tissue's plane.

    The slice is a square window of side ``window`` (a fraction of the tissue's side), centred at a random point of
    the tissue's middle half and rotated by a random angle.
    """
    local = _layout(n, layout, rng)
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = rng.uniform(0.25, 0.75, size=2)  # the fields extend beyond the unit square
    return local, lambda points: centre + ((points - 0.5) * window) @ rot.T


def redraw(counts, depth: float, gene_effect: float, rng) -> sparse.csr_matrix:
    """``Poisson(x · depth · f_g)`` of sparse counts, ``f_g`` log-normal gene effects (sd ``gene_effect``, centred)."""
    effect = rng.normal(scale=gene_effect, size=counts.shape[1])
    scale = depth * np.exp(effect - effect.mean())
    drawn = sparse.csr_matrix(counts).astype(np.float64).tocsr()
    drawn.data = rng.poisson(drawn.data * scale[drawn.indices]).astype(np.float64)
    drawn.eliminate_zeros()
    return drawn


def slice_table(counts, s: int, domains, var_names, coords):
    """One slice as AnnData: counts, ``obs["slice"]`` ("slice{s}"), ``obs["domain"]``, ``obsm["spatial"]``."""
    import anndata as ad

    obs = pd.DataFrame({"slice": f"slice{s}", "domain": domains}, index=[f"s{s}-{i}" for i in range(len(domains))])
    return ad.AnnData(
        X=sparse.csr_matrix(counts, dtype=np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(var_names).astype(str)),
        obsm={"spatial": coords},
    )


def concat_slices(parts):
    """The slices as one table, ``obs["slice"]`` categorical."""
    import anndata as ad

    table = ad.concat(parts, merge="same")
    table.obs["slice"] = pd.Categorical(table.obs["slice"].astype(str))
    return table
