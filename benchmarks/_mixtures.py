"""A third generator for the suite: tissue domains as mixtures of real cell types.

In :func:`sd_inspire.datasets.simulate` each domain has its own expression program, and in ``_resample.py`` each
spot copies a real spot of its domain. Real tissue is built differently: domains (cortical layers, niches) share cell
types and differ in their proportions, and a spot of a spot technology pools several cells, of more than one domain
at a boundary. This generator builds that, from a reference that neither of the others uses:

- **Cells**: the 10x Xenium mouse brain subset of ``../shared/data/xenium`` (36,602 cells x 248 genes, integer
  counts, no annotation), typed once by k-means (``N_TYPES`` clusters) of the principal components of its
  log-normalised expression. The types are the generator's building blocks; the benchmark's labels are the domains.
- **Domains** are either wavy layers (``"layers"``: bands of random widths along a sinusoidally bent axis) or the
  irregular patches of ``_resample.random_field_domains`` (``"fields"``). Each domain's composition is a mixture of
  a composition shared by all domains and one of its own, ``c_k = (1 - w) c_shared + w Dirichlet(alpha)``: the
  domains share most cell types and differ in proportions.
- **Slices** are rotated windows of one tissue (``_resample.slice_window``), so compositions differ between slices
  and a thin or small domain can be missing.
- **Spots** pool ``1 + Poisson(cells_per_spot - 1)`` cells placed uniformly in a disc around the spot's centre (radius
  ``spot_radius`` spacings); each cell takes the domain of its own position, a type drawn from that domain's
  composition and the counts of a random reference cell of that type. ``cells_per_spot=1`` with radius 0 gives
  single cells. A spot is labelled with the domain at its centre. The counts are redrawn as in ``_resample.py``
  (``Poisson(x · d_s · f_sg)``: per-slice depth and log-normal gene effects).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from _common import SHARED_DATA
from _resample import concat_slices, random_field_domains, redraw, slice_table, slice_window
from scipy import sparse

#: Cell types of the reference (k-means clusters of its expression).
N_TYPES = 14


@dataclass(frozen=True)
class Mixing:
    """A design of the generator: the tissue, the slices, the spots and their differences."""

    n_slices: int
    n_spots: int  # per slice
    geometry: str  # "layers" (wavy bands) or "fields" (random-field patches)
    n_domains: int
    cells_per_spot: float  # mean cells pooled per spot; 1 = single cells
    spot_radius: float  # radius of the disc the cells of a spot are drawn from, in spacings (0 for single cells)
    spacing: float  # distance between neighbouring spots, in the coordinates' units
    depth: tuple[float, ...]  # per-slice depth factor (cycled)
    gene_effect: float  # sd of the log gene effects of a slice
    own_share: float = 0.6  # w: the weight of each domain's own composition against the shared one
    alpha: float = 0.5  # Dirichlet concentration of the domains' own compositions
    window: float = 0.6  # side of a slice's window, as a fraction of the tissue's side


@lru_cache(maxsize=1)
def xenium_cells():
    """The Xenium reference: integer counts (CSR, cells x genes), gene names and a cell type per cell."""
    import scanpy as sc
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    path = SHARED_DATA / "xenium" / "xenium_small" / "cell_feature_matrix.h5"
    table = sc.read_10x_h5(path)
    counts = sparse.csr_matrix(table.X, dtype=np.float64)
    depth = np.asarray(counts.sum(axis=1)).ravel()
    keep = depth >= 20
    counts, depth = counts[keep], depth[keep]
    lognorm = counts.multiply(1.0 / depth[:, None]).tocsr() * np.median(depth)
    lognorm.data = np.log1p(lognorm.data)
    pcs = PCA(30, random_state=0).fit_transform(lognorm.toarray())
    types = KMeans(N_TYPES, n_init=4, random_state=0).fit_predict(pcs)
    return counts, np.asarray(table.var_names.astype(str)), types


def layered_domains(n_domains: int, rng):
    """Wavy layers: bands of Dirichlet(4) widths across the tissue, along an axis bent by a random sine."""
    angle = rng.uniform(0, np.pi)
    axis = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-axis[1], axis[0]])
    amplitude, period, phase = rng.uniform(0.03, 0.08), rng.uniform(0.5, 1.2), rng.uniform(0, 2 * np.pi)
    edges = np.cumsum(rng.dirichlet(np.full(n_domains, 4.0)))[:-1]

    def domains_at(points: np.ndarray) -> np.ndarray:
        along = (points - 0.5) @ normal
        depth = (points - 0.5) @ axis + 0.5 + amplitude * np.sin(2 * np.pi * along / period + phase)
        return np.searchsorted(edges, depth)

    return domains_at


def mix(design: Mixing, seed: int, reference=None):
    """A multi-slice table of pooled cells by ``design``: counts in ``X``, ``obs["slice"]``, ``obs["domain"]``
    ("M0", "M1", ...), ``obsm["spatial"]`` and ``obsm["true_proportions"]`` (each spot's share of its cells by
    type, one-hot for single cells).

    ``reference``: ``(counts, gene names, cell types 0..T-1)``, by default :func:`xenium_cells`.
    """
    rng = np.random.default_rng(seed)
    counts, genes, types = reference if reference is not None else xenium_cells()
    counts = sparse.csr_matrix(counts)
    n_types = int(types.max()) + 1
    pools = [np.flatnonzero(types == t) for t in range(n_types)]
    shared = rng.dirichlet(np.ones(n_types))
    own = rng.dirichlet(np.full(n_types, design.alpha), size=design.n_domains)
    composition = (1 - design.own_share) * shared + design.own_share * own
    if design.geometry == "layers":
        domains_at = layered_domains(design.n_domains, rng)
    elif design.geometry == "fields":
        domains_at = random_field_domains(design.n_domains, 0.18, 0.04, rng)
    else:
        raise ValueError(f"geometry must be 'layers' or 'fields', not {design.geometry!r}.")
    names = np.array([f"M{k}" for k in range(design.n_domains)])
    layout = "cells" if design.cells_per_spot <= 1 else "hex"
    parts = []
    for s in range(design.n_slices):
        local, to_tissue = slice_window(design.n_spots, layout, design.window, rng)
        n = len(local)
        per_spot = 1 + rng.poisson(max(design.cells_per_spot - 1, 0.0), size=n)
        spot_of = np.repeat(np.arange(n), per_spot)
        # cells uniform in a disc around their spot; radius in units of the slice's spacing
        step = 1.0 / np.sqrt(design.n_spots)
        r = design.spot_radius * step * np.sqrt(rng.uniform(size=spot_of.size))
        theta = rng.uniform(0, 2 * np.pi, size=spot_of.size)
        where = local[spot_of] + np.column_stack([r * np.cos(theta), r * np.sin(theta)])
        cell_domain = domains_at(to_tissue(where))
        u = rng.uniform(size=spot_of.size)
        cell_type = (u[:, None] > np.cumsum(composition[cell_domain], axis=1)).sum(axis=1).clip(max=n_types - 1)
        rows = np.array([rng.choice(pools[t]) for t in cell_type])
        pooling = sparse.csr_matrix((np.ones(spot_of.size), (spot_of, np.arange(spot_of.size))), shape=(n, len(rows)))
        pooled = (pooling @ counts[rows]).tocsr()
        drawn = redraw(pooled, design.depth[s % len(design.depth)], design.gene_effect, rng)
        label = names[domains_at(to_tissue(local))]
        coords = local * design.spacing * np.sqrt(design.n_spots)
        part = slice_table(drawn, s, label, genes, coords)
        # the truth for factor recovery: each spot's share of its pooled cells by type
        types_of = sparse.csr_matrix(
            (np.ones(spot_of.size), (np.arange(spot_of.size), cell_type)), (spot_of.size, n_types)
        )
        part.obsm["true_proportions"] = (pooling @ types_of).toarray() / per_spot[:, None]
        parts.append(part)
    return concat_slices(parts)
