"""Simulated multi-slice spatial transcriptomics with known domains, cell types and batch effects."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from sd_inspire._chunks import CHUNK_ROWS
from sd_inspire._constants import Key, Technology
from sd_inspire._docs import d
from sd_inspire._logging import timed
from sd_inspire._utils import random_generator

if TYPE_CHECKING:
    from collections.abc import Mapping

    from spatialdata import SpatialData


@dataclass(frozen=True)
class _TechPreset:
    """How a technology samples the tissue."""

    layout: Literal["hex", "square", "random"]
    spacing: float  # µm between neighbouring spot centres (mean spacing for random layouts)
    radius: float  # µm, radius of the capture area of one spot / bead / cell
    cells_per_spot: float  # mean number of cells captured per spot (>= 1)
    depth: float  # mean UMIs per spot over the measured genes
    dispersion: float  # negative binomial inverse dispersion (theta); larger is closer to Poisson
    targeted: bool  # measures a targeted gene panel rather than the whole transcriptome


#: Sampling characteristics of each simulated technology, loosely after the published platforms.
TECHNOLOGY_PRESETS: Mapping[str, _TechPreset] = {
    Technology.VISIUM: _TechPreset("hex", 100.0, 27.5, 8.0, 3000.0, 6.0, False),
    Technology.STEREOSEQ: _TechPreset("square", 25.0, 12.5, 3.0, 800.0, 3.0, False),
    Technology.SLIDESEQ: _TechPreset("random", 10.0, 5.0, 1.5, 300.0, 2.0, False),
    Technology.MERFISH: _TechPreset("random", 12.0, 5.0, 1.0, 250.0, 30.0, True),
}

_CHUNK_ENTRIES = 2**24  # dense entries per chunk when sampling counts (64 MiB of float32)


@d.dedent
def simulate(
    n_slices: int = 4,
    *,
    n_spots: int | Sequence[int] = 2000,
    n_genes: int = 1000,
    n_cell_types: int = 8,
    n_domains: int = 5,
    technology: str | Sequence[str] = "visium",
    panel_size: int | None = None,
    batch_effect: float = 0.5,
    depth_scale: float = 1.0,
    output: Literal["spatialdata", "anndata", "slices"] = "spatialdata",
    path: str | Path | None = None,
    random_state: int | np.random.Generator | None = 0,
) -> SpatialData | AnnData | dict[str, SpatialData]:
    """Simulate serial sections of one layered tissue, measured by one or several technologies.

    The tissue has ``n_domains`` layered spatial domains, each a mixture of cell types with its own composition, so
    a spot's neighbourhood tells its domain better than its own expression. Each cell type has a marker gene
    program. Every slice samples the tissue with a technology (see :data:`TECHNOLOGY_PRESETS`) that sets the spot
    layout and size in µm, the number of cells per spot, the sequencing depth, the overdispersion and whether only
    a targeted gene panel is measured. Each slice multiplies every gene by its own log-normal batch effect.
    Counts are negative binomial around ``library size x sum_t proportion_t x profile_t x batch effect``.

    Generation works in row chunks and stays linear in the number of spots. With ``path``, each slice is written to
    disk as soon as it is simulated and the combined SpatialData is written to ``path`` chunk by chunk, so memory
    holds one slice at a time: the way to make millions of spots on a laptop.

    Parameters
    ----------
    n_slices
        Number of slices (serial sections).
    n_spots
        Number of spots per slice, one number for all or one per slice.
    n_genes
        Number of genes in the transcriptome. Marker genes are named ``"{cell type}_m{j}"``, the rest
        ``"gene{i}"``.
    n_cell_types
        Number of cell types, named ``"CT0"``, ``"CT1"``, ...
    n_domains
        Number of spatial domains (layers), named ``"D0"``, ``"D1"``, ...
    technology
        Technology of every slice, or one per slice: ``"visium"``, ``"stereoseq"``, ``"slideseq"`` or
        ``"merfish"``.
    panel_size
        Genes measured by targeted technologies (``"merfish"``); every marker gene is in the panel. Defaults to a
        fifth of ``n_genes`` (at least all markers).
    batch_effect
        Standard deviation of the per-slice, per-gene log fold change.
    depth_scale
        Multiplies every technology's sequencing depth.
    output
        ``"spatialdata"``: one SpatialData as from :func:`sd_inspire.pp.concat`; ``"anndata"``: its table only;
        ``"slices"``: a dict slice name -> SpatialData, one per slice, to combine with
        :func:`sd_inspire.pp.concat`.
    path
        Write the SpatialData (``output="spatialdata"`` only) to this new ``.zarr`` store, one slice in memory at
        a time, and return it read back with :func:`sd_inspire.io.read_zarr` (large tables stay on disk). The data
        are the same as without ``path``.
    %(random_state)s

    Returns
    -------
    The simulated data. Every table holds raw counts in ``X`` (sparse CSR, float32) and

    - ``obs["slice"]`` (``"slice0"``, ...), ``obs["technology"]``, ``obs["domain"]`` (domain at the spot centre),
      ``obs["n_cells"]`` (cells captured by the spot);
    - ``obsm["spatial"]``: spot centres in µm, in each slice's own frame;
    - ``obsm["true_proportions"]``: fraction of the spot's cells of each cell type (rows sum to 1);
    - ``varm["measured"]``: which genes each slice measured (all, but the panel for targeted technologies);
    - ``uns["simulation"]``: the ground truth: ``cell_types``, ``domains``, ``compositions`` (domain x cell type),
      ``profiles`` (cell type x gene, rows sum to 1), ``slice_effects`` (slice x gene multiplicative factors),
      ``marker_genes`` (cell type -> genes) and the parameters.

    Examples
    --------
    >>> import sd_inspire as si
    >>> sdata = si.datasets.simulate(3, technology=["visium", "slideseq", "merfish"], n_spots=500)
    >>> sdata["table"].obs["technology"].value_counts().sort_index().tolist()
    [500, 500, 500]
    """
    rng = random_generator(random_state)
    spots = _per_slice(n_spots, n_slices, "n_spots")
    techs = [str(t).lower() for t in _per_slice(technology, n_slices, "technology")]
    for t in techs:
        if t not in TECHNOLOGY_PRESETS:
            raise ValueError(f"Unknown technology {t!r}; choose from {sorted(TECHNOLOGY_PRESETS)}.")
    if any(int(n) < 1 for n in spots):
        raise ValueError(f"`n_spots` must be positive, got {list(spots)}.")
    if n_cell_types < 2 or n_domains < 1:
        raise ValueError(f"Need n_cell_types >= 2 and n_domains >= 1, got {n_cell_types} and {n_domains}.")
    n_markers = max(3, min(20, n_genes // (4 * n_cell_types)))
    if n_genes < n_markers * n_cell_types + 1:
        raise ValueError(f"`n_genes`={n_genes} is too small for {n_cell_types} cell types with marker genes.")
    if output not in ("spatialdata", "anndata", "slices"):
        raise ValueError(f"`output` must be 'spatialdata', 'anndata' or 'slices', got {output!r}.")
    if path is not None:
        path = Path(path)
        if output != "spatialdata":
            raise ValueError(f"`path` needs output='spatialdata', got output={output!r}.")
        if path.exists():
            raise FileExistsError(f"{str(path)!r} already exists; simulate writes a new store.")
    parts = None if path is None else path.with_name(f".{path.name}.slices")

    with timed(f"Simulating {n_slices} slices, {sum(int(n) for n in spots)} spots x {n_genes} genes"):
        truth = _ground_truth(rng, n_genes, n_cell_types, n_domains, n_markers, n_slices, batch_effect)
        n_marker_genes = n_markers * n_cell_types
        panel_size = panel_size if panel_size is not None else max(n_marker_genes, n_genes // 5)
        if not n_marker_genes <= panel_size <= n_genes:
            raise ValueError(f"`panel_size` must be between {n_marker_genes} (all markers) and {n_genes}.")
        others = rng.permutation(np.arange(n_marker_genes, n_genes))[: panel_size - n_marker_genes]
        panel = np.sort(np.concatenate([np.arange(n_marker_genes), others]))

        tables = {}
        for s in range(n_slices):
            name = f"slice{s}"
            preset = TECHNOLOGY_PRESETS[techs[s]]
            genes = panel if preset.targeted else np.arange(n_genes)
            tables[name] = _simulate_slice(
                rng, int(spots[s]), preset, truth, s, genes, depth_scale, name, Technology(techs[s])
            )
            if parts is not None:  # to disk now: memory holds one slice
                tables[name] = _spill(tables[name], parts / f"{name}.zarr")

        uns = {
            "cell_types": truth["cell_types"],
            "domains": truth["domains"],
            "compositions": truth["compositions"],
            "profiles": truth["profiles"],
            "slice_effects": truth["slice_effects"],
            "marker_genes": {
                ct: truth["genes"][truth["markers"][i]].tolist() for i, ct in enumerate(truth["cell_types"])
            },
            "technology": dict(zip(tables, techs, strict=True)),
            "presets": {t: asdict(TECHNOLOGY_PRESETS[t]) for t in sorted(set(techs))},
            "params": {
                "n_slices": n_slices,
                "n_genes": n_genes,
                "n_cell_types": n_cell_types,
                "n_domains": n_domains,
                "batch_effect": batch_effect,
                "depth_scale": depth_scale,
                "panel_size": int(panel_size),
                "random_state": random_state if isinstance(random_state, int) else None,
            },
        }
        from sd_inspire.pp._concat import _anndata_to_spatialdata, concat

        slices = {
            name: _anndata_to_spatialdata(t, name, radius=TECHNOLOGY_PRESETS[tech].radius)
            for (name, t), tech in zip(tables.items(), techs, strict=True)
        }
        if output == "slices":
            for sd in slices.values():
                next(iter(sd.tables.values())).uns[Key.SIMULATION] = uns
            return slices
        sdata = concat(slices)
        table = sdata.tables[Key.TABLE]
        table.uns[Key.SIMULATION] = uns
        if path is not None:
            from sd_inspire.io import read_zarr

            try:
                sdata.write(path)
            finally:
                shutil.rmtree(parts, ignore_errors=True)
            return read_zarr(path)
        return table if output == "anndata" else sdata


def _spill(adata: AnnData, store: Path) -> AnnData:
    """Write one slice's table to ``store`` and return it with its matrices read from there lazily."""
    import zarr
    from anndata.io import write_elem

    from sd_inspire.io._zarr import _read_table_lazily

    write_elem(zarr.open_group(store, mode="w", zarr_format=3), "/", adata)
    return _read_table_lazily(zarr.open_group(store, mode="r"), CHUNK_ROWS)


