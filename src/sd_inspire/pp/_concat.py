"""Combine slices into one SpatialData with one table, and split one into its slices."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from sd_inspire._constants import Key, Technology
from sd_inspire._convert import anndata_to_spatialdata, plain_uns
from sd_inspire._logging import log_added, timed
from sd_inspire._utils import get_spatial, get_table, is_spatialdata
from sd_inspire.pp._reset import _reset

if TYPE_CHECKING:
    from collections.abc import Callable

    from spatialdata import SpatialData

#: Technology of a slice read by spatialdata-io, from the reader name it stamps into ``SpatialData.attrs``.
_SPATIALDATA_IO_READERS = {
    "visium": Technology.VISIUM,
    "stereoseq": Technology.STEREOSEQ,
    "merscope": Technology.MERFISH,
    "xenium": Technology.XENIUM,
    "curio": Technology.SLIDESEQ,
}


def concat(
    slices: Mapping[str, SpatialData | AnnData],
    *,
    table_key: str | None = None,
    slice_key: str = Key.SLICE,
    index_unique: str | None = "-",
    gene_key: str | None = None,
    reset_counts: bool = False,
) -> SpatialData:
    """Combine several slices into one SpatialData with a single table.

    Each slice keeps its own coordinate frame: its spatial elements (shapes, images, labels, points) are carried
    over, renamed ``"{slice}_{name}"`` unless the name already starts with the slice name. The combined data have
    one coordinate system per slice, named after it (the frame of its ``obsm["spatial"]``), and ``"global"``, where
    the slices lie side by side, left to right: ``sdata.pl.render_shapes(...).pl.show(coordinate_systems="global")``
    draws them all in one panel (spatialdata-plot scales each slice's colours on its own unless given one
    ``norm``), ``coordinate_systems="151673"`` one slice. Other coordinate systems of the inputs (a Visium sample's
    downscaled image frames) are not kept. An AnnData slice gets a circles element ``"{slice}_shapes"`` at
    ``obsm["spatial"]``. The inputs are not modified.

    Parameters
    ----------
    slices
        Slice name -> SpatialData or AnnData with raw counts and ``obsm["spatial"]``. The names become the
        categories of ``obs[slice_key]``, in this order.
    table_key
        Table to take from each SpatialData; may be omitted when each holds a single table or one named
        ``"table"``.
    slice_key
        Column of ``obs`` to write the slice names into.
    index_unique
        Separator for unique observation names ``"{name}{index_unique}{slice}"``. With ``None`` the names are kept
        and must already be unique across slices.
    gene_key
        Column of each slice's ``var`` holding the gene identifiers to match slices on (e.g. ``"gene_ids"`` for
        Ensembl ids); by default the ``var_names``.
    reset_counts
        Combine the slices' raw counts: each slice's table is first reset as :func:`sd_inspire.pp.reset_counts`
        does (``X`` from ``layers["counts"]`` if present, no layers, no results of an earlier preprocessing or
        integration), so that the combined table is preprocessed as one. The inputs are not modified.

    Returns
    -------
    A new SpatialData whose table ``"table"`` holds

    - ``X`` and every layer present in all slices, over the union of genes (0 where a slice did not measure a gene);
    - ``obs[slice_key]``: categorical slice name; ``obs["region"]``, ``obs["instance_id"]``: the shapes element and
      the shape each row annotates; ``obs["technology"]``; every other ``obs`` column of the slices;
    - ``obsm["spatial"]``: coordinates in each slice's own frame;
    - ``varm["measured"]``: DataFrame genes x slices, ``True`` where the slice measured the gene;
      ``var["n_slices_measured"]``.

    Raises
    ------
    ValueError
        If there are no slices, observation names repeat (within a slice, or across slices with
        ``index_unique=None``), coordinates are missing or not finite.

    Examples
    --------
    >>> import sd_inspire as si
    >>> parts = si.datasets.simulate(2, n_spots=300, output="slices")
    >>> sdata = si.pp.concat(parts)
    >>> sdata["table"].obs["slice"].cat.categories.tolist()
    ['slice0', 'slice1']
    """
    import anndata as ad
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    if not isinstance(slices, Mapping) or len(slices) == 0:
        raise ValueError("`slices` must be a non-empty mapping of slice name -> SpatialData or AnnData.")
    names = [str(k) for k in slices]
    if len(set(names)) != len(names):
        raise ValueError(f"Slice names must be unique as strings, got {names}.")

    with timed(f"Concatenating {len(names)} slices"):
        sdatas = {}
        for name, item in zip(names, slices.values(), strict=True):
            if isinstance(item, AnnData):
                sdatas[name] = anndata_to_spatialdata(item, name)
            elif is_spatialdata(item):
                sdatas[name] = item
            else:
                raise TypeError(f"Slice {name!r} is a {type(item).__name__}; expected SpatialData or AnnData.")

        cs_count = Counter(cs for sd in sdatas.values() for cs in _coordinate_systems(sd))
        elements: dict[str, dict[str, Any]] = {"images": {}, "labels": {}, "points": {}, "shapes": {}}
        tables, regions, techs = [], [], {}
        owned: dict[str, list[tuple[str, str]]] = {}  # slice -> its elements (kind, name)
        for name, sd in sdatas.items():
            cs_map = {cs: f"{name}_{cs}" for cs in _coordinate_systems(sd) if cs_count[cs] > 1}
            rename = {el: el if el.startswith(name) else f"{name}_{el}" for _, el, _ in sd.gen_spatial_elements()}
            for kind, el_name, element in sd.gen_spatial_elements():
                new_name = rename[el_name]
                if any(new_name in group for group in elements.values()):
                    raise ValueError(f"Element name {new_name!r} of slice {name!r} clashes with another slice's.")
                elements[kind][new_name] = _relabel_coordinate_systems(element, cs_map)
                owned.setdefault(name, []).append((kind, new_name))
            table, slice_regions, tech = _slice_table(sd, name, table_key, rename, slice_key, gene_key)
            if reset_counts:
                _reset(table)  # a new AnnData: the slice's own table is left as it is
            if len(sd.tables) > 1:
                warnings.warn(
                    f"Slice {name!r}: only table {table_key or 'table'!r} is combined; the others "
                    f"({sorted(set(sd.tables) - {table_key or Key.TABLE})}) are left out.",
                    UserWarning,
                    stacklevel=2,
                )
            tables.append(table)
            regions += slice_regions
            techs[name] = tech

        _lay_out(elements, owned, tables, names)
        measured = pd.concat(
            [pd.Series(True, index=t.var_names, name=n) for t, n in zip(tables, names, strict=True)], axis=1
        ).notna()
        if index_unique is not None:
            for t, n in zip(tables, names, strict=True):
                t.obs_names = t.obs_names.astype(str) + index_unique + n
        table = ad.concat(tables, join="outer", merge="first", uns_merge="first", fill_value=0)
        _check_unique_names(table, slice_key)
        measured = measured.loc[table.var_names]
        table.varm[Key.MEASURED] = measured
        table.var[Key.N_SLICES_MEASURED] = measured.sum(axis=1).to_numpy()
        table.obs[slice_key] = pd.Categorical(table.obs[slice_key].astype(str), categories=names)
        table.obs[Key.TECHNOLOGY] = pd.Categorical(table.obs[Key.TECHNOLOGY].astype(str))
        table.obs[Key.REGION] = pd.Categorical(table.obs[Key.REGION].astype(str), categories=regions)
        table.uns.pop(TableModel.ATTRS_KEY, None)
        table = TableModel.parse(table, region=regions, region_key=Key.REGION, instance_key=Key.INSTANCE)
        for key in (slice_key, Key.REGION, Key.INSTANCE, Key.TECHNOLOGY):
            log_added("obs", key)
        log_added("varm", Key.MEASURED)
        sdata = SpatialData(**elements, tables={Key.TABLE: table})
        sdata.attrs["sd_inspire"] = {"slices": names, "technology": {n: str(t) for n, t in techs.items()}}
    return sdata


def split(
    sdata: SpatialData,
    *,
    table_key: str | None = None,
    slice_key: str = Key.SLICE,
    name: str | None = None,
) -> dict[str, SpatialData]:
    """Split a SpatialData into one SpatialData per slice, the way back from :func:`concat`.

    Each slice gets a copy of its rows of the table, annotating only the regions (shapes) of its own spots, and
    the spatial elements that belong to it: those its rows annotate, the element named after the slice and those
    whose names start with ``"{slice}_"`` (as :func:`concat` names them). A table of a single slice keeps every
    element. Spatial elements are shared with ``sdata``, not copied, and keep their names and coordinate systems;
    other tables are left out. Each slice's table keeps the genes its slice measured (``varm["measured"]`` of
    :func:`concat`; every gene of the table without it), so a targeted panel stays a panel when the slices are
    combined again, with other slices, by :func:`concat`. ``sdata`` is not modified.

    Parameters
    ----------
    sdata
        SpatialData whose table annotates spatial elements (``obs`` holds the region and instance keys of its
        ``uns["spatialdata_attrs"]``).
    table_key
        Table to split; may be omitted when the SpatialData holds a single table or one named ``"table"``.
    slice_key
        Column of ``obs`` with the slice of each spot, as written by :func:`concat`.
    name
        Name of the single slice of a table without ``obs[slice_key]``; also names the data in the error of a table
        that annotates no element.

    Returns
    -------
    Slice name -> SpatialData with table ``"table"``, in the order in which the slices first appear in the table.

    Raises
    ------
    TypeError
        If ``sdata`` is not a SpatialData.
    KeyError
        If ``table_key`` names no table, or ``obs`` has no column ``slice_key`` and ``name`` is not given.
    ValueError
        If the table annotates no spatial element (``obs`` lacks its region or instance key).

    Examples
    --------
    >>> import sd_inspire as si
    >>> sdata = si.datasets.simulate(2, n_spots=300, n_genes=100)
    >>> parts = si.pp.split(sdata)
    >>> {name: part["table"].n_obs for name, part in parts.items()}
    {'slice0': 300, 'slice1': 300}
    >>> si.pp.concat(parts)["table"].n_obs
    600
    """
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    if not is_spatialdata(sdata):
        raise TypeError(f"Expected a SpatialData, got {type(sdata).__name__}.")
    table = get_table(sdata, table_key)
    attrs = table.uns.get(TableModel.ATTRS_KEY) or {}
    region_key, instance_key = attrs.get("region_key"), attrs.get("instance_key")
    if region_key not in table.obs or instance_key not in table.obs:
        what = f"The table of slice {name!r}" if name is not None else f"Table {table_key or Key.TABLE!r}"
        raise _not_annotated(what)
    if slice_key in table.obs:
        slice_of = table.obs[slice_key].astype(str)
    elif name is not None:
        slice_of = pd.Series(name, index=table.obs_names)
    else:
        raise KeyError(
            f"No column {slice_key!r} in `obs` of the table (columns: {list(table.obs.columns)}); pass the right "
            "`slice_key=`, or `name=` to take the whole table as one slice."
        )
    out = {}
    for slice_name in pd.unique(slice_of):
        rows = (slice_of == slice_name).to_numpy()
        part = table[rows].copy() if not rows.all() else table.copy()
        genes = _measured_by(table, slice_name)
        if genes is not None and not genes.all():  # a panel: only its genes, so that concat sees what it measured
            part = part[:, genes].copy()
        regions = [str(r) for r in pd.unique(part.obs[region_key].astype(str))]
        part.obs[region_key] = pd.Categorical(part.obs[region_key].astype(str), categories=regions)
        part.uns.pop(TableModel.ATTRS_KEY, None)
        part = TableModel.parse(part, region=regions, region_key=region_key, instance_key=instance_key)
        if rows.all():
            elements = _elements(sdata, lambda _: True)
        else:
            elements = _elements(
                sdata, lambda el, n=slice_name, r=regions: el in r or el == n or el.startswith(f"{n}_")
            )
        out[slice_name] = SpatialData(**elements, tables={Key.TABLE: part})
    return out


def _measured_by(table: AnnData, slice_name: str) -> np.ndarray | None:
    """The genes slice ``slice_name`` measured, from ``varm["measured"]`` of :func:`concat` (``None`` without it)."""
    measured = table.varm.get(Key.MEASURED)
    if not isinstance(measured, pd.DataFrame) or slice_name not in measured.columns:
        return None
    return measured[slice_name].to_numpy(dtype=bool)


def _elements(sdata: SpatialData, keep: Callable[[str], bool]) -> dict[str, dict[str, Any]]:
    """The spatial elements of ``sdata`` whose names ``keep`` accepts, by kind (``images``, ``shapes``, ...)."""
    elements: dict[str, dict[str, Any]] = {}
    for kind, el_name, element in sdata.gen_spatial_elements():
        if keep(el_name):
            elements.setdefault(kind, {})[el_name] = element
    return elements


def _not_annotated(table: str) -> ValueError:
    """The error of a table without region/instance keys; ``table`` names it, e.g. ``"The table of slice 'A'"``."""
    return ValueError(
        f"{table} does not annotate any spatial element (no region/instance keys); "
        "pass the AnnData itself or parse the table with `spatialdata.models.TableModel`."
    )


def _coordinate_systems(sdata: SpatialData) -> list[str]:
    from spatialdata.transformations import get_transformation

    out: list[str] = []
    for _, _, element in sdata.gen_spatial_elements():
        out += [cs for cs in get_transformation(element, get_all=True) if cs not in out]
    return out


def _lay_out(
    elements: dict[str, dict[str, Any]], owned: dict[str, list[tuple[str, str]]], tables: list, names: list[str]
) -> None:
    """Coordinate systems of the combined data: one per slice, named after it, and ``"global"``, side by side.

    A slice's own frame is the coordinate system in which its table's shapes are placed as they are (the frame of
    ``obsm["spatial"]``); every element of the slice gets a transformation to the slice's name and one to
    ``"global"``, where the slices lie left to right (in the order given, 5% of the widest apart, their lowest
    points level; a shape's extent counts to its edge). Other coordinate systems of a slice (the downscaled image frames of a Visium sample) are left
    out: spatialdata-plot draws one panel per coordinate system. Elements without a transformation to their slice's
    frame keep theirs.
    """
    from spatialdata.transformations import Identity, Sequence, Translation, get_transformation

    # each slice's shapes (the table's region): they set its extent and its own frame
    regions = {name: next((elements[k][n] for k, n in owned.get(name, []) if k == "shapes"), None) for name in names}
    boxes = []
    for name, table in zip(names, tables, strict=True):
        xy = np.asarray(table.obsm[Key.SPATIAL], dtype=np.float64)[:, :2]
        low, high = xy.min(axis=0), xy.max(axis=0)
        region = regions[name]
        if region is not None and len(region):  # the shapes' own extent: polygons and circles reach past centres
            x0, y0, x1, y1 = region.geometry.total_bounds
            reach = float(np.nanmax(np.asarray(region["radius"], dtype=np.float64))) if "radius" in region else 0.0
            low = np.minimum(low, np.array([x0, y0]) - reach)
            high = np.maximum(high, np.array([x1, y1]) + reach)
        boxes.append((low, high))
    gap = 0.05 * max(float(high[0] - low[0]) for low, high in boxes)
    offset = 0.0
    for name, (low, high) in zip(names, boxes, strict=True):
        parts, region = owned.get(name, []), regions[name]
        frames = get_transformation(region, get_all=True) if region is not None else {}
        frame = next((cs for cs, t in frames.items() if isinstance(t, Identity)), None)
        if frame is None:
            continue
        shift = Translation([offset - low[0], -low[1]], axes=("x", "y"))
        for kind, element_name in parts:
            element = elements[kind][element_name]
            to_frame = get_transformation(element, get_all=True).get(frame)
            if to_frame is None:
                continue
            elements[kind][element_name] = _with_transformations(
                element, {name: to_frame, "global": Sequence([to_frame, shift])}
            )
        offset += float(high[0] - low[0]) + gap


def _with_transformations(element: Any, transformations: dict[str, Any]) -> Any:
    """A shallow copy of ``element`` with exactly ``transformations`` (the input is not modified)."""
    from spatialdata.transformations import set_transformation

    element = element.copy(deep=False) if hasattr(element, "attrs") else element
    element.attrs = dict(element.attrs)
    set_transformation(element, transformations, set_all=True)
    return element


def _relabel_coordinate_systems(element: Any, cs_map: dict[str, str]) -> Any:
    """The element itself, or a shallow copy whose transformations point to renamed coordinate systems."""
    from spatialdata.transformations import get_transformation, set_transformation

    transforms = get_transformation(element, get_all=True)
    if not any(cs in cs_map for cs in transforms):
        return element
    element = element.copy(deep=False) if hasattr(element, "attrs") else element
    element.attrs = dict(element.attrs)
    set_transformation(element, {cs_map.get(cs, cs): t for cs, t in transforms.items()}, set_all=True)
    return element


def _slice_table(
    sdata: SpatialData,
    name: str,
    table_key: str | None,
    rename: dict[str, str],
    slice_key: str,
    gene_key: str | None,
) -> tuple[AnnData, list[str], Technology]:
    """A fresh AnnData for one slice (sharing the count matrices), the regions it annotates, its technology."""
    from spatialdata.models import TableModel

    table = get_table(sdata, table_key)
    attrs = table.uns.get(TableModel.ATTRS_KEY, {})
    region, region_key, instance_key = (attrs.get(k) for k in ("region", "region_key", "instance_key"))
    if region is None or region_key not in table.obs or instance_key not in table.obs:
        raise _not_annotated(f"The table of slice {name!r}")
    obs = table.obs.copy()
    new_region = obs[region_key].astype(str).map(lambda r: rename.get(r, r))
    instance = obs[instance_key].to_numpy()
    obs = obs.drop(columns=[c for c in (region_key, instance_key, slice_key) if c in obs])
    obs[Key.REGION] = pd.Categorical(new_region.to_numpy())
    obs[Key.INSTANCE] = instance
    obs[slice_key] = name
    tech = _technology(sdata, table, name)
    obs[Key.TECHNOLOGY] = tech.value

    obsm = dict(table.obsm)
    if Key.SPATIAL not in obsm:
        obsm[Key.SPATIAL] = _centroids(sdata, table, region_key, instance_key, name)
    slice_view = AnnData(obs=obs, obsm={Key.SPATIAL: obsm[Key.SPATIAL]})
    get_spatial(slice_view, Key.SPATIAL, slices=obs[slice_key])  # validates (finite, 2D/3D) and names the slice
    _check_unique_names(AnnData(obs=obs), None, where=f"slice {name!r}")

    var = table.var.copy()
    if gene_key is not None:
        if gene_key not in var:
            raise KeyError(f"Slice {name!r}: no column {gene_key!r} in `var` (columns: {list(var.columns)}).")
        var.index = var[gene_key].astype(str)
    var.index = pd.Index(var.index.astype(str).str.strip(), name=None)
    if not var.index.is_unique:
        n_dup = int(var.index.duplicated().sum())
        warnings.warn(
            f"Slice {name!r}: {n_dup} gene names repeat (e.g. {var.index[var.index.duplicated()][0]!r}); "
            "they are made unique by appending '-1', '-2', ...",
            UserWarning,
            stacklevel=3,
        )
        var.index = _make_unique(var.index)
    uns = plain_uns(table.uns)
    libraries = uns.get("spatial")
    if isinstance(libraries, Mapping) and len(libraries) == 1:  # squidpy's library of the slice, under its name
        uns["spatial"] = {name: next(iter(libraries.values()))}
    out = AnnData(X=table.X, obs=obs, var=var, obsm=obsm, layers=dict(table.layers), uns=uns)
    regions = list(dict.fromkeys(new_region))
    return out, regions, tech


def _technology(sdata: SpatialData, table: AnnData, name: str) -> Technology:
    values: list[str] = []
    if Key.TECHNOLOGY in table.obs:
        values = [str(v) for v in pd.unique(table.obs[Key.TECHNOLOGY].astype(str))]
    elif "technology" in sdata.attrs:
        values = [str(sdata.attrs["technology"])]
    elif "spatialdata_io_reader" in sdata.attrs:
        values = [str(_SPATIALDATA_IO_READERS.get(sdata.attrs["spatialdata_io_reader"], Technology.UNKNOWN))]
    if len(values) > 1:
        raise ValueError(f"Slice {name!r} mixes technologies {values} in `obs['technology']`; split it.")
    try:
        return Technology(values[0].lower()) if values else Technology.UNKNOWN
    except ValueError:
        return Technology.UNKNOWN


def _centroids(sdata: SpatialData, table: AnnData, region_key: str, instance_key: str, name: str) -> np.ndarray:
    """Coordinates of the annotated shapes (intrinsic frame), for tables without ``obsm["spatial"]``."""
    coords = np.full((table.n_obs, 2), np.nan)
    for region in pd.unique(table.obs[region_key].astype(str)):
        element = sdata.shapes.get(region)
        if element is None:
            raise KeyError(
                f"Slice {name!r}: the table has no `obsm['spatial']` and its region {region!r} is not a shapes "
                "element to take centroids from; store coordinates in `obsm['spatial']`."
            )
        centroids = element.geometry.centroid
        rows = np.flatnonzero(table.obs[region_key].astype(str).to_numpy() == region)
        pos = element.index.get_indexer(table.obs[instance_key].to_numpy()[rows])
        if (pos < 0).any():
            raise KeyError(f"Slice {name!r}: {int((pos < 0).sum())} table rows annotate shapes missing in {region!r}.")
        coords[rows] = np.column_stack([centroids.x.to_numpy()[pos], centroids.y.to_numpy()[pos]])
    return coords


def _make_unique(index: pd.Index) -> pd.Index:
    seen: Counter[str] = Counter()
    out = []
    for v in index:
        out.append(v if seen[v] == 0 else f"{v}-{seen[v]}")
        seen[v] += 1
    return pd.Index(out)


def _check_unique_names(adata: AnnData, slice_key: str | None, where: str = "") -> None:
    from sd_inspire._utils import check_unique_obs_names

    try:
        check_unique_obs_names(adata, slice_key)
    except ValueError as err:
        raise ValueError(f"{where}: {err}" if where else str(err)) from None
