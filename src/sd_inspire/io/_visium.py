"""10x Visium (Space Ranger ``outs/``) reader, delegating HDF5 matrices to spatialdata-io."""

from __future__ import annotations

import json
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sd_inspire._constants import Key, Technology, VisiumFile
from sd_inspire._constants._constants import VISIUM_SPOT_DIAMETER_UM
from sd_inspire._logging import logger
from sd_inspire.io._utils import examples, listing, match_ids, read_mtx

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from spatialdata import SpatialData

#: Count matrices looked for when ``counts_file`` is not given, in this order.
_COUNTS_ORDER = (VisiumFile.FILTERED_COUNTS, VisiumFile.FILTERED_MTX_DIR, VisiumFile.RAW_COUNTS, VisiumFile.RAW_MTX_DIR)
_MTX_DIRS = (VisiumFile.FILTERED_MTX_DIR, VisiumFile.RAW_MTX_DIR)
_POSITION_COLUMNS = (
    VisiumFile.IN_TISSUE,
    VisiumFile.ARRAY_ROW,
    VisiumFile.ARRAY_COL,
    VisiumFile.PXL_ROW,
    VisiumFile.PXL_COL,
)


def visium(
    path: str | Path,
    *,
    dataset_id: str | None = None,
    counts_file: str | None = None,
    in_tissue_only: bool = True,
    images: bool = True,
    reader_kwargs: Mapping[str, Any] = MappingProxyType({}),
) -> SpatialData:
    """Read a 10x Visium Space Ranger output folder.

    HDF5 count matrices are read by :func:`spatialdata_io.visium`; MatrixMarket folders (which it does not read
    uncompressed, nor find by itself) are read here into the same layout. On top, the reader validates the files
    with clear errors, keeps the spots under tissue, and records the technology and the pixel-to-micron scale.

    Parameters
    ----------
    path
        The Space Ranger ``outs/`` folder, or a folder holding it, with a count matrix and ``spatial/`` (scale
        factors and ``tissue_positions_list.csv`` (Space Ranger 1.x, no header) or ``tissue_positions.csv`` (2.x and
        later, with a header)).
    dataset_id
        Name used for the elements and the coordinate system; by default the sample folder's name (the folder
        holding ``outs/``).
    counts_file
        Count matrix inside the folder: an ``.h5`` file, or a MatrixMarket folder holding ``matrix.mtx``,
        ``barcodes.tsv`` and ``features.tsv`` (each possibly ``.gz``). By default the first present of
        ``filtered_feature_bc_matrix.h5``, ``filtered_feature_bc_matrix/``, ``raw_feature_bc_matrix.h5`` and
        ``raw_feature_bc_matrix/``.
    in_tissue_only
        Keep only the spots under tissue (``in_tissue == 1``): all of a filtered matrix, about half of a raw one.
    images
        Keep the tissue images of ``spatial/`` (loaded lazily); ``False`` drops them.
    reader_kwargs
        Passed on to :func:`spatialdata_io.visium` (HDF5 matrices only).

    Returns
    -------
    SpatialData with circles ``"{dataset_id}"`` (spots, radius from ``spot_diameter_fullres``, full-resolution
    pixels), the images, and table ``"table"``: raw counts (sparse CSR), ``obs`` with ``in_tissue``, ``array_row``,
    ``array_col`` and ``technology = "visium"``, ``obsm["spatial"]`` in full-resolution pixels,
    ``uns["microns_per_pixel"]`` (55 µm spot diameter / its size in pixels).

    Raises
    ------
    FileNotFoundError
        If the folder or a required file is missing; the message lists what was expected and what was found.
    ValueError
        If a file cannot be parsed (the message names it), barcodes repeat, the matrix is empty, or no barcode of
        the matrix has a position under tissue.

    Examples
    --------
    Four slices of a Space Ranger run, each an ``outs/`` folder, into one SpatialData with one table:

    >>> import sd_inspire as si
    >>> slices = {s: si.io.visium(f"DLPFC/{s}/outs") for s in ["151673", "151674"]}  # doctest: +SKIP
    >>> sdata = si.pp.concat(slices)  # doctest: +SKIP
    >>> sdata["table"].obs["slice"].value_counts()  # doctest: +SKIP
    151674    3673
    151673    3639
    Name: count, dtype: int64
    """
    path = Path(path)
    root = find_outs(path)
    if root is None:
        root = path / VisiumFile.OUTS_DIR if (path / VisiumFile.OUTS_DIR).is_dir() else path
    counts = _check_files(path, root, counts_file)
    if counts.is_file() and VisiumFile.MTX in counts.name:  # counts_file named the matrix of a MatrixMarket folder
        counts = counts.parent
    if dataset_id is None:
        dataset_id = root.parent.name if root.name == VisiumFile.OUTS_DIR else root.name
    spatial = root / VisiumFile.SPATIAL_DIR
    scalefactors = _read_scalefactors(spatial / VisiumFile.SCALEFACTORS)
    positions_file = next(
        f for f in (spatial / VisiumFile.POSITIONS_V2, spatial / VisiumFile.POSITIONS_V1) if f.exists()
    )
    positions = _read_positions(positions_file)
    logger.info("Reading Visium sample %r from %s (%s)", dataset_id, root, counts.name)
    if images:
        _check_images(spatial)
    if counts.is_dir():
        sdata = _read_mtx_sample(root, counts, dataset_id, positions, positions_file, scalefactors, images)
    else:
        sdata = _read_h5_sample(root, counts, dataset_id, positions, positions_file, dict(reader_kwargs), images)
    table = sdata.tables[Key.TABLE]
    keep = table.obs[VisiumFile.IN_TISSUE].notna().to_numpy()
    if in_tissue_only:
        keep &= (table.obs[VisiumFile.IN_TISSUE] == 1).to_numpy()
    if not keep.any():
        raise ValueError(
            f"{positions_file}: none of the {table.n_obs} barcodes of {counts} is under tissue (in_tissue == 1)."
        )
    if not keep.all():
        logger.info("Keeping the %d of %d spots under tissue", int(keep.sum()), table.n_obs)
        _subset(sdata, dataset_id, keep)
    if not images:
        for name in list(sdata.images):
            del sdata.images[name]
    table = sdata.tables[Key.TABLE]
    for column in _POSITION_COLUMNS[:3]:
        table.obs[column.value] = table.obs[column.value].astype(np.int64)
    table.obs[Key.TECHNOLOGY] = pd.Categorical([Technology.VISIUM.value] * table.n_obs)
    diameter = scalefactors[VisiumFile.SPOT_DIAMETER_KEY]
    table.uns[Key.MICRONS_PER_PIXEL] = VISIUM_SPOT_DIAMETER_UM / diameter
    table.uns[VisiumFile.SPATIAL_DIR.value] = _squidpy_library(
        sdata, _decode_bytes(table.uns.get(VisiumFile.SPATIAL_DIR.value, {})), dataset_id, scalefactors
    )
    sdata.attrs[Key.TECHNOLOGY] = Technology.VISIUM.value
    return sdata


