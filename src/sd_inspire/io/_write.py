"""Results of the tools written into a SpatialData, and through to its backing zarr store.

The tools (:mod:`sd_inspire.tl`) compute on a table; this module adds what they produce to the SpatialData and, when
it is backed by a zarr store, writes the changed elements there with the atomic element writes of
:mod:`sd_inspire.io._store` (staged next to the store, swapped in whole, recovered on the next read if interrupted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from sd_inspire._constants import Key
from sd_inspire._logging import log_added
from sd_inspire._utils import factor_label, is_spatialdata, table_name
from sd_inspire.io._store import check_rows_on_disk, write_elements

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from spatialdata import SpatialData


def check_table_matches_store(sdata: SpatialData | AnnData, adata: AnnData, table_key: str | None) -> None:
    """Before a tool computes on a table of a SpatialData backed by a zarr store: refuse if its rows changed.

    Writing the results back would otherwise delete the rows of spots removed since reading (raw counts included).
    Nothing is checked for an AnnData or a SpatialData without a store.
    """
    if is_spatialdata(sdata) and sdata.path is not None:
        check_rows_on_disk(sdata, table_name(sdata, adata, table_key))


def write_table_into_store(
    sdata: SpatialData, adata: AnnData, table_key: str | None, *, transformations: Sequence[str] = ()
) -> None:
    """Write the table ``adata`` of ``sdata`` (and the new transformations of ``transformations``) into its store.

    ``transformations`` names elements whose coordinate transformations changed; those not yet on disk are skipped
    (they are written with the whole SpatialData). Nothing happens for a SpatialData without a backing store.
    """
    if sdata.path is None:
        return
    on_disk = {p.split("/", 1)[1] for p in sdata.elements_paths_on_disk()} if transformations else set()
    moved = [name for name in transformations if name in on_disk]
    write_elements(sdata, [table_name(sdata, adata, table_key)], transformations=moved)


def add_factor_table(
    sdata: SpatialData, adata: AnnData, key_added: str, table_key: str | None, *, write: bool = True
) -> None:
    """Add table ``"{key_added}_factors"`` annotating the same shapes; write it (and the table) into a backing store.

    The factor table holds ``obsm["{key_added}_factors"]`` as ``X`` (one variable per factor) with the region,
    instance and slice columns of ``adata``, so spatialdata-plot colours shapes by a factor directly. With
    ``write=False`` (a process other than the first of a data-parallel run) the store is left alone.
    """
    from anndata import AnnData
    from spatialdata.models import TableModel

    attrs = adata.uns.get(TableModel.ATTRS_KEY)
    factors = adata.obsm[f"{key_added}_factors"]
    name = f"{key_added}_factors"
    obs_cols = [c for c in ((attrs or {}).get("region_key"), (attrs or {}).get("instance_key")) if c]
    obs = adata.obs[[c for c in [*obs_cols, Key.SLICE] if c in adata.obs]].copy()
    table = AnnData(
        X=factors.copy(), obs=obs, var=pd.DataFrame(index=[factor_label(k) for k in range(factors.shape[1])])
    )
    if attrs is not None:
        table = TableModel.parse(
            table, region=attrs["region"], region_key=attrs["region_key"], instance_key=attrs["instance_key"]
        )
    else:
        table = TableModel.parse(table)
    if name in sdata.tables:
        del sdata.tables[name]
    sdata.tables[name] = table
    log_added("tables", name)
    if sdata.path is not None and write:
        main = table_name(sdata, adata, table_key)
        write_elements(sdata, [name, main])
