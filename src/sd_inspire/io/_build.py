"""One builder of the SpatialData that every reader returns: a shapes element and a counts table annotating it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from sd_inspire._constants import Key
from sd_inspire._utils import median_neighbour_distance
from sd_inspire._versions import versions

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import geopandas as gpd
    from spatialdata import SpatialData

    from sd_inspire._constants import Technology


def build_spatialdata(
    counts: sparse.spmatrix | np.ndarray,
    *,
    obs_names: Sequence[str] | pd.Index,
    var_names: Sequence[str] | pd.Index,
    coords: np.ndarray,
    dataset_id: str,
    technology: Technology,
    shape: Literal["circle", "square"] = "circle",
    size: float | np.ndarray | None = None,
    polygons: gpd.GeoDataFrame | None = None,
    obs: pd.DataFrame | None = None,
    var: pd.DataFrame | None = None,
    obsm: Mapping[str, np.ndarray] | None = None,
    uns: Mapping[str, Any] | None = None,
    source: str,
    reader: str,
) -> SpatialData:
    """Assemble a reader's output.

    Parameters
    ----------
    counts
        Observations × genes raw counts; stored as CSR (``float32`` unless integral, then ``int32``-valued floats
        are kept as given by the caller's dtype).
    obs_names, var_names
        Barcodes / cell ids and gene names.
    coords
        ``(n_obs, 2)`` centres in the slice's own units; written to ``obsm["spatial"]`` and used for the shapes.
    dataset_id
        Name of the coordinate system; the shapes element is ``"{dataset_id}_shapes"``.
    technology
        Recorded in ``obs["technology"]`` and ``sdata.attrs["technology"]``.
    shape
        ``"circle"`` (``size`` = diameter) or ``"square"`` (``size`` = side); ignored when ``polygons`` is given.
    size
        Diameter or side, scalar or per observation; by default the median nearest-neighbour distance.
    polygons
        Outlines (one row per observation, same order), written instead of circles or squares.
    obs, var, obsm, uns
        Extra annotations for the table (indexes are replaced by ``obs_names`` / ``var_names``).
    source
        The file or folder read, stamped into ``sdata.attrs``.
    reader
        Name of the reader, e.g. ``"sd_inspire.io.slideseq"``.
    """
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    n_obs = len(obs_names)
    coords = np.asarray(coords, dtype=np.float64)[:, :2]
    region = f"{dataset_id}_{Key.SHAPES_SUFFIX}"
    transformations = {dataset_id: Identity()}
    if polygons is not None:
        shapes = ShapesModel.parse(polygons.reset_index(drop=True), transformations=transformations)
    else:
        sizes = np.broadcast_to(_default_size(coords) if size is None else np.asarray(size, float), (n_obs,))
        if shape == "circle":
            shapes = ShapesModel.parse(
                coords, geometry=0, radius=sizes / 2, index=pd.RangeIndex(n_obs), transformations=transformations
            )
        else:
            shapes = ShapesModel.parse(_squares(coords, sizes), transformations=transformations)
    table_obs = pd.DataFrame(index=pd.Index(np.asarray(obs_names, dtype=str), name=None))
    if obs is not None:
        table_obs = pd.concat([table_obs, obs.set_axis(table_obs.index, axis=0)], axis=1)
    table_obs[Key.TECHNOLOGY] = pd.Categorical([technology.value] * n_obs)
    table_obs[Key.REGION] = pd.Categorical([region] * n_obs)
    table_obs[Key.INSTANCE] = np.arange(n_obs)
    table_var = pd.DataFrame(index=pd.Index(np.asarray(var_names, dtype=str)))
    if var is not None:
        table_var = pd.concat([table_var, var.set_axis(table_var.index, axis=0)], axis=1)
    table = AnnData(
        X=sparse.csr_matrix(counts),
        obs=table_obs,
        var=table_var,
        obsm={Key.SPATIAL: coords, **dict(obsm or {})},
        uns=dict(uns or {}),
    )
    table = TableModel.parse(table, region=region, region_key=Key.REGION, instance_key=Key.INSTANCE)
    sdata = SpatialData(shapes={region: shapes}, tables={Key.TABLE: table})
    sdata.attrs.update(
        {
            "technology": technology.value,
            "reader": reader,
            "reader_version": versions()["sd-inspire"],
            "source": str(source),
        }
    )
    return sdata


def _default_size(coords: np.ndarray) -> float:
    """Median nearest-neighbour distance: the spacing of a lattice, the typical gap between beads or cells."""
    spacing = median_neighbour_distance(coords)
    return 1.0 if spacing is None else spacing


def _squares(centres: np.ndarray, sides: np.ndarray) -> gpd.GeoDataFrame:
    """Axis-aligned squares around ``centres`` (vectorised through shapely's ``box``)."""
    import geopandas as gpd
    import shapely

    half = sides / 2
    boxes = shapely.box(centres[:, 0] - half, centres[:, 1] - half, centres[:, 0] + half, centres[:, 1] + half)
    return gpd.GeoDataFrame(geometry=boxes, index=pd.RangeIndex(len(centres)))
