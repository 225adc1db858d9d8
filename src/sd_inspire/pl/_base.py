"""Plotting helpers shared by the functions of :mod:`sd_inspire.pl`: colours, scales, map panels, errors, saving."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from sd_inspire._utils import category_colors
from sd_inspire._validate import is_integer

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.collections import PathCollection
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

#: Labels of unannotated spots: drawn in light grey and listed last in legends.
MISSING = frozenset({"nan", "NaN", "None", "<NA>"})
MISSING_COLOR = (0.85, 0.85, 0.85, 1.0)
NO_COLOR = "0.6"  # spots drawn without a colour key


@dataclass(frozen=True)
class Colors:
    """Values to colour spots by: floats, or labels (strings) with their categories in legend order."""

    values: np.ndarray | None
    categories: list[str] | None = None

    @property
    def categorical(self) -> bool:
        """Whether the values are labels."""
        return self.categories is not None


def labels(column: pd.Series) -> Colors:
    """A column as labels; categories in the column's own order (else sorted by value), missing ones last."""
    values = column.astype(str).to_numpy(dtype=object)
    if isinstance(column.dtype, pd.CategoricalDtype):
        seen = set(values)
        cats = [str(c) for c in column.cat.categories if str(c) in seen]
    else:
        unique = column.dropna().unique()
        try:
            cats = [str(v) for v in sorted(unique)]  # numbers in numeric order
        except TypeError:  # mixed types
            cats = sorted({str(v) for v in unique})
    cats = [c for c in dict.fromkeys(cats) if c not in MISSING]
    return Colors(values, cats + sorted(set(values) & MISSING))


def color_values(adata: AnnData, color: str | None, layer: str | None = None) -> Colors:
    """The values of ``obs[color]`` or of gene ``color`` (from ``X`` or ``layers[layer]``).

    Raises
    ------
    KeyError
        If ``color`` is neither a column of ``obs`` nor a gene.
    """
    if color is None:
        return Colors(None)
    if color in adata.obs:
        col = adata.obs[color]
        if isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object or col.dtype == bool:
            return labels(col)
        return Colors(col.to_numpy(dtype=float))
    if color in adata.var_names:
        x = adata.layers[layer] if layer is not None else adata.X
        v = x[:, adata.var_names.get_loc(color)]
        return Colors((v.toarray() if sparse.issparse(v) else np.asarray(v)).ravel().astype(float))
    raise KeyError(f"{color!r} is neither a column of `adata.obs` nor a gene in `adata.var_names`.")


def resolve_vmax(values: np.ndarray, vmax: float | str | None) -> float:
    """Upper end of a colour scale: a number, ``"pNN"`` (NN-th percentile of ``values``) or ``None`` (maximum)."""
    if vmax is None:
        return float(np.nanmax(values))
    if isinstance(vmax, str):
        if not vmax.startswith("p"):
            raise ValueError(f"`vmax` must be a number, 'pNN' or None, got {vmax!r}.")
        return float(np.nanpercentile(values, float(vmax[1:])))
    return float(vmax)


def make_norm(values: np.ndarray, vmax: float | str | None, *, from_zero: bool = False) -> Normalize:
    """A colour scale over ``values``; ``from_zero`` starts it at 0 unless values are negative."""
    import matplotlib.pyplot as plt

    low = float(np.nanmin(values))
    if from_zero:
        low = min(low, 0.0)
    return plt.Normalize(vmin=low, vmax=resolve_vmax(values, vmax))


def palette(
    categories: Sequence[str], adata: AnnData | None = None, key: str | None = None
) -> dict[str, tuple[float, ...]]:
    """One colour per category; unannotated labels in light grey.

    With ``adata`` and ``key``, the colours stored in ``adata.uns[f"{key}_colors"]`` (scanpy's convention: one
    colour per category of ``obs[key]``, in their order; written by :func:`sd_inspire.tl.domains`, scanpy and
    squidpy) are used, so every figure of a labelling has the same colours.
    """
    named = [c for c in categories if c not in MISSING]
    pal = dict(zip(named, category_colors(len(named)), strict=True))
    pal.update(stored_colors(adata, key) if adata is not None and key is not None else {})
    pal = {c: pal[c] for c in named}
    pal.update({c: MISSING_COLOR for c in categories if c in MISSING})
    return pal


