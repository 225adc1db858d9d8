"""Spatial domains per slice, optionally next to a reference annotation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sd_inspire._constants import Key
from sd_inspire._docs import d
from sd_inspire._utils import category_colors, get_slices, get_spatial, get_table
from sd_inspire.pl._base import (
    MISSING,
    finish,
    labels,
    legend_handles,
    palette,
    require,
    scatter_slices,
    slice_grid,
)

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData

    from sd_inspire.pl._base import Colors


@d.dedent
def domains(
    data: AnnData | SpatialData,
    *,
    key: str = "inspire_domain",
    reference: str | None = None,
    match_colors: bool = True,
    slice_key: str | None = Key.SLICE,
    table_key: str | None = None,
    spatial_key: str = Key.SPATIAL,
    panel_size: float = 3.0,
    point_size: float | None = None,
    ax: Axes | None = None,
    save: str | Path | None = None,
    dpi: int = 100,
    show: bool | None = None,
) -> Figure | None:
    """Map spatial domains in every slice, optionally above a reference annotation for comparison.

    One column per slice. The first row shows ``obs[key]``, each domain in the same colour in every slice; with
    ``reference``, a second row shows that annotation (e.g. cortical layers) the same way. Unannotated spots are
    light grey. Each row has its own legend.

    Parameters
    ----------
    %(data)s
    key
        Column of :attr:`~anndata.AnnData.obs` with the domains, as written by :func:`sd_inspire.tl.domains` (its
        ``key_added``).
    reference
        Column of :attr:`~anndata.AnnData.obs` with a reference annotation drawn in a second row.
    match_colors
        With ``reference``: colour each domain like the reference label it is matched to, where domains and labels
        are paired one to one so that the paired spots are as many as possible; unpaired domains get colours of
        their own. Agreeing regions then look alike in both rows.
    %(slice_key)s ``None`` draws one column.
    %(table_key)s
    spatial_key
        Key of the coordinates in :attr:`~anndata.AnnData.obsm`.
    panel_size
        Width and height of a panel in inches.
    point_size
        Marker size; by default from the number of spots per slice.
    %(ax)s
    %(save)s

    Returns
    -------
    ``None`` when the figure is shown (see ``show``); else the matplotlib figure; its axes are the panels, row by
    row (domains, then reference). Columns are titled with the slice names and rows labelled with ``key`` and
    ``reference``.

    Raises
    ------
    KeyError
        If ``obs[key]`` or ``obs[reference]`` is missing.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> from anndata import AnnData
    >>> import sd_inspire as si
    >>> obs = pd.DataFrame({"slice": pd.Categorical(["a"] * 9 + ["b"] * 9)}, index=[f"spot{i}" for i in range(18)])
    >>> adata = AnnData(np.zeros((18, 2), dtype=np.float32), obs=obs)
    >>> adata.obsm["spatial"] = np.tile(np.indices((3, 3)).reshape(2, -1).T, (2, 1)).astype(float)
    >>> adata.obs["inspire_domain"] = pd.Categorical(np.where(adata.obsm["spatial"][:, 1] < 1, "0", "1"))
    >>> adata.obs["layer"] = pd.Categorical(np.where(adata.obsm["spatial"][:, 1] < 2, "L1", "L2"))
    >>> fig = si.pl.domains(adata, reference="layer", show=False)
    >>> [ax.get_title() for ax in fig.axes[:2]], fig.axes[2].get_ylabel()
    (['a', 'b'], 'layer')
    """
    given = ax  # the panels' loops below reuse the name `ax`
    adata = get_table(data, table_key)
    domain = labels(require(adata.obs, key, "obs", "domains", "tl.domains"))
    rows: list[tuple[str, Colors, dict[str, tuple[float, ...]]]]
    if reference is not None:
        if reference not in adata.obs:
            raise KeyError(f"No reference annotation: `adata.obs[{reference!r}]` is missing.")
        ref = labels(adata.obs[reference])
        ref_pal = palette(ref.categories or [], adata, reference)
        dom_pal = (
            _matched_palette(domain, ref, ref_pal) if match_colors else palette(domain.categories or [], adata, key)
        )
        rows = [(key, domain, dom_pal), (reference, ref, ref_pal)]
    else:
        rows = [(key, domain, palette(domain.categories or [], adata, key))]
    slices = get_slices(adata, slice_key)
    coords = get_spatial(adata, spatial_key, slices=slices)
    fig, grid = slice_grid(
        [name for name, _, _ in rows],
        slices,
        slice_key,
        panel_size,
        margin=1.5,
        ax=given,
        what="slices, without a reference",
    )
    for axes, (name, colors, pal) in zip(grid, rows, strict=True):
        scatter_slices(axes, slices, coords, colors, pal=pal, point_size=point_size)
        axes[-1].legend(
            handles=legend_handles(pal), title=name, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False
        )
    return finish(fig, save, dpi, show, given)


def _matched_palette(
    domain: Colors, ref: Colors, ref_pal: dict[str, tuple[float, ...]]
) -> dict[str, tuple[float, ...]]:
    """Domain colours taken from the reference labels paired with them (maximum total overlap, one to one)."""
    from scipy.optimize import linear_sum_assignment

    dom_cats = [c for c in (domain.categories or []) if c not in MISSING]
    ref_cats = [c for c in (ref.categories or []) if c not in MISSING]
    d_code = pd.Categorical(domain.values, categories=dom_cats).codes
    r_code = pd.Categorical(ref.values, categories=ref_cats).codes
    both = (d_code >= 0) & (r_code >= 0)  # unannotated spots count for no pair
    overlap = np.zeros((len(dom_cats), len(ref_cats)), dtype=np.int64)
    np.add.at(overlap, (d_code[both], r_code[both]), 1)
    pal = palette(domain.categories or [])  # unannotated labels, and fallbacks
    if not dom_cats or not ref_cats:
        return pal
    paired, labels_of = linear_sum_assignment(overlap, maximize=True)
    taken = {dom_cats[i]: ref_pal[ref_cats[j]] for i, j in zip(paired, labels_of, strict=True) if overlap[i, j] > 0}
    # colours no reference label has, so that an unpaired domain never looks like a label
    spare = iter(c for c in category_colors(len(ref_cats) + len(dom_cats)) if c not in ref_pal.values())
    for c in dom_cats:
        pal[c] = taken[c] if c in taken else next(spare, pal[c])
    return pal
