"""3D view of aligned slices stacked at their heights."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sd_inspire._constants import Key
from sd_inspire._docs import d
from sd_inspire._utils import get_slices, get_spatial, get_table
from sd_inspire.pl._base import (
    color_values,
    finish,
    labels,
    legend_handles,
    make_norm,
    palette,
    point_style,
    require,
    spot_size,
)

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


@d.dedent
def alignment(
    data: AnnData | SpatialData,
    *,
    key: str = "spatial_aligned",
    color: str | None = None,
    slice_key: str | None = Key.SLICE,
    table_key: str | None = None,
    layer: str | None = None,
    elev: float = 20.0,
    azim: float = -60.0,
    cmap: str = "viridis",
    vmax: float | str | None = "p99",
    point_size: float | None = None,
    figsize: tuple[float, float] = (6.0, 5.0),
    ax: Axes | None = None,
    save: str | Path | None = None,
    dpi: int = 100,
    show: bool | None = None,
) -> Figure | None:
    """Show the aligned slices in 3D, each at its height, coloured by an ``obs`` column or a gene.

    Spots are drawn at the x, y, z of ``obsm[key]`` (as written by ``sd_inspire.tl.align``), one scatter per slice.
    The x and y axes keep their proportions (y points down, as in :func:`sd_inspire.pl.spatial`); the height of the
    stack is drawn at half the larger of the x and y extents. When every slice lies at one height, the z ticks
    name the slices.

    Parameters
    ----------
    %(data)s
    key
        Key of :attr:`~anndata.AnnData.obsm` with the aligned coordinates (n_obs x 3: x, y, z).
    color
        Column of ``obs`` or a gene name; ``None`` colours the spots by slice. Colours are shared by all slices.
    %(slice_key)s ``None`` treats the table as one slice.
    %(table_key)s
    layer
        Layer to read gene expression from instead of ``X``.
    elev
        Elevation of the view in degrees.
    azim
        Azimuth of the view in degrees.
    cmap
        Colormap for continuous values.
    vmax
        Upper end of the continuous colour scale: a number, ``"pNN"`` for the NN-th percentile, or ``None`` for the
        maximum.
    point_size
        Marker size; by default from the number of spots per slice.
    figsize
        Size of the figure in inches.
    %(ax)s
    %(save)s

    Returns
    -------
    ``None`` when the figure is shown (see ``show``); else the matplotlib figure; its first axis is the 3D view,
    with one scatter per slice in slice order.

    Raises
    ------
    KeyError
        If ``obsm[key]`` or ``color`` is missing.
    ValueError
        If ``obsm[key]`` has no z column (it must be n_obs x 3) or non-finite coordinates.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> from anndata import AnnData
    >>> import sd_inspire as si
    >>> obs = pd.DataFrame({"slice": pd.Categorical(["a"] * 9 + ["b"] * 9)}, index=[f"spot{i}" for i in range(18)])
    >>> adata = AnnData(np.zeros((18, 2), dtype=np.float32), obs=obs)
    >>> xy = np.tile(np.indices((3, 3)).reshape(2, -1).T, (2, 1)).astype(float)
    >>> adata.obsm["spatial_aligned"] = np.column_stack([xy, np.repeat([0.0, 10.0], 9)])
    >>> fig = si.pl.alignment(adata, elev=30, show=False)
    >>> [t.get_text() for t in fig.axes[0].get_zticklabels()]
    ['a', 'b']
    """
    import matplotlib.pyplot as plt

    adata = get_table(data, table_key)
    require(adata.obsm, key, "obsm", "alignment", "tl.align")
    slices = get_slices(adata, slice_key)
    coords = get_spatial(adata, key, slices=slices)
    if coords.shape[1] != 3:
        raise ValueError(
            f"`adata.obsm[{key!r}]` has {coords.shape[1]} columns; a 3D view needs x, y and z (n_obs x 3), as "
            "written by `sd_inspire.tl.align`."
        )
    title = color
    if color is None:
        colors, title = labels(slices), slice_key or "slice"
    else:
        colors = color_values(adata, color, layer)
    pal = palette(colors.categories, adata, color or slice_key) if colors.categories is not None else None
    norm = make_norm(colors.values, vmax) if pal is None and colors.values is not None else None

    given = ax
    if given is not None:
        if getattr(given, "name", None) != "3d":
            raise ValueError("`ax` must be a 3D axis (`fig.add_subplot(projection='3d')`).")
        fig = given.figure
    else:
        fig = plt.figure(figsize=figsize, layout="constrained")
        ax = fig.add_subplot(projection="3d")
    names = list(slices.cat.categories)
    heights = []
    for name in names:
        rows = (slices == name).to_numpy()
        xyz = coords[rows]
        heights.append(np.unique(xyz[:, 2]))
        style = point_style(colors, rows, pal or {}, norm, cmap)
        size = spot_size(int(rows.sum()), point_size)
        ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], s=size, linewidths=0, depthshade=False, **style)
    extent = np.ptp(coords, axis=0)
    flat = max(float(extent[0]), float(extent[1]), 1e-12)
    ax.set_box_aspect((max(extent[0], 1e-3 * flat), max(extent[1], 1e-3 * flat), 0.5 * flat), zoom=0.85)
    ax.invert_yaxis()  # y down, as in the 2D maps
    if all(h.size == 1 for h in heights) and len({float(h[0]) for h in heights}) == len(names):
        ax.set_zticks([float(h[0]) for h in heights], labels=[str(n) for n in names])
    else:
        ax.set_zlabel("z")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.view_init(elev=elev, azim=azim)
    if pal is not None:
        fig.legend(handles=legend_handles(pal), title=title, loc="outside right center", frameon=False)
    elif norm is not None:
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.6, label=color)
    return finish(fig, save, dpi, show, given)
