"""Spatial scatter plots of all slices side by side with shared colours."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from sd_inspire._constants import Key
from sd_inspire._docs import d
from sd_inspire._utils import get_slices, get_spatial, get_table

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData
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
    save: str | Path | None = None,
    dpi: int = 100,
) -> Figure:
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
    save
        Write the figure to this path (format from the suffix).
    dpi
        Resolution when saving.

    Returns
    -------
    The matplotlib figure.

    Examples
    --------
    >>> import sd_inspire as si
    >>> sdata = si.datasets.simulate(2, n_spots=300)
    >>> fig = si.pl.spatial(sdata, color="domain")
    >>> len(fig.axes)
    2
    """
    import matplotlib.pyplot as plt

    adata = get_table(data, table_key)
    slices = get_slices(adata, slice_key)
    coords = get_spatial(adata, spatial_key, slices=slices)
    values, categorical = _color_values(adata, color, layer)
    names = list(slices.cat.categories)
    ncols = max(1, min(ncols, len(names)))
    nrows = int(np.ceil(len(names) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows), squeeze=False)
    norm = None
    if values is not None and not categorical:
        top = _resolve_vmax(values, vmax)
        norm = plt.Normalize(vmin=float(np.nanmin(values)), vmax=top)
    palette = _palette(values) if categorical else None
    for ax, name in zip(axes.ravel(), names, strict=False):
        rows = (slices == name).to_numpy()
        size = point_size if point_size is not None else max(0.5, min(30.0, 8000.0 / max(rows.sum(), 1)))
        xy = coords[rows]
        if values is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=size, c="0.6", linewidths=0)
        elif categorical:
            ax.scatter(xy[:, 0], xy[:, 1], s=size, c=[palette[v] for v in values[rows]], linewidths=0)
        else:
            sc = ax.scatter(xy[:, 0], xy[:, 1], s=size, c=values[rows], cmap=cmap, norm=norm, linewidths=0)
        ax.set_title(str(name))
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[len(names) :]:
        ax.remove()
    if categorical:
        handles = [
            plt.Line2D([], [], marker="o", ls="", color=c, label=str(k)) for k, c in palette.items() if k is not None
        ]
        fig.legend(handles=handles, title=color, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    elif values is not None:
        fig.colorbar(sc, ax=list(axes.ravel()[: len(names)]), shrink=0.7, label=color)
    if save is not None:
        fig.savefig(save, dpi=dpi, bbox_inches="tight")
    return fig


def _color_values(adata: AnnData, color: str | None, layer: str | None) -> tuple[np.ndarray | None, bool]:
    if color is None:
        return None, False
    if color in adata.obs:
        col = adata.obs[color]
        if isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object or col.dtype == bool:
            return col.astype(str).to_numpy(dtype=object), True
        return col.to_numpy(dtype=float), False
    if color in adata.var_names:
        x = adata.layers[layer] if layer is not None else adata.X
        j = adata.var_names.get_loc(color)
        v = x[:, j]
        return (v.toarray() if sparse.issparse(v) else np.asarray(v)).ravel().astype(float), False
    raise KeyError(f"{color!r} is neither a column of `adata.obs` nor a gene in `adata.var_names`.")


def _resolve_vmax(values: np.ndarray, vmax: float | str | None) -> float:
    if vmax is None:
        return float(np.nanmax(values))
    if isinstance(vmax, str):
        if not vmax.startswith("p"):
            raise ValueError(f"`vmax` must be a number, 'pNN' or None, got {vmax!r}.")
        return float(np.nanpercentile(values, float(vmax[1:])))
    return float(vmax)


def _palette(values: np.ndarray) -> dict[str, tuple[float, ...]]:
    import matplotlib as mpl

    cats = sorted(pd.unique(values), key=str)
    missing = [c for c in cats if c in _MISSING]
    cats = [c for c in cats if c not in _MISSING]
    cmap = mpl.colormaps["tab10" if len(cats) <= 10 else "tab20"]
    palette = {c: cmap(i % cmap.N) for i, c in enumerate(cats)}
    palette.update(dict.fromkeys(missing, (0.85, 0.85, 0.85, 1.0)))  # unannotated spots in light grey, listed last
    return palette


_MISSING = {"nan", "NaN", "None", "<NA>"}
