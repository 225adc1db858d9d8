"""``pl.differential_factors``: each sample's factor usage by condition, with the test's adjusted p-values."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sd_inspire._docs import d
from sd_inspire._utils import get_table
from sd_inspire._validate import check_integer
from sd_inspire.pl._base import finish, palette, panel_grid, require, select_factors

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


@d.dedent
def differential_factors(
    data: AnnData | SpatialData,
    factors: int | Sequence[int] | None = None,
    *,
    key: str = "inspire_differential",
    n_top: int = 8,
    table_key: str | None = None,
    ncols: int = 4,
    panel_size: float = 2.2,
    ax: Axes | None = None,
    save: str | Path | None = None,
    dpi: int = 100,
    show: bool | None = None,
) -> Figure | None:
    """Each sample's usage of the most differential factors, by condition, titled with the adjusted p-values.

    One panel per factor: a point per sample (its mean usage, ``uns[key]["usage"]``) in a column per condition, a
    bar at each condition's mean; the title gives the smallest adjusted p-value of the factor's comparisons with
    the reference condition (``*`` below 0.05). Written by :func:`sd_inspire.tl.differential_factors`.

    Parameters
    ----------
    %(data)s
    factors
        Indices of the factors to draw, in this order; ``None``: the ``n_top`` factors with the smallest p-values.
    key
        Key of ``uns`` written by :func:`sd_inspire.tl.differential_factors` (its ``key_added``).
    n_top
        Number of factors drawn when ``factors`` is ``None``.
    %(table_key)s
    ncols
        Panels per row.
    panel_size
        Width and height of a panel in inches.
    %(ax)s
    %(save)s

    Returns
    -------
    ``None`` when the figure is shown (see ``show``); else the matplotlib figure, one axis per factor.

    Raises
    ------
    KeyError
        If ``uns[key]`` is missing.
    ValueError
        If a factor index is out of range or ``n_top < 1``.

    Examples
    --------
    >>> import numpy as np
    >>> import sd_inspire as si
    >>> adata = si.datasets.simulate(6, n_spots=150, n_genes=120, output="anndata")
    >>> adata.obsm["inspire_factors"] = np.random.default_rng(0).dirichlet(np.ones(4), adata.n_obs)
    >>> adata.obs["condition"] = np.where(adata.obs["slice"].isin(["slice0", "slice1", "slice2"]), "control", "case")
    >>> si.tl.differential_factors(adata, condition_key="condition", sample_key="slice", reference="control")
    >>> fig = si.pl.differential_factors(adata, n_top=2, show=False)
    >>> len(fig.axes)
    2
    """
    given = ax  # the panels' loops below reuse the name `ax`
    adata = get_table(data, table_key)
    out = require(adata.uns, key, "uns", "differential_factors", "tl.differential_factors")
    results, usage = out["results"], out["usage"]
    names = [c for c in usage.columns if c != "condition"]
    if factors is None:
        n_top = check_integer(n_top, "n_top", minimum=1)
        chosen = list(dict.fromkeys(results["factor"]))[:n_top]
    else:
        chosen = [names[k] for k in select_factors(factors, len(names), f"`adata.uns[{key!r}]`")]
    conditions = [str(c) for c in usage["condition"].cat.categories]
    colors = palette(conditions)
    best = results.groupby("factor")["pvalue_adj"].min()
    fig, axes = panel_grid(len(chosen), ncols, (panel_size, panel_size), ax=given, what="factors", layout="constrained")
    rng = np.random.default_rng(0)  # jitter only
    for ax, name in zip(axes, chosen, strict=True):
        for x, condition in enumerate(conditions):
            values = usage.loc[usage["condition"] == condition, name].to_numpy(dtype=float)
            ax.scatter(x + rng.uniform(-0.12, 0.12, values.size), values, s=18, color=colors[condition], zorder=3)
            if values.size:
                ax.hlines(values.mean(), x - 0.25, x + 0.25, color="0.2", lw=1.5, zorder=2)
        ax.set_xticks(range(len(conditions)), labels=conditions)
        ax.set_xlim(-0.6, len(conditions) - 0.4)
        p = float(best[name])
        ax.set_title(f"{name}\nadj. p = {p:.2g}" + (" *" if p < 0.05 else ""), fontsize="medium")
        ax.set_ylabel("mean usage per sample")
    return finish(fig, save, dpi, show, given)