def _squidpy_library(
    sdata: SpatialData, spatial: dict[str, Any], dataset_id: str, scalefactors: dict[str, Any]
) -> dict[str, Any]:
    """``uns["spatial"]`` as squidpy and scanpy read it: ``{dataset_id: {"images", "scalefactors", "metadata"}}``.

    The scale factors of Space Ranger, and the hires / lowres images (``y x c`` arrays, as scanpy's ``read_visium``
    stores them) when they were read, so that ``squidpy.pl.spatial_scatter`` draws the spots on the tissue.
    """
    library = dict(spatial.get(dataset_id) or {})
    if len(spatial) == 1 and dataset_id not in spatial:  # spatialdata-io keyed it otherwise: one library, ours
        library = dict(next(iter(spatial.values())) or {})
    library.setdefault("metadata", {})
    library["scalefactors"] = {str(k): float(v) for k, v in scalefactors.items() if np.isscalar(v)}
    pictures = {}
    for suffix in ("hires", "lowres"):
        name = f"{dataset_id}_{suffix}_image"
        if name in sdata.images:
            pictures[suffix] = np.moveaxis(np.asarray(sdata.images[name].data), 0, -1)  # (c, y, x) -> (y, x, c)
    if pictures:
        library["images"] = pictures
    return {dataset_id: library}


