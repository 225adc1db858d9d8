"""The public reader :func:`sd_inspire.io.stereoseq`: checks its arguments and dispatches on the file kind."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sd_inspire._constants import Key, StereoseqFile, Technology
from sd_inspire._logging import logger, timed
from sd_inspire._validate import check_choice, check_integer
from sd_inspire.io._stereoseq._files import _FORMATS, _resolve
from sd_inspire.io._stereoseq._gef import _open_h5, _read_cellbin_gef, _read_square_gef
from sd_inspire.io._stereoseq._gem import _read_gem
from sd_inspire.io._stereoseq._output import _build

if TYPE_CHECKING:
    from spatialdata import SpatialData


def stereoseq(
    path: str | Path,
    *,
    bin_size: int = 50,
    dataset_id: str | None = None,
    gene_key: Literal["geneID", "geneName"] = "geneID",
    show_progress_bar: bool = True,
) -> SpatialData:
    r"""Read a Stereo-seq GEM or GEF file into square bins (or segmented cells).

    The file is streamed: a GEM of hundreds of millions of lines is parsed in blocks (by :mod:`pyarrow`) and a GEF
    is read in slices, and the counts are summed per (bin, gene) as they come, so that memory grows with the number
    of non-zero (bin, gene) pairs of the result, not with the size of the file.

    Parameters
    ----------
    path
        One of

        - a GEM: tab-separated text, optionally gzipped (``*.gem``, ``*.gem.gz``), with ``#Key=Value`` header lines
          (``#FileFormat=GEMv0.1``, ``#BinSize=1``, ``#OffsetX=0``, ...), then the column header ``geneID``, ``x``,
          ``y``, ``MIDCount`` (or ``MIDCounts``, ``UMICount``), optionally ``ExonCount`` (ignored) and ``geneName``
          (GEMv0.2), then one line per DNB and gene;
        - a square-bin GEF (``*.gef``, e.g. SAW's ``*.tissue.gef``): its ``geneExp/bin1`` level is read;
        - a cell-bin GEF (``*.cellbin.gef``): one observation per cell;
        - a folder holding exactly one such file (not searched recursively).
    bin_size
        Side of the square bins in DNBs (``50`` = 25 µm). DNB ``(x, y)`` goes to bin
        ``(x // bin_size, y // bin_size)``: bins are anchored at the origin of the DNB coordinates, as SAW's binN levels are. Ignored
        for a cell-bin GEF.
    dataset_id
        Name of the coordinate system and prefix of the shapes element; by default the file name up to its first
        dot.
    gene_key
        Gene identifier used as ``var_names``: ``"geneID"`` or ``"geneName"``. Genes sharing a name are summed
        with ``"geneName"``; the other identifier, where the file has it, goes to ``var`` (the first one seen for a
        name). Files with a single gene column (GEMv0.1, whose ``geneID`` holds the gene name; GEF version 3 or
        older) use that column either way.
    show_progress_bar
        Show the lines read so far while streaming a GEM of 100 MB or more (a full chip takes minutes).

    Returns
    -------
    SpatialData with shapes ``"{dataset_id}_shapes"`` (squares of side ``bin_size``, or cell outlines from
    ``cellBin/cellBorder``, else circles) and table ``"table"``: raw counts (sparse CSR, ``float32``), ``obs_names``
    ``"{bin_x}_{bin_y}"`` (bin indices) or cell ids, ``obsm["spatial"]`` the bin centres
    ``bin_index * bin_size + (bin_size - 1) / 2`` (or the cell centres) in DNB units, ``obs["technology"] = "stereoseq"``,
    ``uns["microns_per_pixel"] = 0.5``, ``uns["bin_size"]`` (square bins) and ``uns["stereoseq"]`` with the file
    format, the gene key and the metadata (GEM header lines or GEF root attributes). Coordinates are those of the
    file: the offsets SAW subtracted (``#OffsetX``, ``offsetX``) are recorded, not added back.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist or a folder holds no GEM or GEF; the message lists what was found.
    ValueError
        If ``bin_size`` is not a positive integer; if a folder holds several GEM or GEF files; if a GEM lacks a
        required column (the message lists the columns found), holds a malformed line, a non-integer or negative
        count (the message names the file and the line), or no data lines; if a GEF lacks a required dataset or
        holds no counts.

    Examples
    --------
    A GEM file lists the counts of each gene at each DNB; bins of 50 DNBs a side sum them:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import sd_inspire as si
    >>> gem = Path(tempfile.mkdtemp()) / "sample.gem"
    >>> _ = gem.write_text("geneID\tx\ty\tMIDCount\nGeneA\t10\t20\t3\nGeneB\t60\t20\t1\nGeneA\t61\t22\t2\n")
    >>> sdata = si.io.stereoseq(gem, bin_size=50)
    >>> sdata["table"].to_df()
         GeneA  GeneB
    0_0    3.0    0.0
    1_0    2.0    1.0
    """
    bin_size = check_integer(bin_size, "bin_size", minimum=1)
    check_choice(gene_key, "gene_key", (str(StereoseqFile.GENE), str(StereoseqFile.GENE_NAME)))
    file, kind = _resolve(Path(path))
    if dataset_id is None:
        dataset_id = re.sub(r"[^A-Za-z0-9_-]", "_", file.name.split(".")[0]) or Technology.STEREOSEQ.value
    with timed(f"Reading Stereo-seq {_FORMATS[kind]} {file}"):
        if kind == "gem":
            parsed = _read_gem(file, bin_size, gene_key, show_progress_bar)
        else:
            with _open_h5(file) as f:
                if StereoseqFile.CELL_BIN in f:
                    parsed = _read_cellbin_gef(f, file, gene_key)
                elif StereoseqFile.GENE_EXP in f:
                    parsed = _read_square_gef(f, file, bin_size, gene_key)
                else:
                    raise ValueError(
                        f"{file}: not a Stereo-seq GEF: no '{StereoseqFile.GENE_EXP}' or '{StereoseqFile.CELL_BIN}' "
                        f"group; found {sorted(f)}."
                    )
        sdata = _build(parsed, dataset_id=dataset_id, file=file)
    table = sdata.tables[Key.TABLE]
    logger.info("Stereo-seq %r: %d observations x %d genes", dataset_id, table.n_obs, table.n_vars)
    return sdata