def _per_slice(value, n_slices: int, name: str) -> list:
    if isinstance(value, str) or not isinstance(value, Sequence):
        return [value] * n_slices
    if len(value) != n_slices:
        raise ValueError(f"`{name}` has {len(value)} entries but there are {n_slices} slices.")
    return list(value)


def _ground_truth(
    rng: np.random.Generator,
    n_genes: int,
    n_types: int,
    n_domains: int,
    n_markers: int,
    n_slices: int,
    batch_effect: float,
) -> dict:
    cell_types = [f"CT{t}" for t in range(n_types)]
    genes = np.array(
        [f"{cell_types[g // n_markers]}_m{g % n_markers}" for g in range(n_markers * n_types)]
        + [f"gene{g}" for g in range(n_markers * n_types, n_genes)],
        dtype=object,
    )
    markers = [np.arange(t * n_markers, (t + 1) * n_markers) for t in range(n_types)]
    # Baseline expression: log-normal gene means, a small per-type perturbation, and marker up-regulation.
    base = rng.normal(0.0, 1.2, n_genes)
    log_prof = base[None, :] + rng.normal(0.0, 0.25, (n_types, n_genes))
    for t, m in enumerate(markers):
        log_prof[t, m] = np.maximum(base[m], 0.5) + rng.uniform(1.5, 3.0, m.size)
    profiles = np.exp(log_prof - log_prof.max(axis=1, keepdims=True))
    profiles /= profiles.sum(axis=1, keepdims=True)

    # Domain compositions: each domain is dominated by two cell types, adjacent domains share one of them.
    alpha = np.full((n_domains, n_types), 0.15)
    for k in range(n_domains):
        alpha[k, k % n_types] += 6.0
        alpha[k, (k + 1) % n_types] += 3.0
    compositions = np.vstack([rng.dirichlet(a) for a in alpha])

    effects = (
        np.exp(rng.normal(0.0, batch_effect, (n_slices, n_genes))) if batch_effect > 0 else np.ones((n_slices, n_genes))
    )
    # The layered pattern: domains are bands of a wavy height field on the unit square.
    pattern = {"amplitude": 0.08, "frequency": rng.uniform(0.8, 1.5), "phase": rng.uniform(0, 2 * np.pi)}
    return {
        "cell_types": cell_types,
        "domains": [f"D{k}" for k in range(n_domains)],
        "genes": genes,
        "markers": markers,
        "profiles": profiles,
        "compositions": compositions,
        "slice_effects": effects,
        "pattern": pattern,
    }


