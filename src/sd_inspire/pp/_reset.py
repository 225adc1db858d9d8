"""Reset a table to its raw counts: undo :func:`sd_inspire.pp.preprocess` and the results computed from it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sd_inspire._constants import Key
from sd_inspire._docs import d
from sd_inspire._utils import get_table, maybe_copy
from sd_inspire.pp._preprocess import PREPROCESS_UNS, PREPROCESS_VAR

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

#: ``var`` columns and ``uns`` keys that :func:`reset_counts` removes, besides those starting with ``Key.INSPIRE``:
#: the gene space of :func:`~sd_inspire.pp.preprocess`, the genes' slice count of :func:`~sd_inspire.pp.concat` and
#: the parameters of the graph of :func:`sd_inspire.gr.spatial_neighbors` (its default ``key_added``).
RESET_VAR = (*PREPROCESS_VAR, Key.N_SLICES_MEASURED)
RESET_UNS = (*PREPROCESS_UNS, f"{Key.SPATIAL}_neighbors")


@d.dedent
def reset_counts(
    data: AnnData | SpatialData,
    *,
    table_key: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Reset a table to its raw counts, without the results of an earlier preprocessing or integration.

    ``X`` becomes the raw counts of ``layers["counts"]``, where :func:`sd_inspire.pp.preprocess` keeps them
    (without that layer, ``X`` is taken to hold raw counts already), and every layer is removed. So are the gene
    space and settings of :func:`~sd_inspire.pp.preprocess` (``var["highly_variable"]``,
    ``var["highly_variable_rank"]``, ``var["highly_variable_nbatches"]``, ``uns["preprocess"]``),
    ``var["n_slices_measured"]`` of :func:`~sd_inspire.pp.concat` (which writes it anew when slices are combined),
    every graph in ``obsp`` with ``uns["spatial_neighbors"]`` of :func:`sd_inspire.gr.spatial_neighbors`, and the
    ``var`` columns and ``uns`` keys of :func:`sd_inspire.tl.integrate` and :func:`sd_inspire.tl.domains` (names
    starting with ``"inspire"``). The table can then be preprocessed anew with other settings, or combined with
    other slices: ``pp.concat(slices, reset_counts=True)`` resets each slice's table this way.

    ``obs``, ``obsm`` and ``varm`` are kept (the next run overwrites the QC columns, latent space and loadings it
    writes); spots removed by quality control and genes removed by ``preprocess(..., subset=True)`` do not come
    back.

    Parameters
    ----------
    %(data)s
    %(table_key)s
    %(copy)s

    Returns
    -------
    %(copy_returns)s.

    Raises
    ------
    KeyError
        If ``table_key`` names no table of the SpatialData (or it is omitted and the table cannot be told).

    Examples
    --------
    >>> import sd_inspire as si
    >>> sdata = si.datasets.simulate(2, n_spots=300, n_genes=200)
    >>> si.pp.preprocess(sdata, n_top_genes=100)
    >>> si.pp.reset_counts(sdata)
    >>> table = sdata["table"]
    >>> "counts" in table.layers, "highly_variable" in table.var, "preprocess" in table.uns
    (False, False, False)
    """
    adata = maybe_copy(get_table(data, table_key), copy)
    _reset(adata)
    return adata if copy else None


def _reset(adata: AnnData) -> None:
    """:func:`reset_counts` on ``adata`` itself: its containers (layers, ``var``, ``uns``, ``obsp``) are changed."""
    if Key.COUNTS in adata.layers:
        adata.X = adata.layers[Key.COUNTS]
    for layer in list(adata.layers):
        del adata.layers[layer]
    adata.var = adata.var.drop(columns=[c for c in adata.var.columns if _is_reset(c, RESET_VAR)])
    for key in [k for k in adata.uns if _is_reset(k, RESET_UNS)]:
        del adata.uns[key]
    for key in list(adata.obsp):
        del adata.obsp[key]


def _is_reset(key: object, keys: tuple[str, ...]) -> bool:
    return key in keys or str(key).startswith(Key.INSPIRE)