def find_outs(path: Path) -> Path | None:
    """The folder with ``spatial/`` (``path`` or ``path/outs``), or ``None`` when neither looks like Visium."""
    for root in (path, path / VisiumFile.OUTS_DIR):
        spatial = root / VisiumFile.SPATIAL_DIR
        markers = (VisiumFile.SCALEFACTORS, VisiumFile.POSITIONS_V1, VisiumFile.POSITIONS_V2)
        if spatial.is_dir() and any((spatial / m).exists() for m in markers):
            return root
    return None


def _check_files(path: Path, root: Path, counts_file: str | None) -> Path:
    """The count matrix to read; raise listing what is missing (and what is there) otherwise."""
    if not path.is_dir():
        raise FileNotFoundError(f"Visium folder {str(path)!r} does not exist or is not a folder.")
    spatial = root / VisiumFile.SPATIAL_DIR
    candidates = (counts_file,) if counts_file is not None else _COUNTS_ORDER
    counts = next((root / c for c in candidates if (root / c).exists()), None)
    missing = []
    if counts is None:
        missing.append(" or ".join(f"{c}/" if c in _MTX_DIRS else str(c) for c in candidates))
    if not (spatial / VisiumFile.SCALEFACTORS).exists():
        missing.append(f"{VisiumFile.SPATIAL_DIR}/{VisiumFile.SCALEFACTORS}")
    if not any((spatial / p).exists() for p in (VisiumFile.POSITIONS_V1, VisiumFile.POSITIONS_V2)):
        missing.append(f"{VisiumFile.SPATIAL_DIR}/{VisiumFile.POSITIONS_V1} or {VisiumFile.POSITIONS_V2}")
    if missing:
        found = listing(root) + [f"{VisiumFile.SPATIAL_DIR}/{name}" for name in listing(spatial)]
        raise FileNotFoundError(f"{str(root)!r} is not a Visium output folder: missing {missing}; found {found}.")
    assert counts is not None
    return counts


def _read_scalefactors(file: Path) -> dict[str, Any]:
    try:
        scalefactors = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e}).") from e
    diameter = scalefactors.get(VisiumFile.SPOT_DIAMETER_KEY) if isinstance(scalefactors, dict) else None
    try:
        diameter = float(diameter)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        diameter = np.nan
    if not np.isfinite(diameter) or diameter <= 0:
        raise ValueError(f"{file}: no valid {VisiumFile.SPOT_DIAMETER_KEY!s} (got {diameter}).")
    scalefactors[VisiumFile.SPOT_DIAMETER_KEY] = diameter
    for key in (VisiumFile.HIRES_SCALE_KEY, VisiumFile.LOWRES_SCALE_KEY, "fiducial_diameter_fullres"):
        if key not in scalefactors:  # optional: the images they scale may be absent
            continue
        value = scalefactors[key]
        ok = not isinstance(value, bool) and isinstance(value, int | float) and np.isfinite(value) and value > 0
        if not ok:
            raise ValueError(f"{file}: {key!s} must be a positive number, got {value!r}.")
    return scalefactors


