"""Spatial factor maps across slices and the top genes of each gene program."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

import numpy as np

from sd_inspire._constants import Key
from sd_inspire._docs import d
from sd_inspire._utils import factor_label, get_slices, get_spatial, get_table, is_spatialdata
from sd_inspire._validate import check_choice
from sd_inspire.pl._base import (
    Colors,
    as_matrix,
    finish,
    make_norm,
    panel_grid,
    require,
    scatter_slices,
    select_factors,
    slice_grid,
    style_map,
)
from sd_inspire.tl.metrics import program_specificity

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import pandas as pd
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


_RANKS = ("specificity", "loading")


#: Axis labels of the gene scores: what is plotted, with its definition.
_RANK_LABELS = {"specificity": "specificity\nB log(B/mean B)", "loading": "loading B"}


@d.dedent
def factors(
    data: AnnData | SpatialData,
    factors: int | Sequence[int] | None = None,
    *,
    key: str = "inspire",
    obsm_key: str | None = None,
    slice_key: str | None = Key.SLICE,
    table_key: str | None = None,
    spatial_key: str = Key.SPATIAL,
    n_genes: int = 0,
    rank: Literal["specificity", "loading"] = "specificity",
    exclude: str | None = None,
    share: Literal["row", "all"] = "row",
    vmax: float | str | None = "p99",
    cmap: str = "viridis",
    panel_size: float = 2.5,
    point_size: float | None = None,
    shapes: bool = False,
    ax: Axes | None = None,
    save: str | Path | None = None,
    dpi: int = 100,
    show: bool | None = None,
) -> Figure | None:
    """Map spatial factors in every slice: one row per factor, one column per slice.

    By default each row (one factor) has its own colour scale, shared by all slices and shown by a colorbar at the
    end of the row, so that slices can be compared factor by factor; ``share="all"`` puts every panel on one scale
    with a single colorbar. Scales start at 0 (at the minimum if values are negative). Columns are titled with the
    slice names, rows are labelled ``factor_k`` (the name of the factor in the SpatialData table
    ``"inspire_factors"``), optionally followed by the factor's top genes.

    Per-spot maps of the same shape, e.g. the standard deviation of the factors in ``obsm["inspire_factors_sd"]``,
    are drawn the same way with ``obsm_key``.

    Parameters
    ----------
    %(data)s
    factors
        Index or indices of the factors to draw, in this order; ``None`` draws all.
    key
        Stem of the keys written by :func:`sd_inspire.tl.integrate` (its ``key_added``): maps from
        ``obsm["{key}_factors"]``, gene names for ``n_genes`` from ``varm["{key}_loadings"]``.
    obsm_key
        Key of :attr:`~anndata.AnnData.obsm` to draw instead of ``"{key}_factors"`` (n_obs x n_factors), e.g.
        ``"inspire_factors_sd"``, written by :func:`sd_inspire.tl.integrate` with ``n_models >= 2``.
    %(slice_key)s ``None`` draws one column.
    %(table_key)s
    spatial_key
        Key of the coordinates in :attr:`~anndata.AnnData.obsm`.
    n_genes
        Number of top genes (by ``rank``) written under each factor's label; ``0`` writes none.
    rank
        How the top genes are chosen: ``"specificity"`` (genes that weigh in the program more than in the others,
        see :func:`~sd_inspire.pl.loadings`) or ``"loading"`` (the largest loadings).
    exclude
        Regular expression of gene names left out of the top genes, e.g. ``"^MT-"`` for mitochondrial genes (see
        :func:`~sd_inspire.pl.loadings`).
    share
        ``"row"``: one colour scale per factor; ``"all"``: one colour scale for the whole figure.
    vmax
        Upper end of each colour scale: a number, ``"pNN"`` for the NN-th percentile of the values on that scale,
        or ``None`` for their maximum.
    cmap
        Colormap.
    panel_size
        Width and height of a panel in inches.
    point_size
        Marker size; by default from the number of spots per slice. Ignored with ``shapes=True``.
    shapes
        For a :class:`~spatialdata.SpatialData`, draw the real spot or cell shapes that the table annotates with
        spatialdata-plot (``render_shapes``) instead of points; slower. Needs the ``spatialdata-plot`` package.
    %(ax)s
    %(save)s

    Returns
    -------
    ``None`` when the figure is shown (see ``show``); else the matplotlib figure. Its first
    ``len(factors) * n_slices`` axes are the maps, row by row; the colorbars follow.

    Raises
    ------
    KeyError
        If the factors (or, for ``n_genes``, the loadings) are missing.
    ValueError
        For factor indices out of range (they are named), an unknown ``rank``, or ``shapes=True`` without a
        SpatialData.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> from anndata import AnnData
    >>> import sd_inspire as si
    >>> obs = pd.DataFrame({"slice": pd.Categorical(["a"] * 9 + ["b"] * 9)}, index=[f"spot{i}" for i in range(18)])
    >>> adata = AnnData(np.zeros((18, 4), dtype=np.float32), obs=obs)
    >>> adata.obsm["spatial"] = np.tile(np.indices((3, 3)).reshape(2, -1).T, (2, 1)).astype(float)
    >>> share = adata.obsm["spatial"][:, 0] / 2
    >>> adata.obsm["inspire_factors"] = np.column_stack([share, 1 - share])
    >>> fig = si.pl.factors(adata, factors=[1, 0], show=False)
    >>> [ax.get_title() for ax in fig.axes[:2]], fig.axes[0].get_ylabel(), fig.axes[2].get_ylabel()
    (['a', 'b'], 'factor_1', 'factor_0')
    """
    import matplotlib.pyplot as plt

    given = ax  # the panels' loops below reuse the name `ax`
    adata = get_table(data, table_key)
    name = obsm_key if obsm_key is not None else f"{key}_factors"
    writer = "tl.integrate(..., uncertainty=True)" if name.endswith("_sd") else "tl.integrate"
    maps = as_matrix(require(adata.obsm, name, "obsm", "factors", writer))
    chosen = select_factors(factors, maps.shape[1], f"`adata.obsm[{name!r}]`")
    check_choice(share, "share", ("row", "all"))
    check_choice(rank, "rank", _RANKS)
    if shapes and not is_spatialdata(data):
        raise ValueError("`shapes=True` draws the shapes of a SpatialData; pass the SpatialData, not its table.")
    slices = get_slices(adata, slice_key)
    coords = get_spatial(adata, spatial_key, slices=slices)
    row_labels = [factor_label(k) for k in chosen]
    if n_genes > 0:
        genes = [
            ", ".join(top_genes(adata, k, n_genes, key=key, func="factors", rank=rank, exclude=exclude)[0])
            for k in chosen
        ]
        row_labels = [f"{label}\n{g}" for label, g in zip(row_labels, genes, strict=True)]

    # what the colour shows: the factors' proportions, or (obsm_key) what that map holds
    what = "proportion" if obsm_key is None else ("standard deviation" if name.endswith("_sd") else name)
    fig, grid = slice_grid(row_labels, slices, slice_key, panel_size, margin=1.0, ax=given, what="factors and slices")
    shared = make_norm(maps[:, chosen], vmax, from_zero=True) if share == "all" else None
    for row, k in zip(grid, chosen, strict=True):
        norm = shared if shared is not None else make_norm(maps[:, k], vmax, from_zero=True)
        if shapes:
            _draw_shapes(row, data, adata, slices, maps[:, k], norm, cmap)
        else:
            scatter_slices(row, slices, coords, Colors(maps[:, k]), norm=norm, cmap=cmap, point_size=point_size)
        if share == "row":
            fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(row), shrink=0.8, label=what)
    if shared is not None:
        fig.colorbar(plt.cm.ScalarMappable(norm=shared, cmap=cmap), ax=list(grid.ravel()), shrink=0.6, label=what)
    return finish(fig, save, dpi, show, given)


def _draw_shapes(
    axes: Sequence[Axes],
    sdata: SpatialData,
    adata: AnnData,
    slices: pd.Series,
    values: np.ndarray,
    norm: Normalize,
    cmap: str,
) -> None:
    """Draw each slice's shapes with spatialdata-plot, coloured by ``values`` on the scale ``norm``."""
    try:
        import spatialdata_plot  # noqa: F401  (registers the `.pl` accessor)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("`shapes=True` needs spatialdata-plot: `pip install spatialdata-plot`.") from err
    from anndata import AnnData
    from spatialdata import SpatialData
    from spatialdata.models import TableModel
    from spatialdata.transformations import get_transformation

    attrs = adata.uns.get(TableModel.ATTRS_KEY)
    if not attrs:
        raise ValueError("`shapes=True`: the table annotates no shapes (no `uns['spatialdata_attrs']`).")
    region_key, instance_key = attrs[TableModel.REGION_KEY_KEY], attrs[TableModel.INSTANCE_KEY]
    for ax, name in zip(axes, slices.cat.categories, strict=False):
        rows = np.flatnonzero((slices == name).to_numpy())
        obs = adata.obs.iloc[rows][[region_key, instance_key]].copy()
        obs[region_key] = obs[region_key].astype(str).astype("category")
        regions = list(obs[region_key].cat.categories)
        table = AnnData(values[rows, None].astype(np.float32), obs=obs)
        table.var_names = ["value"]
        table = TableModel.parse(table, region=regions, region_key=region_key, instance_key=instance_key)
        # a view of this slice only: its shapes and a one-column table, so the colour is exactly `values`
        view = SpatialData(shapes={r: sdata.shapes[r] for r in regions}, tables={"values": table})
        systems = set.intersection(*(set(get_transformation(view.shapes[r], get_all=True)) for r in regions))
        system = str(name) if str(name) in systems else sorted(systems)[0]
        plot = view
        for region in regions:
            plot = plot.pl.render_shapes(region, color="value", table_name="values", norm=norm, cmap=cmap)
        labels = ax.get_title(), ax.get_ylabel()
        plot.pl.show(coordinate_systems=system, ax=ax, colorbar=False, title=labels[0])
        ax.set_xlabel("")
        ax.set_ylabel(labels[1])
        style_map(ax)


