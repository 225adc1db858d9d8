"""Simulated multi-slice spatial transcriptomics with known domains, cell types and batch effects."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from sd_inspire._chunks import CHUNK_ROWS
from sd_inspire._constants import Key, Technology
from sd_inspire._convert import anndata_to_spatialdata
from sd_inspire._docs import d
from sd_inspire._logging import timed
from sd_inspire._utils import random_generator
from sd_inspire._validate import check_choice

if TYPE_CHECKING:
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
_GEOMETRIES = ("layers", "islands", "gradient")
_ISLANDS_PER_DOMAIN = 3
_ISLAND_AREA = 0.55  # fraction of the tissue the islands cover together; the background domain takes the rest
_DRIFT = 0.012  # how far (unit square) islands and the gradient's source move from one serial section to the next


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
    geometry: Literal["layers", "islands", "gradient"] = "layers",
    coverage: float | Sequence[float] = 1.0,
    missing_domains: Sequence[Sequence[str] | str] | Mapping[int, Sequence[str] | str] | None = None,
    abundance_change: Mapping[int, Mapping[str, float]] | None = None,
    output: Literal["spatialdata", "anndata", "slices"] = "spatialdata",
    path: str | Path | None = None,
    random_state: int | np.random.Generator | None = 0,
) -> SpatialData | AnnData | dict[str, SpatialData]:
    """Simulate serial sections of one tissue, measured by one or several technologies.

    The tissue has ``n_domains`` spatial domains laid out as ``geometry`` says (layers, islands in a background or
    concentric rings of a gradient), each a mixture of cell types with its own composition, so a spot's
    neighbourhood tells its domain better than its own expression. Each cell type has a marker gene
    program. Every slice samples the tissue with a technology (see :data:`TECHNOLOGY_PRESETS`) that sets the spot
    layout and size in µm, the number of cells per spot, the sequencing depth, the overdispersion and whether only
    a targeted gene panel is measured. Each slice multiplies every gene by its own log-normal batch effect.
    Counts are negative binomial around ``library size x sum_t proportion_t x profile_t x batch effect``.
    Slices may cover only part of the tissue (``coverage``) or lack some domains (``missing_domains``), as partial
    or damaged sections do. Some slices may hold more or fewer cells of some types (``abundance_change``), as samples
    of another condition (disease, treatment) do.

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
        Number of spatial domains, named ``"D0"``, ``"D1"``, ...
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
    geometry
        How the domains are laid out on the unit square of the tissue; each slice's spots span the square (or the
        part of it that ``coverage`` gives). Serial sections see the same layout, drifting slightly from one slice
        to the next.

        - ``"layers"``: horizontal, wavy layers of equal mean thickness, ``"D0"`` at the bottom; domains change
          sharply at the boundaries.
        - ``"islands"``: ``"D0"`` is a background holding roundish islands of the other domains, three of
          different sizes per domain, placed at random once for all slices (together about half of the tissue).
          Domains change sharply at the island borders.
        - ``"gradient"``: concentric, slightly irregular rings of equal area around a source in the lower half of
          the tissue (``"D0"`` innermost), as in a zonated organ. The composition changes continuously with the
          distance from the source: it is the domain's own composition at the middle of its ring and blends
          linearly into the neighbouring ring's towards the boundary, so boundaries are soft; ``obs["domain"]`` is
          the ring the spot centre lies in.
    coverage
        Fraction of the tissue's height each slice covers, in ``(0, 1]``, one number for all slices or one per
        slice. A slice with coverage ``c`` samples the full width and the lower part ``[0, c]`` of the tissue's
        height, with its technology's spot spacing and ``n_spots`` spots (so a wider, flatter slice): a partial
        section holding fewer domains, or other proportions of them, than a full one.
    missing_domains
        Domain names each slice lacks: one list per slice, or a mapping slice index -> list for some slices. The
        spots whose centre lies in those domains are dropped from that slice (a hole or a missing layer), so
        ``n_spots`` is then an upper bound; the spots that remain keep their cells, some of which may come from a
        dropped domain's edge. A slice must keep at least one spot.
    abundance_change
        Mapping slice index -> {cell type: fold change}: in those slices, each domain's share of the cell type is
        multiplied by the fold change (the composition then renormalised), so the cell type is more (or less)
        abundant everywhere, as in samples of another condition. E.g. ``{3: {"CT2": 2.0}, 4: {"CT2": 2.0}}``.
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

    - ``obs["slice"]`` (``"slice0"``, ...), ``obs["technology"]``, ``obs["domain"]`` (domain at the spot centre;
      its categories are all domains, in every slice), ``obs["n_cells"]`` (cells captured by the spot);
    - ``obsm["spatial"]``: spot centres in µm, in each slice's own frame;
    - ``obsm["true_proportions"]``: fraction of the spot's cells of each cell type (rows sum to 1);
    - ``varm["measured"]``: which genes each slice measured (all, but the panel for targeted technologies);
    - ``uns["simulation"]``: the ground truth: ``cell_types``, ``domains``, ``compositions`` (domain x cell type),
      ``profiles`` (cell type x gene, rows sum to 1), ``slice_effects`` (slice x gene multiplicative factors),
      ``marker_genes`` (cell type -> genes) and the parameters (``params``: with ``geometry``, ``coverage`` per
      slice, ``missing_domains`` as slice name -> domains, for the slices that lack some, and
      ``abundance_change`` as slice name -> {cell type: fold change}); ``compositions`` are the tissue's, before any
      ``abundance_change``.

    Examples
    --------
    >>> import sd_inspire as si
    >>> sdata = si.datasets.simulate(3, technology=["visium", "slideseq", "merfish"], n_spots=500)
    >>> sdata["table"].obs["technology"].value_counts().sort_index().tolist()
    [500, 500, 500]

    A tissue of islands; the second section covers the lower half of it only, the third lacks domain ``"D1"``:

    >>> adata = si.datasets.simulate(
    ...     3, n_spots=300, geometry="islands", coverage=[1, 0.5, 1], missing_domains={2: ["D1"]}, output="anndata"
    ... )
    >>> in_slice2 = adata.obs["slice"] == "slice2"
    >>> sorted(adata.obs.loc[in_slice2, "domain"].unique()), int(in_slice2.sum()) < 300
    (['D0', 'D2', 'D3', 'D4'], True)
    """
    rng = random_generator(random_state)
    spots, techs, n_markers = _check_design(n_slices, n_spots, technology, n_genes, n_cell_types, n_domains)
    check_choice(geometry, "geometry", _GEOMETRIES)
    coverages = _coverages(coverage, n_slices)
    missing = _missing_domains(missing_domains, n_slices, [f"D{k}" for k in range(n_domains)])
    changes = _abundance_changes(abundance_change, n_slices, [f"CT{k}" for k in range(n_cell_types)])
    path = _check_output(output, path)
    parts = None if path is None else path.with_name(f".{path.name}.slices")

    with timed(f"Simulating {n_slices} slices, {sum(int(n) for n in spots)} spots x {n_genes} genes"):
        truth = _ground_truth(rng, n_genes, n_cell_types, n_domains, n_markers, n_slices, batch_effect, geometry)
        panel_size, panel = _gene_panel(rng, n_genes, n_markers * n_cell_types, panel_size)
        tables = _simulate_slices(
            rng, spots, techs, truth, panel, depth_scale, parts, coverages=coverages, missing=missing, changes=changes
        )
        params = {
            "n_slices": n_slices,
            "n_genes": n_genes,
            "n_cell_types": n_cell_types,
            "n_domains": n_domains,
            "batch_effect": batch_effect,
            "depth_scale": depth_scale,
            "panel_size": int(panel_size),
            "geometry": geometry,
            "coverage": coverages,
            "missing_domains": {f"slice{s}": m for s, m in enumerate(missing) if m},
            "abundance_change": {f"slice{s}": c for s, c in enumerate(changes) if c},
            "random_state": random_state if isinstance(random_state, int) else None,
        }
        uns = _truth_record(truth, list(tables), techs, params)
        return _deliver(tables, techs, uns, output, path, parts)


def _check_design(
    n_slices: int,
    n_spots: int | Sequence[int],
    technology: str | Sequence[str],
    n_genes: int,
    n_cell_types: int,
    n_domains: int,
) -> tuple[list, list[str], int]:
    """Spots and technology per slice, and the number of marker genes per cell type; errors for impossible sizes."""
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
    return spots, techs, n_markers


def _check_output(output: str, path: str | Path | None) -> Path | None:
    """``path`` as a Path (``None`` stays ``None``) after checking it goes with ``output`` and is a new store."""
    check_choice(output, "output", ("spatialdata", "anndata", "slices"))
    if path is None:
        return None
    path = Path(path)
    if output != "spatialdata":
        raise ValueError(f"`path` needs output='spatialdata', got output={output!r}.")
    if path.exists():
        raise FileExistsError(f"{str(path)!r} already exists; simulate writes a new store.")
    return path


def _gene_panel(
    rng: np.random.Generator, n_genes: int, n_marker_genes: int, panel_size: int | None
) -> tuple[int, np.ndarray]:
    """Size and genes (sorted indices) of the targeted technologies' panel: every marker and random others."""
    panel_size = panel_size if panel_size is not None else max(n_marker_genes, n_genes // 5)
    if not n_marker_genes <= panel_size <= n_genes:
        raise ValueError(f"`panel_size` must be between {n_marker_genes} (all markers) and {n_genes}.")
    others = rng.permutation(np.arange(n_marker_genes, n_genes))[: panel_size - n_marker_genes]
    return panel_size, np.sort(np.concatenate([np.arange(n_marker_genes), others]))


def _simulate_slices(
    rng: np.random.Generator,
    spots: Sequence[int],
    techs: Sequence[str],
    truth: dict,
    panel: np.ndarray,
    depth_scale: float,
    parts: Path | None,
    *,
    coverages: Sequence[float],
    missing: Sequence[Sequence[str]],
    changes: Sequence[Mapping[str, float]],
) -> dict[str, AnnData]:
    """Each slice's table, in order; with ``parts``, each written there as soon as simulated (removed on error)."""
    tables = {}
    try:
        for s in range(len(spots)):
            name = f"slice{s}"
            preset = TECHNOLOGY_PRESETS[techs[s]]
            genes = panel if preset.targeted else np.arange(truth["genes"].size)
            tables[name] = _simulate_slice(
                rng,
                int(spots[s]),
                preset,
                truth,
                s,
                genes,
                depth_scale,
                name,
                Technology(techs[s]),
                coverage=coverages[s],
                missing=missing[s],
                abundance=changes[s],
            )
            if parts is not None:  # to disk now: memory holds one slice
                tables[name] = _spill(tables[name], parts / f"{name}.zarr")
    except BaseException:
        if parts is not None:
            shutil.rmtree(parts, ignore_errors=True)
        raise
    return tables


def _truth_record(truth: dict, names: list[str], techs: list[str], params: dict) -> dict:
    """``uns["simulation"]``: the ground truth, each slice's technology and the parameters."""
    return {
        "cell_types": truth["cell_types"],
        "domains": truth["domains"],
        "compositions": truth["compositions"],
        "profiles": truth["profiles"],
        "slice_effects": truth["slice_effects"],
        "marker_genes": {ct: truth["genes"][truth["markers"][i]].tolist() for i, ct in enumerate(truth["cell_types"])},
        "technology": dict(zip(names, techs, strict=True)),
        "presets": {t: asdict(TECHNOLOGY_PRESETS[t]) for t in sorted(set(techs))},
        "params": params,
    }


def _deliver(
    tables: dict[str, AnnData], techs: list[str], uns: dict, output: str, path: Path | None, parts: Path | None
) -> SpatialData | AnnData | dict[str, SpatialData]:
    """The slices as ``output`` asks, each table holding ``uns["simulation"]``; with ``path``, written there."""
    from sd_inspire.pp import concat

    slices = {
        name: anndata_to_spatialdata(t, name, radius=TECHNOLOGY_PRESETS[tech].radius)
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
    from spatialdata import SpatialData

    from sd_inspire.io import read_zarr, write_zarr

    write_zarr(SpatialData(tables={Key.TABLE: adata}), store)
    return read_zarr(store, out_of_core=True, chunk_size=CHUNK_ROWS).tables[Key.TABLE]


def _per_slice(value, n_slices: int, name: str) -> list:
    if isinstance(value, str) or not isinstance(value, Sequence):
        return [value] * n_slices
    if len(value) != n_slices:
        raise ValueError(f"`{name}` has {len(value)} entries but there are {n_slices} slices.")
    return list(value)


def _coverages(coverage, n_slices: int) -> list[float]:
    """``coverage`` as one float in ``(0, 1]`` per slice."""
    values = [coverage] * n_slices if np.ndim(coverage) == 0 else list(coverage)
    if len(values) != n_slices:
        raise ValueError(f"`coverage` has {len(values)} entries but there are {n_slices} slices.")
    out = []
    for v in values:
        try:
            c = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"`coverage` must hold numbers in (0, 1], got {v!r}.") from None
        if not 0 < c <= 1:  # also rejects NaN
            raise ValueError(f"`coverage` must be in (0, 1] (a fraction of the tissue's height), got {v!r}.")
        out.append(c)
    return out


def _abundance_changes(abundance_change, n_slices: int, cell_types: list[str]) -> list[dict[str, float]]:
    """``abundance_change`` as one dict cell type -> positive, finite fold change per slice."""
    out: list[dict[str, float]] = [{} for _ in range(n_slices)]
    if abundance_change is None:
        return out
    if not isinstance(abundance_change, Mapping):
        raise ValueError(
            f"`abundance_change` must map slice indices to {{cell type: fold change}}, got {abundance_change!r}."
        )
    for key, folds in abundance_change.items():
        if isinstance(key, bool) or not isinstance(key, int | np.integer) or not 0 <= key < n_slices:
            raise ValueError(f"`abundance_change` keys must be slice indices 0..{n_slices - 1}, got {key!r}.")
        if not isinstance(folds, Mapping):
            raise ValueError(f"`abundance_change[{key}]` must map cell types to fold changes, got {folds!r}.")
        for name, fold in folds.items():
            if name not in cell_types:
                raise ValueError(
                    f"`abundance_change[{key}]`: unknown cell type {name!r}; the cell types are {cell_types}."
                )
            try:
                value = float(fold)
            except (TypeError, ValueError):
                raise ValueError(f"`abundance_change[{key}][{name!r}]` must be a number, got {fold!r}.") from None
            if not 0 < value < np.inf:
                raise ValueError(f"`abundance_change[{key}][{name!r}]` must be positive and finite, got {fold!r}.")
            out[int(key)][str(name)] = value
    return out


def _missing_domains(missing_domains, n_slices: int, domains: list[str]) -> list[list[str]]:
    """``missing_domains`` as one list of known domain names per slice."""
    if missing_domains is None:
        return [[] for _ in range(n_slices)]
    if isinstance(missing_domains, Mapping):
        per_slice: list = [[] for _ in range(n_slices)]
        for key, names in missing_domains.items():
            if isinstance(key, bool) or not isinstance(key, int | np.integer) or not 0 <= key < n_slices:
                raise ValueError(f"`missing_domains` keys must be slice indices 0..{n_slices - 1}, got {key!r}.")
            per_slice[int(key)] = names
    elif isinstance(missing_domains, str) or not isinstance(missing_domains, Sequence):
        raise ValueError(
            "`missing_domains` must be one list of domain names per slice or a mapping slice index -> list, "
            f"got {missing_domains!r}."
        )
    elif len(missing_domains) != n_slices:
        raise ValueError(f"`missing_domains` has {len(missing_domains)} entries but there are {n_slices} slices.")
    else:
        per_slice = list(missing_domains)
    out = []
    for s, names in enumerate(per_slice):
        if names is None:
            names = []
        elif isinstance(names, str):
            names = [names]
        elif isinstance(names, Sequence | np.ndarray | set | frozenset):
            names = list(names)
        else:
            raise ValueError(f"`missing_domains` for slice {s} must be a list of domain names, got {names!r}.")
        unknown = [n for n in names if n not in domains]
        if unknown:
            raise ValueError(f"`missing_domains` names unknown domains {unknown} for slice {s}; domains are {domains}.")
        if set(names) == set(domains):
            raise ValueError(f"`missing_domains` removes every domain from slice {s}; a slice must keep some.")
        out.append(sorted(set(names), key=domains.index))
    return out


def _ground_truth(
    rng: np.random.Generator,
    n_genes: int,
    n_types: int,
    n_domains: int,
    n_markers: int,
    n_slices: int,
    batch_effect: float,
    geometry: str = "layers",
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
    # Other geometries draw their layout after everything else, so "layers" draws exactly what it always did.
    if geometry == "islands":
        pattern = _islands(rng, n_domains)
    elif geometry == "gradient":
        pattern = _gradient(rng, n_domains)
    return {
        "cell_types": cell_types,
        "domains": [f"D{k}" for k in range(n_domains)],
        "genes": genes,
        "markers": markers,
        "profiles": profiles,
        "compositions": compositions,
        "slice_effects": effects,
        "pattern": pattern,
        "geometry": geometry,
    }


def _islands(rng: np.random.Generator, n_domains: int) -> dict:
    """Roundish islands of domains 1, 2, ... in the unit square, a few of different sizes per domain."""
    n_islands = _ISLANDS_PER_DOMAIN * (n_domains - 1)
    domain = np.repeat(np.arange(1, n_domains), _ISLANDS_PER_DOMAIN)
    share = rng.uniform(0.4, 1.6, (n_domains - 1, _ISLANDS_PER_DOMAIN))  # islands of different sizes
    area = (_ISLAND_AREA / max(n_domains - 1, 1)) * (share / share.sum(axis=1, keepdims=True)).ravel()
    radius = np.sqrt(area / np.pi)
    # Largest first, each at the best of a few random candidates: clear of the others and of the edges.
    candidates = rng.uniform(0.05, 0.95, (n_islands, 24, 2))
    centre = np.zeros((n_islands, 2))
    placed = np.zeros(n_islands, dtype=bool)
    for i in np.argsort(-radius, kind="stable"):
        cand = candidates[i]
        clearance = np.min(np.minimum(cand, 1 - cand), axis=1) - 0.6 * radius[i]
        if placed.any():
            gap = np.linalg.norm(cand[:, None, :] - centre[None, placed], axis=2) - radius[i] - radius[None, placed]
            clearance = np.minimum(clearance, gap.min(axis=1))
        centre[i] = cand[np.argmax(clearance)]
        placed[i] = True
    return {
        "centre": centre,
        "radius": radius,
        "domain": domain,
        "wobble": rng.uniform(0.05, 0.2, n_islands),  # relative amplitude of the outline's 3-fold ripple
        "wobble_phase": rng.uniform(0, 2 * np.pi, n_islands),
        "drift": _drift(rng, n_islands),
    }


def _gradient(rng: np.random.Generator, n_domains: int) -> dict:
    """A source in the lower half of the unit square and ring radii that cut the square into equal areas."""
    pattern = {
        "centre": np.array([rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.35)]),
        "wobble": 0.06,
        "wobble_phase": rng.uniform(0, 2 * np.pi),
        "drift": _drift(rng, 1)[0],
    }
    grid = (np.arange(128) + 0.5) / 128
    dist = _ring_distance(np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2), pattern, 0)
    pattern["thresholds"] = np.quantile(dist, np.linspace(0, 1, n_domains + 1))
    return pattern