def _read_positions(file: Path) -> pd.DataFrame:
    """Tissue positions indexed by barcode, with the five numeric columns of Space Ranger."""
    names = [VisiumFile.BARCODE.value, *(c.value for c in _POSITION_COLUMNS)]
    try:
        table = pd.read_csv(file, header=None, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as e:
        raise ValueError(f"{file}: the file is empty.") from e
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: malformed tissue positions ({e}).") from e
    if len(table) and VisiumFile.IN_TISSUE in table.iloc[0].tolist():  # a header (2.x, or 1.x re-exports)
        table = table.iloc[1:]
    if table.shape[1] != len(names):
        raise ValueError(f"{file}: expected {len(names)} columns ({', '.join(names)}), found {table.shape[1]}.")
    if table.empty:
        raise ValueError(f"{file}: no spots.")
    table.columns = names
    table = table.set_index(VisiumFile.BARCODE.value)
    table.index.name = None
    values = table.apply(pd.to_numeric, errors="coerce")
    bad = values.isna().any(axis=1)
    if bad.any():
        raise ValueError(
            f"{file}: {int(bad.sum())} rows with missing or non-numeric values (e.g. barcodes "
            f"{examples(table.index[bad])})."
        )
    if not values.index.is_unique:
        dup = values.index[values.index.duplicated()].unique()
        raise ValueError(f"{file}: {len(dup)} duplicated barcodes (e.g. {examples(dup)}).")
    return values


def _check_barcodes(barcodes: pd.Index, counts: Path, positions: pd.DataFrame, positions_file: Path) -> None:
    if len(barcodes) == 0:
        raise ValueError(f"{counts}: the count matrix holds no barcodes.")
    if not barcodes.is_unique:
        dup = barcodes[barcodes.duplicated()].unique()
        raise ValueError(f"{counts}: {len(dup)} duplicated barcodes (e.g. {examples(dup)}).")
    missing = barcodes[~barcodes.isin(positions.index)]
    if len(missing):
        # positions list every spot of the slide, so only barcodes of the matrix without a position are reported
        match_ids(
            barcodes,
            positions.index[positions.index.isin(barcodes)],
            what="barcodes",
            left_name=counts.name,
            right_name=positions_file.name,
            stacklevel=5,  # the caller of visium()
        )


def _read_h5_sample(
    root: Path,
    counts: Path,
    dataset_id: str,
    positions: pd.DataFrame,
    positions_file: Path,
    reader_kwargs: dict[str, Any],
    images: bool,
) -> SpatialData:
    import spatialdata_io

    _check_barcodes(_h5_barcodes(counts), counts, positions, positions_file)
    try:
        with warnings.catch_warnings(), _without_images(root, skip=not images) as folder:
            warnings.filterwarnings("ignore", message=".*to categorical dtype", category=UserWarning)
            warnings.filterwarnings("ignore", message="Variable names are not unique", category=UserWarning)
            sdata = spatialdata_io.visium(
                folder, dataset_id=dataset_id, counts_file=str(counts.relative_to(root)), **reader_kwargs
            )
    except (OSError, KeyError) as e:
        raise ValueError(f"{counts}: not a readable 10x HDF5 count matrix ({e}).") from e
    if sdata.tables[Key.TABLE].n_vars == 0:
        raise ValueError(f"{counts}: the count matrix holds no genes.")
    return sdata


@contextmanager
def _without_images(root: Path, *, skip: bool) -> Iterator[Path]:
    """``root``, or with ``skip`` a temporary mirror of it (symbolic links) without the tissue images.

    spatialdata-io reads every image it finds; the mirror keeps a damaged image from failing ``images=False``.
    """
    if not skip:
        yield root
        return
    with tempfile.TemporaryDirectory(prefix="sd-inspire-visium-") as tmp:
        mirror = Path(tmp) / root.name
        mirror.mkdir()
        for entry in root.iterdir():
            if entry.name != VisiumFile.SPATIAL_DIR:
                (mirror / entry.name).symlink_to(entry.resolve())
        spatial = mirror / VisiumFile.SPATIAL_DIR
        spatial.mkdir()
        for entry in (root / VisiumFile.SPATIAL_DIR).iterdir():
            if entry.name not in _IMAGES:
                (spatial / entry.name).symlink_to(entry.resolve())
        yield mirror


def _check_images(spatial: Path) -> None:
    """Refuse a tissue image that cannot be decoded, naming it (spatialdata-io's error names no file)."""
    from PIL import Image, UnidentifiedImageError

    for name in _IMAGES:
        file = spatial / name
        if not file.is_file():
            continue
        try:
            with Image.open(file) as image:
                image.load()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            raise ValueError(
                f"{file}: not a readable image ({e}); pass `images=False` to read the sample without its images."
            ) from e


def _h5_barcodes(file: Path) -> pd.Index:
    """Barcodes of a 10x HDF5 matrix (v3 ``matrix/`` group, or the one genome group of v2 files).

    The sparse structure is checked first: a pointer or gene index out of range would crash the interpreter inside
    scipy, so the file is refused here with the dataset at fault named.
    """
    import h5py

    try:
        with h5py.File(file, "r") as f:
            group = f[VisiumFile.H5_MATRIX_GROUP] if VisiumFile.H5_MATRIX_GROUP in f else f[next(iter(f))]
            barcodes = pd.Index(group[VisiumFile.H5_BARCODES][:].astype(str))
            _check_h5_structure(group, barcodes.size, file)
            return barcodes
    except (OSError, KeyError, StopIteration, TypeError) as e:
        raise ValueError(f"{file}: not a readable 10x HDF5 count matrix ({e}).") from e


_IMAGES = (VisiumFile.HIRES_IMAGE, VisiumFile.LOWRES_IMAGE)
#: Values of ``indices`` checked at a time (a few tens of MB).
_H5_CHUNK = 1 << 22


def _check_h5_structure(group: Any, n_barcodes: int, file: Path) -> None:
    """Raise ``ValueError`` unless ``group`` holds a consistent compressed-sparse-column matrix, genes x barcodes."""
    where = f"{file}: {group.name}"
    shape = np.asarray(group["shape"][:])
    if shape.shape != (2,) or not np.issubdtype(shape.dtype, np.integer) or (shape < 0).any():
        raise ValueError(f"{where}/shape must hold two non-negative integers (genes, barcodes), got {shape.tolist()}.")
    n_genes, n_columns = (int(v) for v in shape)
    if n_columns != n_barcodes:
        raise ValueError(f"{where}/shape says {n_columns} barcodes but {where}/barcodes holds {n_barcodes}.")
    names = "features/id" if "features" in group else "genes"  # v3, v2
    if names in group and group[names].shape[0] != n_genes:
        raise ValueError(f"{where}/shape says {n_genes} genes but {where}/{names} holds {group[names].shape[0]}.")
    indptr = np.asarray(group["indptr"][:])
    n_values, n_indices = group["data"].shape[0], group["indices"].shape[0]
    if indptr.shape != (n_columns + 1,) or not np.issubdtype(indptr.dtype, np.integer):
        raise ValueError(f"{where}/indptr must hold {n_columns + 1} integers (barcodes + 1), got {indptr.shape[0]}.")
    falls = bool((np.diff(indptr) < 0).any())
    if indptr[0] != 0 or falls or indptr[-1] != n_values or n_indices != n_values:
        raise ValueError(
            f"{where}/indptr must rise from 0 to the number of stored values ({n_values} in data, {n_indices} in "
            f"indices), got {int(indptr[0])} to {int(indptr[-1])}" + (", falling in places." if falls else ".")
        )
    indices = group["indices"]
    for start in range(0, n_indices, _H5_CHUNK):
        block = np.asarray(indices[start : start + _H5_CHUNK])
        if block.size and (int(block.min()) < 0 or int(block.max()) >= n_genes):
            bad = int(block[(block < 0) | (block >= n_genes)][0])
            raise ValueError(f"{where}/indices holds gene index {bad}, outside the matrix's {n_genes} genes.")


def _read_mtx_sample(
    root: Path,
    counts: Path,
    dataset_id: str,
    positions: pd.DataFrame,
    positions_file: Path,
    scalefactors: dict[str, Any],
    images: bool,
) -> SpatialData:
    """The layout of :func:`spatialdata_io.visium`, from a MatrixMarket folder."""
    from anndata import AnnData
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    files = _mtx_files(counts)
    x, barcodes, var = read_mtx(*files)
    _check_barcodes(barcodes, files[0], positions, positions_file)
    if x.shape[1] == 0:
        raise ValueError(f"{files[0]}: the count matrix holds no genes.")
    obs = positions.reindex(barcodes)
    coords = obs[[VisiumFile.PXL_COL, VisiumFile.PXL_ROW]].to_numpy(dtype=np.float64)  # x, y
    obs = obs.drop(columns=[VisiumFile.PXL_COL, VisiumFile.PXL_ROW])
    obs[VisiumFile.SPOT_ID.value] = np.arange(len(barcodes))
    obs[Key.REGION] = pd.Categorical([dataset_id] * len(barcodes))
    adata = AnnData(X=x, obs=obs, var=var, obsm={Key.SPATIAL: coords})
    adata.uns[VisiumFile.SPATIAL_DIR.value] = {dataset_id: {"metadata": {}}}
    table = TableModel.parse(adata, region=dataset_id, region_key=Key.REGION, instance_key=VisiumFile.SPOT_ID.value)

    transformations: dict[str, Any] = {dataset_id: Identity()}
    image_files = {}
    for key, image, suffix in (
        (VisiumFile.HIRES_SCALE_KEY, VisiumFile.HIRES_IMAGE, "hires"),
        (VisiumFile.LOWRES_SCALE_KEY, VisiumFile.LOWRES_IMAGE, "lowres"),
    ):
        if key in scalefactors:
            scale = float(scalefactors[key])
            transformations[f"{dataset_id}_downscaled_{suffix}"] = Scale(np.array([scale, scale]), axes=("y", "x"))
            image_files[suffix] = (root / VisiumFile.SPATIAL_DIR / image, scale)
    shapes = ShapesModel.parse(
        coords,
        geometry=0,
        radius=scalefactors[VisiumFile.SPOT_DIAMETER_KEY] / 2,
        index=pd.Index(obs[VisiumFile.SPOT_ID].to_numpy()),
        transformations=transformations,
    )
    imgs = _lazy_images(image_files, dataset_id) if images else {}
    return SpatialData(images=imgs, shapes={dataset_id: shapes}, tables={Key.TABLE: table})


def _mtx_files(folder: Path) -> tuple[Path, Path, Path]:
    """``matrix.mtx``, ``barcodes.tsv`` and ``features.tsv`` (or ``genes.tsv``) of a folder, ``.gz`` or not."""
    found = []
    for names in ((VisiumFile.MTX,), (VisiumFile.BARCODES,), (VisiumFile.FEATURES, VisiumFile.GENES)):
        options = [folder / f"{n}{gz}" for n in names for gz in (VisiumFile.GZIP_SUFFIX, "")]
        found.append(next((f for f in options if f.exists()), None))
    if None in found:
        expected = [f"{VisiumFile.MTX}(.gz)", f"{VisiumFile.BARCODES}(.gz)", f"{VisiumFile.FEATURES}(.gz)"]
        raise FileNotFoundError(
            f"{str(folder)!r} is not a MatrixMarket count folder: expected {expected}; found {listing(folder)}."
        )
    return found[0], found[1], found[2]  # type: ignore[return-value]


def _lazy_images(files: dict[str, tuple[Path, float]], dataset_id: str) -> dict[str, Any]:
    """The hires / lowres PNGs as lazy (dask) images, placed in the full-resolution pixel frame."""
    from dask_image.imread import imread
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity, Scale
    from xarray import DataArray

    out = {}
    for suffix, (file, scale) in files.items():
        if not file.exists():
            continue
        pixels = imread(str(file)).squeeze()
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (c, y, x)
        out[f"{dataset_id}_{suffix}_image"] = Image2DModel.parse(
            DataArray(pixels, dims=("c", "y", "x")),
            transformations={
                f"{dataset_id}_downscaled_{suffix}": Identity(),
                dataset_id: Scale(np.array([1 / scale, 1 / scale]), axes=("y", "x")),
            },
        )
    return out


def _subset(sdata: SpatialData, dataset_id: str, keep: np.ndarray) -> None:
    """Keep the rows ``keep`` of the table and their spots in the shapes, in place."""
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import get_transformation, set_transformation

    table = sdata.tables[Key.TABLE][keep].copy()
    instance_key = table.uns[TableModel.ATTRS_KEY][TableModel.INSTANCE_KEY]
    shapes = sdata.shapes[dataset_id]
    transformations = get_transformation(shapes, get_all=True)
    kept = ShapesModel.parse(shapes.loc[table.obs[instance_key].to_numpy()].copy())
    set_transformation(kept, transformations, set_all=True)
    del sdata.shapes[dataset_id]
    sdata.shapes[dataset_id] = kept
    sdata.tables[Key.TABLE] = table


def _decode_bytes(value: Any) -> Any:
    """Byte strings from HDF5 metadata as str, so the table writes to zarr v3 without unstable dtypes."""
    if isinstance(value, dict):
        return {k: _decode_bytes(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.dtype.kind == "S":
        decoded = [v.decode("utf-8", errors="replace") for v in value.ravel()]
        return decoded[0] if value.size == 1 else decoded
    return value