def top_genes(
    adata: AnnData,
    k: int,
    n_top: int,
    *,
    key: str,
    func: str,
    rank: str = "specificity",
    gene_symbols: str | None = None,
    exclude: str | None = None,
) -> tuple[list[str], np.ndarray]:
    """Names and scores of the ``n_top`` best genes of factor ``k`` by ``rank`` (model genes only).

    Genes whose name (``gene_symbols`` or ``var_names``) matches the regular expression ``exclude`` are left out.

    ``"loading"``: the loadings ``B_kg``. ``"specificity"``: ``B_kg log(B_kg / mean_k' B_k'g)``, the gene's term in
    the Kullback-Leibler divergence of program ``k`` from the mean of all programs: large for genes that weigh in the
    program *and* weigh more there than in the others, not for genes every program shares (highly expressed ones).
    ``rank`` is checked by the public callers.
    """
    loadings = as_matrix(require(adata.varm, f"{key}_loadings", "varm", func, "tl.integrate"))
    column = program_specificity(loadings)[:, k] if rank == "specificity" else loadings[:, k]
    in_model = f"{key}_gene"
    candidates = np.flatnonzero(adata.var[in_model].to_numpy(bool)) if in_model in adata.var else np.arange(len(column))
    names = adata.var[gene_symbols] if gene_symbols is not None else adata.var_names
    if exclude is not None:
        pattern = re.compile(exclude)
        left_out = np.array([pattern.search(str(name)) is not None for name in names], dtype=bool)
        candidates = candidates[~left_out[candidates]]
    order = candidates[np.argsort(-column[candidates], kind="stable")][:n_top]
    return [str(g) for g in np.asarray(names)[order]], column[order]


