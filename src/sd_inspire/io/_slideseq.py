"""Slide-seq puck reader (bead locations and a digital expression matrix); spatialdata-io reads no raw Slide-seq."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sd_inspire._constants import Key, SlideseqFile, Technology
from sd_inspire._constants._constants import SLIDESEQ_BEAD_DIAMETER_UM, SLIDESEQ_MICRONS_PER_PIXEL
from sd_inspire._logging import logger, timed
from sd_inspire.io._build import build_spatialdata
from sd_inspire.io._utils import (
    check_unique,
    examples,
    head_rows,
    listing,
    match_ids,
    read_dense_matrix,
    read_id_table,
    read_mtx,
    resolve_file,
)

if TYPE_CHECKING:
    from scipy import sparse
    from spatialdata import SpatialData


_BEAD_FILES = (SlideseqFile.BEADS_FOR_R, SlideseqFile.BEADS, SlideseqFile.BEADS_ALT)


def slideseq(
    path: str | Path,
    *,
    dataset_id: str | None = None,
    beads_file: str | Path | None = None,
    counts_file: str | Path | None = None,
    microns_per_pixel: float = SLIDESEQ_MICRONS_PER_PIXEL,
    bead_diameter: float = SLIDESEQ_BEAD_DIAMETER_UM,
    chunk_size: int | None = None,
) -> SpatialData:
    r"""Read a Slide-seq puck: bead locations and a digital expression matrix.

    Beads are matched on their barcodes between the two files; beads found in only one of them are reported in a
    warning and left out.

    Parameters
    ----------
    path
        Folder holding the two files.
    dataset_id
        Name of the coordinate system and of the shapes element ``"{dataset_id}_shapes"``; by default the folder's
        name.
    beads_file
        Bead locations, a csv with columns ``barcodes``, ``xcoord``, ``ycoord`` (in puck pixels), as a name inside
        ``path`` or a path. By default the first present of ``BeadLocationsForR.csv``, ``bead_locations.csv`` and
        ``BeadLocations.csv``.
    counts_file
        The digital expression matrix, as a name inside ``path`` or a path. By default the one present of

        - ``MappedDGEForR.csv``: genes × beads, comma-separated, gene names in the first column;
        - ``*.digital_expression.txt(.gz)``: genes × beads, tab-separated, first header cell ``GENE``;
        - ``*.mtx(.gz)``: MatrixMarket, with ``*barcodes.tsv(.gz)`` and ``*features.tsv(.gz)`` or
          ``*genes.tsv(.gz)`` beside it;
        - ``*.h5ad``: beads × genes AnnData of raw counts, bead barcodes as ``obs_names``.

        Other ``.csv`` and ``.txt``/``.tsv`` files are read as comma- and tab-separated genes × beads matrices.
    microns_per_pixel
        Size of a puck pixel, recorded in ``uns["microns_per_pixel"]``.
    bead_diameter
        Bead diameter in µm, for the circles.
    chunk_size
        Genes per chunk when reading a dense text matrix (which is converted to sparse chunk by chunk, so the whole
        dense matrix never sits in memory); by default about 10 million values per chunk.

    Returns
    -------
    SpatialData with circles ``"{dataset_id}_shapes"`` (beads, in puck pixels) and table ``"table"``: raw counts
    (sparse CSR, beads × genes), ``obsm["spatial"]`` (``xcoord``, ``ycoord``), ``obs["technology"] = "slideseq"``,
    ``uns["microns_per_pixel"]``.

    Raises
    ------
    FileNotFoundError
        If the folder or a file is missing; the message lists what was expected and what was found.
    ValueError
        If a file cannot be parsed (the message names it), barcodes repeat, the matrix is empty, several candidate
        matrices are present, or no barcode is in both files.

    Examples
    --------
    A puck folder with bead locations and a genes x beads count table (the "ForR" layout):

    >>> import tempfile
    >>> from pathlib import Path
    >>> import sd_inspire as si
    >>> puck = Path(tempfile.mkdtemp())
    >>> _ = (puck / "BeadLocationsForR.csv").write_text("barcodes,xcoord,ycoord\nAAAC,10.5,20.0\nAAAG,30.0,42.5\n")
    >>> _ = (puck / "MappedDGEForR.csv").write_text(",AAAC,AAAG\nGeneA,3,0\nGeneB,1,2\n")
    >>> sdata = si.io.slideseq(puck)
    >>> sdata["table"].to_df()
          GeneA  GeneB
    AAAC    3.0    1.0
    AAAG    0.0    2.0
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"Slide-seq folder {str(folder)!r} does not exist or is not a folder.")
    beads_path = resolve_file(folder, beads_file) if beads_file is not None else find_bead_file(folder)
    counts_path = resolve_file(folder, counts_file) if counts_file is not None else _find_counts(folder)
    missing = []
    if beads_path is None:
        missing.append(" or ".join(_BEAD_FILES))
    if counts_path is None:
        missing.append(
            f"{SlideseqFile.DGE_FOR_R} or *{SlideseqFile.DGE_SUFFIX}(.gz) or *{SlideseqFile.MTX_SUFFIX}(.gz) "
            f"or *{SlideseqFile.H5AD_SUFFIX}"
        )
    if missing:
        raise FileNotFoundError(
            f"{str(folder)!r} is not a Slide-seq folder: missing {missing}; found {listing(folder)}."
        )
    assert beads_path is not None
    assert counts_path is not None
    if microns_per_pixel <= 0 or bead_diameter <= 0:
        raise ValueError("`microns_per_pixel` and `bead_diameter` must be positive.")
    if dataset_id is None:
        dataset_id = folder.resolve().name

    with timed(f"Reading Slide-seq puck {dataset_id!r} from {folder}"):
        beads = _read_beads(beads_path)
        counts, barcodes, var = _read_counts(counts_path, chunk_size)
        if counts.shape[1] == 0:
            raise ValueError(f"{counts_path}: the matrix holds no genes.")
        common = match_ids(
            barcodes, beads.index, what="barcodes", left_name=counts_path.name, right_name=beads_path.name
        )
        counts = counts[barcodes.get_indexer(common)]
        var.index = _unique_genes(pd.Index(var.index), counts_path)
        logger.info("%d beads × %d genes", counts.shape[0], counts.shape[1])
        return build_spatialdata(
            counts,
            obs_names=common,
            var_names=var.index,
            var=var if var.shape[1] else None,
            coords=beads.loc[common, [SlideseqFile.X.value, SlideseqFile.Y.value]].to_numpy(),
            dataset_id=dataset_id,
            technology=Technology.SLIDESEQ,
            shape="circle",
            size=bead_diameter / microns_per_pixel,
            uns={Key.MICRONS_PER_PIXEL: float(microns_per_pixel)},
            source=str(folder),
            reader="sd_inspire.io.slideseq",
        )


