"""10x Visium (Space Ranger ``outs/``) reader, delegating to spatialdata-io."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from sd_inspire._constants import Key, Technology, VisiumFile
from sd_inspire._constants._constants import VISIUM_SPOT_DIAMETER_UM
from sd_inspire._logging import logger

if TYPE_CHECKING:
    from collections.abc import Mapping

    from spatialdata import SpatialData


def visium(
    path: str | Path,
    *,
    dataset_id: str | None = None,
    counts_file: str = VisiumFile.FILTERED_COUNTS,
    images: bool = True,
    reader_kwargs: Mapping[str, Any] = MappingProxyType({}),
) -> SpatialData:
    """Read a 10x Visium Space Ranger output folder.

    Reading is delegated to :func:`spatialdata_io.visium`; this adds validation with clear errors, the technology
    and the pixel-to-micron scale.

    Parameters
    ----------
    path
        The Space Ranger ``outs/`` folder, or a folder holding it, with the count matrix and ``spatial/`` (scale
        factors and ``tissue_positions_list.csv`` or ``tissue_positions.csv``).
    dataset_id
        Name used for the elements and the coordinate system; by default the sample folder's name.
    counts_file
        Count matrix inside ``path``.
    images
        Keep the tissue images (loaded lazily); ``False`` drops them.
    reader_kwargs
        Passed on to :func:`spatialdata_io.visium`.

    Returns
    -------
    SpatialData with circles ``"{dataset_id}"`` (spots, radius from ``spot_diameter_fullres``, full-resolution
    pixels), the images, and table ``"table"``: raw counts (sparse CSR), ``obsm["spatial"]`` in pixels,
    ``obs["technology"] = "visium"``, ``uns["microns_per_pixel"]`` (55 µm spot diameter / its size in pixels).

    Raises
    ------
    FileNotFoundError
        If the folder or a required file is missing; the message lists what was expected and what was found.
    """
    import spatialdata_io

    root = _find_outs(Path(path), counts_file)
    if dataset_id is None:
        dataset_id = root.parent.name if root.name == "outs" else root.name
    with open(root / VisiumFile.SPATIAL_DIR / VisiumFile.SCALEFACTORS) as f:
        scalefactors = json.load(f)
    diameter = scalefactors.get(VisiumFile.SPOT_DIAMETER_KEY)
    if not diameter or float(diameter) <= 0:
        raise ValueError(f"{root / VisiumFile.SPATIAL_DIR / VisiumFile.SCALEFACTORS}: no valid spot_diameter_fullres.")
    logger.info("Reading Visium sample %r from %s", dataset_id, root)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*to categorical dtype", category=UserWarning)
        sdata = spatialdata_io.visium(root, dataset_id=dataset_id, counts_file=counts_file, **dict(reader_kwargs))
    if not images:
        for name in list(sdata.images):
            del sdata.images[name]
    table = sdata.tables[Key.TABLE]
    table.obs[Key.TECHNOLOGY] = Technology.VISIUM.value
    table.obs[Key.TECHNOLOGY] = table.obs[Key.TECHNOLOGY].astype("category")
    table.uns["microns_per_pixel"] = VISIUM_SPOT_DIAMETER_UM / float(diameter)
    table.uns["spatial"] = _decode_bytes(table.uns.get("spatial", {}))
    sdata.attrs["technology"] = Technology.VISIUM.value
    return sdata


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


def _find_outs(path: Path, counts_file: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"Visium folder {str(path)!r} does not exist or is not a folder.")
    root = path / "outs" if (path / "outs").is_dir() and not (path / counts_file).exists() else path
    spatial = root / VisiumFile.SPATIAL_DIR
    missing = [str(counts_file)] if not (root / counts_file).exists() else []
    if not (spatial / VisiumFile.SCALEFACTORS).exists():
        missing.append(f"{VisiumFile.SPATIAL_DIR}/{VisiumFile.SCALEFACTORS}")
    if not any((spatial / p).exists() for p in (VisiumFile.POSITIONS_V1, VisiumFile.POSITIONS_V2)):
        missing.append(f"{VisiumFile.SPATIAL_DIR}/{VisiumFile.POSITIONS_V1} or {VisiumFile.POSITIONS_V2}")
    if missing:
        found = sorted(str(p.relative_to(root)) for p in root.glob("*")) + sorted(
            f"{VisiumFile.SPATIAL_DIR}/{p.name}" for p in spatial.glob("*")
        )
        raise FileNotFoundError(f"{str(root)!r} is not a Visium output folder: missing {missing}; found {found}.")
    return root