def _drift(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per-slice displacement of ``n`` objects between serial sections."""
    angle = rng.uniform(0, 2 * np.pi, n)
    return _DRIFT * np.column_stack([np.cos(angle), np.sin(angle)])


def _layout(rng: np.random.Generator, n: int, preset: _TechPreset, coverage: float = 1.0) -> np.ndarray:
    """Spot centres in µm; ``coverage`` < 1 flattens the slice to that height-to-width ratio of a full one."""
    if preset.layout == "hex":
        n_cols = int(np.ceil(np.sqrt(n * 2 / (np.sqrt(3) * coverage))))
        idx = np.arange(n)
        row, col = idx // n_cols, idx % n_cols
        x = (col + 0.5 * (row % 2)) * preset.spacing
        y = row * preset.spacing * np.sqrt(3) / 2
    elif preset.layout == "square":
        n_cols = int(np.ceil(np.sqrt(n / coverage)))
        idx = np.arange(n)
        x, y = (idx % n_cols) * preset.spacing, (idx // n_cols) * preset.spacing
    else:
        side = np.sqrt(n / coverage) * preset.spacing
        x, y = rng.uniform(0, side, n), rng.uniform(0, side * coverage, n)
    return np.column_stack([x, y]).astype(np.float64)


def _domain_of(u: np.ndarray, n_domains: int, pattern: dict, phase_shift: float) -> np.ndarray:
    """Domain index of points ``u`` in the unit square: horizontal, wavy layers of equal mean thickness."""
    height = u[:, 1] + pattern["amplitude"] * np.sin(
        2 * np.pi * pattern["frequency"] * u[:, 0] + pattern["phase"] + phase_shift
    )
    return np.clip(np.floor(height * n_domains), 0, n_domains - 1).astype(np.int64)


def _island_of(u: np.ndarray, pattern: dict, s: int) -> np.ndarray:
    """Domain index of points ``u``: that of the island they lie in (the closest, relative to its size), else 0."""
    best = np.full(len(u), np.inf)
    domain = np.zeros(len(u), dtype=np.int64)
    for i, r in enumerate(pattern["radius"]):  # one island at a time: memory stays linear in the points
        d = u - (pattern["centre"][i] + s * pattern["drift"][i])
        ripple = 1 + pattern["wobble"][i] * np.sin(3 * np.arctan2(d[:, 1], d[:, 0]) + pattern["wobble_phase"][i])
        rel = np.hypot(d[:, 0], d[:, 1]) / (r * ripple)
        inside = (rel < 1) & (rel < best)
        best[inside] = rel[inside]
        domain[inside] = pattern["domain"][i]
    return domain


def _ring_distance(u: np.ndarray, pattern: dict, s: int) -> np.ndarray:
    """Distance of points ``u`` from the gradient's source, with a gentle ripple so rings are not perfect circles."""
    d = u - (pattern["centre"] + s * pattern["drift"])
    ripple = 1 + pattern["wobble"] * np.sin(2 * np.arctan2(d[:, 1], d[:, 0]) + pattern["wobble_phase"])
    return np.hypot(d[:, 0], d[:, 1]) * ripple


def _gradient_position(u: np.ndarray, pattern: dict, s: int) -> np.ndarray:
    """Position of points ``u`` along the gradient, in ``[0, n_domains]``: ring ``k`` spans ``[k, k + 1)``."""
    thresholds = pattern["thresholds"]
    return np.interp(_ring_distance(u, pattern, s), thresholds, np.arange(thresholds.size, dtype=np.float64))


def _blended_cumulative(position: np.ndarray, cum: np.ndarray) -> np.ndarray:
    """Cumulative cell type composition along the gradient: pure at ring middles, linear in between."""
    n_domains = cum.shape[0]
    if n_domains == 1:
        return np.broadcast_to(cum[0], (position.size, cum.shape[1]))
    x = np.clip(position - 0.5, 0, n_domains - 1)
    k = np.minimum(np.floor(x).astype(np.int64), n_domains - 2)
    w = (x - k)[:, None]
    return (1 - w) * cum[k] + w * cum[k + 1]


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
    *,
    coverage: float = 1.0,
    missing: Sequence[str] = (),
    abundance: Mapping[str, float] | None = None,
) -> AnnData:
    n_types = len(truth["cell_types"])
    n_domains = len(truth["domains"])
    geometry, pattern = truth["geometry"], truth["pattern"]
    coords = _layout(rng, n, preset, coverage)
    lo = coords.min(axis=0)
    extent = np.maximum(coords.max(axis=0) - lo, preset.spacing)
    phase_shift = 0.15 * s  # serial sections: the layer boundaries drift slowly from slice to slice

    def unit(points: np.ndarray) -> np.ndarray:  # the slice spans [0, 1] x [0, coverage] of the tissue
        u = (points - lo) / extent
        if coverage != 1.0:
            u[:, 1] *= coverage
        return u

    def domain_at(points: np.ndarray) -> np.ndarray:
        if geometry == "islands":
            return _island_of(unit(points), pattern, s)
        if geometry == "gradient":
            return np.minimum(_gradient_position(unit(points), pattern, s).astype(np.int64), n_domains - 1)
        return _domain_of(unit(points), n_domains, pattern, phase_shift)

    domain = domain_at(coords)
    if missing:  # a hole or a missing layer: drop the spots in those domains
        keep = ~np.isin(domain, [truth["domains"].index(m) for m in missing])
        if not keep.any():
            raise ValueError(f"`missing_domains` drops every spot of {name} (all lie in {list(missing)}).")
        coords, domain, n = coords[keep], domain[keep], int(keep.sum())

    # Cells: 1 + Poisson(m - 1) per spot, placed uniformly in the capture disc; each takes a type from the
    # composition of the domain it sits in, so spots on a boundary mix two domains.
    n_cells = 1 + rng.poisson(preset.cells_per_spot - 1.0, n)
    owner = np.repeat(np.arange(n), n_cells)
    r = preset.radius * np.sqrt(rng.uniform(0, 1, owner.size))
    theta = rng.uniform(0, 2 * np.pi, owner.size)
    cell_xy = coords[owner] + np.column_stack([r * np.cos(theta), r * np.sin(theta)])
    compositions = np.asarray(truth["compositions"], dtype=np.float64)
    if abundance:  # another condition: some cell types more (or less) abundant in every domain
        fold = np.array([abundance.get(ct, 1.0) for ct in truth["cell_types"]])
        compositions = compositions * fold
        compositions /= compositions.sum(axis=1, keepdims=True)
    cum = np.cumsum(compositions, axis=1)
    if geometry == "gradient":  # soft boundaries: compositions blend along the gradient
        cell_cum = _blended_cumulative(_gradient_position(unit(cell_xy), pattern, s), cum)
    else:
        cell_cum = cum[domain_at(cell_xy)]
    cell_type = (rng.uniform(0, 1, owner.size)[:, None] > cell_cum).sum(axis=1)
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
            Key.DOMAIN: pd.Categorical.from_codes(domain, categories=truth["domains"]),
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