def find_bead_file(folder: Path) -> Path | None:
    """The bead locations file of a Slide-seq folder, or ``None``."""
    return next((folder / name for name in _BEAD_FILES if (folder / name).is_file()), None)


def _find_counts(folder: Path) -> Path | None:
    """The one digital expression matrix of a folder, or ``None``; raise if several are present."""
    if (folder / SlideseqFile.DGE_FOR_R).is_file():
        return folder / SlideseqFile.DGE_FOR_R
    candidates = sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and (
            _strip_gz(p.name).endswith((SlideseqFile.DGE_SUFFIX, SlideseqFile.MTX_SUFFIX))
            or p.name.endswith(SlideseqFile.H5AD_SUFFIX)
        )
    )
    if len(candidates) > 1:
        raise ValueError(
            f"{str(folder)!r} holds several count matrices ({[p.name for p in candidates]}); choose one with "
            "`counts_file=`."
        )
    return candidates[0] if candidates else None


def _strip_gz(name: str) -> str:
    return name.removesuffix(SlideseqFile.GZIP_SUFFIX)


def _read_beads(file: Path) -> pd.DataFrame:
    """Bead coordinates indexed by barcode (columns ``xcoord``, ``ycoord``)."""
    table = read_id_table(file)
    first = _first_header_cell(file)
    if first not in (SlideseqFile.BARCODE, SlideseqFile.BARCODE_ALT) or not {SlideseqFile.X, SlideseqFile.Y} <= set(
        table.columns
    ):
        raise ValueError(
            f"{file}: expected columns {[SlideseqFile.BARCODE.value, SlideseqFile.X.value, SlideseqFile.Y.value]}, "
            f"found {[first, *table.columns]}."
        )
    if table.empty:
        raise ValueError(f"{file}: no beads.")
    xy = table[[SlideseqFile.X.value, SlideseqFile.Y.value]].apply(pd.to_numeric, errors="coerce")
    bad = ~np.isfinite(xy.to_numpy(dtype=np.float64)).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{file}: {int(bad.sum())} beads with missing or non-numeric coordinates (e.g. {examples(xy.index[bad])})."
        )
    return xy.astype(np.float64)