def stored_colors(adata: AnnData, key: str) -> dict[str, tuple[float, ...]]:
    """Category -> colour from ``uns[f"{key}_colors"]``; empty unless it has a valid colour for every category."""
    from matplotlib.colors import to_rgba

    column = adata.obs.get(key)
    colors = adata.uns.get(f"{key}_colors")
    if column is None or colors is None or not isinstance(column.dtype, pd.CategoricalDtype):
        return {}
    categories = [str(c) for c in column.cat.categories]
    if len(colors) < len(categories):
        return {}
    try:
        return {c: to_rgba(color) for c, color in zip(categories, colors, strict=False)}
    except ValueError:
        return {}


def spot_size(n_spots: int, point_size: float | None) -> float:
    """Marker size: ``point_size``, or one that fills a panel for ``n_spots`` spots."""
    if point_size is not None:
        return point_size
    return max(0.5, min(30.0, 8000.0 / max(n_spots, 1)))


def style_map(ax: Axes) -> None:
    """Equal aspect, image orientation (y down) and no ticks."""
    ax.set_aspect("equal")
    if not ax.yaxis_inverted():
        ax.invert_yaxis()
    ax.set_xticks([])
    ax.set_yticks([])


def scatter_slices(
    axes: Iterable[Axes],
    slices: pd.Series,
    coords: np.ndarray,
    colors: Colors,
    *,
    pal: Mapping[str, Any] | None = None,
    norm: Normalize | None = None,
    cmap: str = "viridis",
    point_size: float | None = None,
) -> list[PathCollection]:
    """Draw slice ``k`` of ``slices`` (in category order) into the ``k``-th axis, as a map; return the scatters.

    Labels take their colours from ``pal`` (by default one colour per category), numbers from ``cmap`` and ``norm``.
    """
    drawn = []
    colours = pal if pal is not None else palette(colors.categories or [])
    for ax, name in zip(axes, slices.cat.categories, strict=False):
        rows = (slices == name).to_numpy()
        xy = coords[rows]
        size = spot_size(int(rows.sum()), point_size)
        style = point_style(colors, rows, colours, norm, cmap)
        drawn.append(ax.scatter(xy[:, 0], xy[:, 1], s=size, linewidths=0, **style))
        style_map(ax)
    return drawn


def point_style(
    colors: Colors, rows: np.ndarray, pal: Mapping[str, Any], norm: Normalize | None, cmap: str
) -> dict[str, Any]:
    """Colour arguments of ``scatter`` for the spots ``rows``: labels through ``pal``, numbers on ``norm``."""
    if colors.values is None:
        return {"c": NO_COLOR}
    if colors.categorical:
        return {"c": [pal[v] for v in colors.values[rows]]}
    return {"c": colors.values[rows], "cmap": cmap, "norm": norm}


def legend_handles(pal: Mapping[str, Any]) -> list[Any]:
    """Legend entries (round markers) for a palette."""
    import matplotlib.pyplot as plt

    return [plt.Line2D([], [], marker="o", ls="", color=c, label=str(k)) for k, c in pal.items()]


