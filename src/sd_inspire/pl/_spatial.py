"""Spatial scatter plots of all slices side by side with shared colours."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sd_inspire._constants import Key
from sd_inspire._docs import d
from sd_inspire._utils import get_slices, get_spatial, get_table
from sd_inspire.pl._base import (
    color_values,
    finish,
    legend_handles,
    make_norm,
    palette,
    panel_grid,
    scatter_slices,
)

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


@d.dedent
def spatial(
    data: AnnData | SpatialData,
    color: str | None = None,
    *,
    slice_key: str | None = Key.SLICE,
    table_key: str | None = None,
    spatial_key: str = Key.SPATIAL,
    layer: str | None = None,
    ncols: int = 4,
    panel_size: float = 3.5,
    point_size: float | None = None,
    cmap: str = "viridis",
    vmax: float | str | None = "p99",
    ax: Axes | None = None,
    save: str | Path | None = None,
    dpi: int = 100,
    show: bool | None = None,
) -> Figure | None:
    """Plot every slice in its own panel, coloured by an ``obs`` column or a gene, on one colour scale.

    Categories get the same colour in every slice; a continuous colour shares its range across slices.

    Parameters
    ----------
    %(data)s
    color
        Column of ``obs`` or a gene name; ``None`` draws the spots in grey.
    %(slice_key)s ``None`` draws one panel.
    %(table_key)s
    spatial_key
        Key of the coordinates in :attr:`~anndata.AnnData.obsm`.
    layer
        Layer to read gene expression from instead of ``X``.
    ncols
        Panels per row.
    panel_size
        Width and height of a panel in inches.
    point_size
        Marker size; by default from the number of spots per slice.
    cmap
        Colormap for continuous values.
    vmax
        Upper end of the continuous colour scale: a number, ``"pNN"`` for the NN-th percentile over all slices,
        or ``None`` for the maximum.
    %(ax)s
    %(save)s

    Returns
    -------
    ``None`` when the figure is shown (see ``show``); else the matplotlib figure.

    Examples
    --------
    >>> import sd_inspire as si
    >>> sdata = si.datasets.simulate(2, n_spots=300)
    >>> fig = si.pl.spatial(sdata, color="domain", show=False)
    >>> len(fig.axes)
    2
    """
    given = ax  # the panels' loops below reuse the name `ax`
    adata = get_table(data, table_key)
    slices = get_slices(adata, slice_key)
    coords = get_spatial(adata, spatial_key, slices=slices)
    colors = color_values(adata, color, layer)
    n = len(slices.cat.categories)
    fig, axes = panel_grid(n, ncols, (panel_size, panel_size), ax=given, what="slices (subset the table)")
    pal = palette(colors.categories, adata, color) if colors.categories is not None else None
    norm = make_norm(colors.values, vmax) if colors.values is not None and not colors.categorical else None
    drawn = scatter_slices(axes, slices, coords, colors, pal=pal, norm=norm, cmap=cmap, point_size=point_size)
    for ax, name in zip(axes, slices.cat.categories, strict=True):
        ax.set_title(str(name))
    if pal is not None:
        fig.legend(
            handles=legend_handles(pal), title=color, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False
        )
    elif norm is not None:
        fig.colorbar(drawn[-1], ax=axes, shrink=0.7, label=color)
    return finish(fig, save, dpi, show, given)