def _first_header_cell(file: Path) -> str:
    return head_rows(file, ",", 1)[0][0]


def _read_counts(file: Path, chunk_size: int | None) -> tuple[sparse.csr_matrix, pd.Index, pd.DataFrame]:
    """Beads × genes counts, the bead barcodes and ``var`` (indexed by unique gene names)."""
    name = _strip_gz(file.name)
    if name.endswith(SlideseqFile.H5AD_SUFFIX):
        return _read_h5ad(file)
    if name.endswith(SlideseqFile.MTX_SUFFIX):
        barcodes_file = _companion(file, (SlideseqFile.MTX_BARCODES_SUFFIX,))
        features_file = _companion(file, (SlideseqFile.MTX_FEATURES_SUFFIX, SlideseqFile.MTX_GENES_SUFFIX))
        counts, barcodes, var = read_mtx(file, barcodes_file, features_file)
        return counts, barcodes, var
    sep = "," if name.lower().endswith(SlideseqFile.CSV_SUFFIX) else "\t"
    counts, barcodes, genes = read_dense_matrix(file, sep=sep, chunk_size=chunk_size)
    check_unique(barcodes, what="barcodes", file=file)
    return counts, barcodes, pd.DataFrame(index=genes)


def _companion(matrix: Path, suffixes: tuple[str, ...]) -> Path:
    """The barcodes or features file beside a MatrixMarket matrix: the one sharing the longest prefix with it."""
    candidates = [p for p in matrix.parent.iterdir() if p.is_file() and _strip_gz(p.name).endswith(suffixes)]
    if not candidates:
        raise FileNotFoundError(
            f"No *{'(.gz) or *'.join(suffixes)}(.gz) beside {str(matrix)!r}; found {listing(matrix.parent)}."
        )
    return max(candidates, key=lambda p: (len(os.path.commonprefix([p.name, matrix.name])), p.name))


def _read_h5ad(file: Path) -> tuple[sparse.csr_matrix, pd.Index, pd.DataFrame]:
    import anndata as ad
    from scipy import sparse

    try:
        adata = ad.read_h5ad(file)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{file}: not a readable h5ad file ({e}).") from e
    barcodes = pd.Index(adata.obs_names.astype(str))
    check_unique(barcodes, what="barcodes", file=file)
    if adata.n_obs == 0:
        raise ValueError(f"{file}: the matrix holds no beads.")
    counts = sparse.csr_matrix(adata.X, dtype=np.float32)
    return counts, barcodes, pd.DataFrame(index=pd.Index(adata.var_names.astype(str)))


def _unique_genes(genes: pd.Index, file: Path) -> pd.Index:
    from anndata.utils import make_index_unique

    if genes.is_unique:
        return genes
    dup = genes[genes.duplicated()].unique()
    warnings.warn(
        f"{file}: {len(dup)} gene names repeat (e.g. {examples(dup)}); they are made unique with suffixes '-1', ...",
        UserWarning,
        stacklevel=3,  # the caller of slideseq()
    )
    return make_index_unique(genes)