def _layout(rng: np.random.Generator, n: int, preset: _TechPreset) -> np.ndarray:
    """Spot centres in µm."""
    if preset.layout == "hex":
        n_cols = int(np.ceil(np.sqrt(n * 2 / np.sqrt(3))))
        idx = np.arange(n)
        row, col = idx // n_cols, idx % n_cols
        x = (col + 0.5 * (row % 2)) * preset.spacing
        y = row * preset.spacing * np.sqrt(3) / 2
    elif preset.layout == "square":
        n_cols = int(np.ceil(np.sqrt(n)))
        idx = np.arange(n)
        x, y = (idx % n_cols) * preset.spacing, (idx // n_cols) * preset.spacing
    else:
        side = np.sqrt(n) * preset.spacing
        x, y = rng.uniform(0, side, n), rng.uniform(0, side, n)
    return np.column_stack([x, y]).astype(np.float64)


def _domain_of(u: np.ndarray, n_domains: int, pattern: dict, phase_shift: float) -> np.ndarray:
    """Domain index of points ``u`` in the unit square: horizontal, wavy layers of equal mean thickness."""
    height = u[:, 1] + pattern["amplitude"] * np.sin(
        2 * np.pi * pattern["frequency"] * u[:, 0] + pattern["phase"] + phase_shift
    )
    return np.clip(np.floor(height * n_domains), 0, n_domains - 1).astype(np.int64)


def _simulate_slice(
    rng: np.random.Generator,
    n: int,
    preset: _TechPreset,
    truth: dict,
    s: int,
    genes: np.ndarray,
    depth_scale: float,
    name: str,
    technology: Technology,
) -> AnnData:
    n_types = len(truth["cell_types"])
    n_domains = len(truth["domains"])
    coords = _layout(rng, n, preset)
    lo = coords.min(axis=0)
    extent = np.maximum(coords.max(axis=0) - lo, preset.spacing)
    phase_shift = 0.15 * s  # serial sections: the layer boundaries drift slowly from slice to slice

    def domain_at(points: np.ndarray) -> np.ndarray:
        return _domain_of((points - lo) / extent, n_domains, truth["pattern"], phase_shift)

    # Cells: 1 + Poisson(m - 1) per spot, placed uniformly in the capture disc; each takes a type from the
    # composition of the domain it sits in, so spots on a boundary mix two domains.
    n_cells = 1 + rng.poisson(preset.cells_per_spot - 1.0, n)
    owner = np.repeat(np.arange(n), n_cells)
    r = preset.radius * np.sqrt(rng.uniform(0, 1, owner.size))
    theta = rng.uniform(0, 2 * np.pi, owner.size)
    cell_xy = coords[owner] + np.column_stack([r * np.cos(theta), r * np.sin(theta)])
    cum = np.cumsum(truth["compositions"], axis=1)
    cell_type = (rng.uniform(0, 1, owner.size)[:, None] > cum[domain_at(cell_xy)]).sum(axis=1)
    cell_type = np.minimum(cell_type, n_types - 1)
    type_counts = np.bincount(owner * n_types + cell_type, minlength=n * n_types).reshape(n, n_types)
    proportions = (type_counts / n_cells[:, None]).astype(np.float32)

    # Expected counts: library x mixture of profiles x slice effect, restricted to the measured genes.
    expr = truth["profiles"][:, genes] * truth["slice_effects"][s, genes][None, :]
    expr /= expr.sum(axis=1, keepdims=True)
    library = preset.depth * depth_scale * n_cells / preset.cells_per_spot * rng.lognormal(-0.08, 0.4, n)
    theta_nb = np.float32(preset.dispersion)
    chunk = max(1, _CHUNK_ENTRIES // genes.size)
    blocks = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        mean = (proportions[start:stop] @ expr.astype(np.float32)) * library[start:stop, None].astype(np.float32)
        mean *= rng.standard_gamma(theta_nb, size=mean.shape, dtype=np.float32) / theta_nb
        blocks.append(sparse.csr_matrix(rng.poisson(mean).astype(np.float32)))
    counts = sparse.vstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]

    obs = pd.DataFrame(
        {
            Key.TECHNOLOGY: pd.Categorical([technology.value] * n),
            Key.DOMAIN: pd.Categorical.from_codes(domain_at(coords), categories=truth["domains"]),
            "n_cells": n_cells.astype(np.int32),
        },
        index=pd.Index([f"spot{i}" for i in range(n)]),
    )
    return AnnData(
        X=counts,
        obs=obs,
        var=pd.DataFrame(index=pd.Index(truth["genes"][genes].astype(str))),
        obsm={Key.SPATIAL: coords, Key.TRUE_PROPORTIONS: proportions},
    )
