"""One slice's AnnData wrapped into a SpatialData: shared by ``pp.concat`` and ``datasets.simulate``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from sd_inspire._constants import Key
from sd_inspire._utils import get_spatial, median_neighbour_distance

if TYPE_CHECKING:
    from collections.abc import Mapping

    from spatialdata import SpatialData


def anndata_to_spatialdata(adata: AnnData, name: str, radius: float | None = None) -> SpatialData:
    """Wrap one slice's AnnData (not modified) into a SpatialData with circles ``"{name}_shapes"``.

    The circles sit at ``obsm["spatial"]`` in the coordinate system ``name``, with radius ``radius`` (by default
    :func:`spot_radius`); the table ``"table"`` shares the AnnData's matrices and annotates them through
    ``obs["region"]`` and ``obs["instance_id"]``.
    """
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    coords = get_spatial(adata, Key.SPATIAL)
    if radius is None:
        radius = spot_radius(adata, coords)
    region = f"{name}_{Key.SHAPES_SUFFIX}"
    shapes = ShapesModel.parse(
        coords[:, :2],
        geometry=0,
        radius=np.full(adata.n_obs, radius),
        index=pd.RangeIndex(adata.n_obs),
        transformations={name: Identity()},
    )
    obs = adata.obs.copy()
    obs[Key.REGION] = pd.Categorical([region] * adata.n_obs)
    obs[Key.INSTANCE] = np.arange(adata.n_obs)
    table = AnnData(
        X=adata.X,
        obs=obs,
        var=adata.var.copy(),
        obsm=dict(adata.obsm),
        layers=dict(adata.layers),
        uns=plain_uns(adata.uns),
    )
    table = TableModel.parse(table, region=region, region_key=Key.REGION, instance_key=Key.INSTANCE)
    return SpatialData(shapes={region: shapes}, tables={Key.TABLE: table})


def spot_radius(adata: AnnData, coords: np.ndarray) -> float:
    """Spot radius: Visium scale factors when present, else half the median nearest-neighbour distance."""
    for library in adata.uns.get("spatial", {}).values():
        diameter = library.get("scalefactors", {}).get("spot_diameter_fullres") if isinstance(library, dict) else None
        if diameter:
            return float(diameter) / 2
    spacing = median_neighbour_distance(coords)
    return 1.0 if spacing is None else spacing / 2


def plain_uns(uns: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict of ``uns`` without spatialdata's annotation attributes (``uns["spatialdata_attrs"]``)."""
    from spatialdata.models import TableModel

    return {k: v for k, v in uns.items() if k != TableModel.ATTRS_KEY}