@d.dedent
def loadings(
    data: AnnData | SpatialData,
    factors: int | Sequence[int] | None = None,
    *,
    key: str = "inspire",
    n_top: int = 10,
    rank: Literal["specificity", "loading"] = "specificity",
    exclude: str | None = None,
    table_key: str | None = None,
    gene_symbols: str | None = None,
    ncols: int = 4,
    panel_size: float = 2.5,
    color: str = "C0",
    ax: Axes | None = None,
    save: str | Path | None = None,
    dpi: int = 100,
    show: bool | None = None,
) -> Figure | None:
    """Top genes of each gene program: one horizontal bar chart per factor.

    Each program ``B_k`` (a column of ``varm["{key}_loadings"]``) is a distribution over genes. Genes expressed
    everywhere weigh in every program, so the largest loadings of different programs are often the same genes. By
    default (``rank="specificity"``) bars show each gene's specificity to the program,
    ``B_kg log(B_kg / mean_k' B_k'g)`` (its term in the Kullback-Leibler divergence of the program from the mean of
    all programs): large for genes that weigh in the program and more there than in the others. ``rank="loading"``
    shows the largest loadings ``B_kg``. The best gene is at the top. Genes outside the model's gene space
    (``var["{key}_gene"] == False``) are left out. A factor whose program and usage nearly duplicate another's
    (``uns[key]["redundant_factors"]``, see :func:`sd_inspire.tl.metrics.redundant_factors`) says so under its title
    (``≈ factor_j``): read the two together.

    Parameters
    ----------
    %(data)s
    factors
        Index or indices of the factors to draw, in this order; ``None`` draws all.
    key
        Stem of the keys written by :func:`sd_inspire.tl.integrate` (its ``key_added``).
    n_top
        Number of genes per factor.
    rank
        ``"specificity"`` or ``"loading"``, see above; the x axis says which, with its definition.
    exclude
        Regular expression of gene names left out (matched against ``gene_symbols`` when given), e.g.
        ``"^MT-"`` for mitochondrial genes, ``"^RP[SL][0-9]"`` for ribosomal protein genes, or
        ``"^(GAPDH|ACTB|MALAT1)$"`` for some housekeeping genes.
    %(table_key)s
    gene_symbols
        Column of :attr:`~anndata.AnnData.var` with the gene names to show instead of ``var_names``.
    ncols
        Panels per row.
    panel_size
        Width of a panel in inches; the height grows with ``n_top``.
    color
        Colour of the bars.
    %(ax)s
    %(save)s

    Returns
    -------
    ``None`` when the figure is shown (see ``show``); else the matplotlib figure, one axis per factor titled
    ``factor_k`` (and ``≈ factor_j`` for near-duplicates).

    Raises
    ------
    KeyError
        If ``varm["{key}_loadings"]`` or the ``gene_symbols`` column is missing.
    ValueError
        For factor indices out of range (they are named), ``n_top < 1`` or an unknown ``rank``.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> from anndata import AnnData
    >>> import sd_inspire as si
    >>> adata = AnnData(np.zeros((2, 4), dtype=np.float32), var=pd.DataFrame(index=["A", "B", "C", "D"]))
    >>> adata.varm["inspire_loadings"] = np.array([[0.1, 0.4], [0.5, 0.1], [0.3, 0.2], [0.1, 0.3]])
    >>> fig = si.pl.loadings(adata, n_top=2, show=False)
    >>> [t.get_text() for t in fig.axes[1].get_yticklabels()]
    ['A', 'D']
    """
    from matplotlib.ticker import MaxNLocator

    given = ax  # the panels' loops below reuse the name `ax`
    adata = get_table(data, table_key)
    values = as_matrix(require(adata.varm, f"{key}_loadings", "varm", "loadings", "tl.integrate"))
    chosen = select_factors(factors, values.shape[1], f"`adata.varm[{key + '_loadings'!r}]`")
    if n_top < 1:
        raise ValueError(f"`n_top` must be at least 1, got {n_top}.")
    check_choice(rank, "rank", _RANKS)
    if gene_symbols is not None and gene_symbols not in adata.var:
        raise KeyError(f"No column {gene_symbols!r} in `adata.var` for `gene_symbols`.")
    tops = [
        top_genes(adata, k, n_top, key=key, func="loadings", rank=rank, gene_symbols=gene_symbols, exclude=exclude)
        for k in chosen
    ]
    twins = _redundant(adata, key)
    n_rows = max(len(names) for names, _ in tops)
    fig, axes = panel_grid(
        len(chosen), ncols, (panel_size, 0.6 + 0.2 * n_rows), ax=given, what="factors", layout="constrained"
    )
    for ax, k, (names, weights) in zip(axes, chosen, tops, strict=True):
        y = np.arange(len(names))
        ax.barh(y, weights, color=color)
        ax.set_yticks(y, labels=names)
        ax.set_ylim(n_rows - 0.5, -0.5)  # largest at the top; equal bar heights in every panel
        title = factor_label(k)
        if twins.get(title):
            title += "\n≈ " + ", ".join(twins[title])  # a near-duplicate of these
        ax.set_title(title)
        ax.set_xlabel(_RANK_LABELS[rank])
        ax.xaxis.set_major_locator(MaxNLocator(3))  # long tick labels of small scores would overlap
    return finish(fig, save, dpi, show, given)


def _redundant(adata: AnnData, key: str) -> dict[str, list[str]]:
    """Factor name -> the factors it is a near-duplicate of (``uns[key]["redundant_factors"]``; empty if absent)."""
    table = (adata.uns.get(key) or {}).get("redundant_factors")
    twins: dict[str, list[str]] = {}
    if table is None or len(table) == 0:
        return twins
    for a, b in zip(table["factor"], table["similar_to"], strict=True):
        twins.setdefault(str(a), []).append(str(b))
        twins.setdefault(str(b), []).append(str(a))
    return twins