def panel_grid(
    n_panels: int, ncols: int, size: tuple[float, float], ax: Axes | None = None, what: str = "panels", **kwargs: Any
) -> tuple[Figure, list[Axes]]:
    """A figure with ``n_panels`` axes, ``ncols`` per row (fewer if fewer panels); unused cells removed.

    With ``ax``, the one panel is drawn there (see :func:`given_axis`).
    """
    import matplotlib.pyplot as plt

    if ax is not None:
        return given_axis(ax, n_panels, what), [ax]
    ncols = max(1, min(ncols, n_panels))
    nrows = int(np.ceil(n_panels / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, **kwargs)
    flat = list(axes.ravel())
    for extra in flat[n_panels:]:
        extra.remove()
    return fig, flat[:n_panels]


def given_axis(ax: Axes, n_panels: int, what: str) -> Figure:
    """The figure of ``ax``, where a plot of exactly one panel goes.

    Raises
    ------
    ValueError
        If the plot has more than one panel (``what`` says what to choose to get one).
    """
    if n_panels != 1:
        raise ValueError(f"`ax` takes a plot of one panel; this one has {n_panels}: choose one of the {what}.")
    return ax.figure


def slice_grid(
    row_labels: Sequence[str],
    slices: pd.Series,
    slice_key: str | None,
    panel_size: float,
    margin: float,
    ax: Axes | None = None,
    what: str = "slices",
) -> tuple[Figure, np.ndarray]:
    """A figure with one row per label and one column per slice.

    Rows are labelled on the y axis of their first panel, columns titled with the slice names (unless
    ``slice_key`` is ``None``); ``margin`` inches are added to the width for legends or colorbars. With ``ax``, the
    one panel (one row, one slice) is drawn there.
    """
    import matplotlib.pyplot as plt

    names = list(slices.cat.categories)
    if ax is not None:
        fig = given_axis(ax, len(row_labels) * len(names), what)
        grid = np.array([[ax]], dtype=object)
    else:
        fig, grid = plt.subplots(
            len(row_labels),
            len(names),
            figsize=(panel_size * len(names) + margin, panel_size * len(row_labels)),
            squeeze=False,
            layout="constrained",
        )
    for row, label in zip(grid, row_labels, strict=True):
        row[0].set_ylabel(label)
    if slice_key is not None:
        for panel, name in zip(grid[0], names, strict=True):
            panel.set_title(str(name))
    return fig, grid


def finish(
    fig: Figure, save: str | Path | None, dpi: int, show: bool | None = False, ax: Axes | None = None
) -> Figure | None:
    """Save the figure if asked (format from the suffix); show it and return ``None``, or return it (``show``).

    ``show=None`` follows ``settings.autoshow``, except into a given ``ax``: the user's figure is being composed, so
    it is returned, not shown. A shown figure is closed, so that Jupyter displays it once.
    """
    import matplotlib.pyplot as plt

    from sd_inspire._settings import settings

    if save is not None:
        fig.savefig(save, dpi=dpi, bbox_inches="tight")
    if (settings.autoshow and ax is None) if show is None else show:
        plt.show()
        plt.close(fig)
        return None
    return fig


def require(container: Any, key: str, where: str, func: str, writer: str) -> Any:
    """``container[key]``, or a KeyError naming what is missing, the plot that needs it and the function writing it."""
    if key not in container:
        raise KeyError(
            f"`sd_inspire.pl.{func}` needs `adata.{where}[{key!r}]`, which is missing: run `sd_inspire.{writer}` "
            "first, or pass the key it was written under."
        )
    return container[key]


def as_matrix(values: Any) -> np.ndarray:
    """A float64 2D array from an ``obsm``/``varm`` entry (array, sparse matrix or DataFrame)."""
    if isinstance(values, pd.DataFrame):
        values = values.to_numpy()
    if sparse.issparse(values):
        values = values.toarray()
    return np.asarray(values, dtype=np.float64)


def select_factors(factors: int | Sequence[int] | None, n_factors: int, source: str) -> list[int]:
    """Indices of the factors to plot (all if ``None``).

    Raises
    ------
    TypeError
        If an index is not an integer.
    ValueError
        If no factor is selected or indices lie outside ``0..n_factors-1`` (they are named).
    """
    if factors is None:
        return list(range(n_factors))
    chosen = [factors] if isinstance(factors, int | np.integer) else list(factors)
    wrong = [f for f in chosen if not is_integer(f)]
    if wrong:
        raise TypeError(f"Factors are given by their integer index, got {wrong}.")
    if not chosen:
        raise ValueError("No factor selected: pass factor indices or `factors=None` for all.")
    outside = [int(f) for f in chosen if not 0 <= f < n_factors]
    if outside:
        raise ValueError(
            f"Factors {outside} out of range: {source} has {n_factors} factors (indices 0 to {n_factors - 1})."
        )
    return [int(f) for f in chosen]
