"""STOmics Stereo-seq reader: GEM text files and square-bin or cell-bin GEF (HDF5) files, in bounded memory.

spatialdata-io's reader needs the whole SAW output tree, reads no GEM and expands bin1 in Python; this reads a single
GEM or GEF file (or a folder holding one) and sums its DNB-level counts into square bins of any size while streaming,
so memory grows with the number of non-zero (bin, gene) pairs, not with the number of lines.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from sd_inspire._constants import Key, StereoseqFile, Technology
from sd_inspire._logging import logger, timed
from sd_inspire.io._utils import is_gzipped, listing

if TYPE_CHECKING:
    from typing import IO

    import geopandas as gpd
    import h5py
    import pandas as pd
    import pyarrow as pa
    from scipy import sparse
    from spatialdata import SpatialData

#: Pitch of the Stereo-seq DNB lattice in µm: coordinates are in DNB units, 0.5 µm apart (bin50 = 25 µm).
MICRONS_PER_DNB = 0.5

# Tuning of the streaming (module constants so that tests can shrink them and cross chunk boundaries).
_BLOCK_SIZE = 1 << 20  # bytes of GEM text per batch (~45,000 lines); pyarrow holds ~40 blocks at a time
#: Files from this size on get a progress bar (smaller ones take seconds).
_PROGRESS_BYTES = 100 * 2**20
_ARROW_THREADS = False  # threaded parsing reads further ahead, for no gain: sorting the keys dominates
_GEF_CHUNK = 1 << 22  # rows of a GEF dataset read at a time
_STAGE_ROWS = 1 << 19  # rows of GEM or GEF staged before they are reduced and split among buckets
_MERGE_MIN = 1 << 16  # pending (bin, gene) sums of a bucket merged into it from this many on (or an eighth of it)
_BUCKET_SPAN_DNB = 256  # width in DNBs (~128 µm) of the stripe of bins a bucket of sums covers

# A (bin, gene) pair packed into one uint64: bin x (22 bits) | bin y (22 bits) | gene code (20 bits).
_GENE_BITS = 20
_COORD_BITS = 22
_COORD_OFFSET = 1 << (_COORD_BITS - 1)  # bin indices from -2**21 to 2**21 - 1
_GENE_MASK = np.uint64((1 << _GENE_BITS) - 1)
_COORD_MASK = np.uint64((1 << _COORD_BITS) - 1)
_BORDER_PADDING = 32767  # fills the unused vertices of cellBin/cellBorder (SHRT_MAX in geftools)
_COUNT_COLUMNS = (StereoseqFile.COUNT, StereoseqFile.COUNT_V1, StereoseqFile.COUNT_UMI)
_GENE_FIELDS = (StereoseqFile.GENE, StereoseqFile.GENE_NAME, StereoseqFile.GENE_DATASET)
_FORMATS = {"gem": "GEM", "gef": "square-bin GEF", "cellbin": "cell-bin GEF"}
_EXPECTED = (
    f"a GEM (*{StereoseqFile.GEM_SUFFIX}, *{StereoseqFile.GEM_SUFFIX}{StereoseqFile.GZIP_SUFFIX}), "
    f"a square-bin GEF (*{StereoseqFile.GEF_SUFFIX}) or a cell-bin GEF (*{StereoseqFile.CELLBIN_GEF_SUFFIX})"
)

_Kind = Literal["gem", "gef", "cellbin"]


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
    if isinstance(bin_size, bool) or not isinstance(bin_size, int | np.integer) or bin_size < 1:
        raise ValueError(f"`bin_size` must be a positive integer (DNBs per bin side), got {bin_size!r}.")
    bin_size = int(bin_size)
    if gene_key not in (StereoseqFile.GENE, StereoseqFile.GENE_NAME):
        raise ValueError(f"`gene_key` must be '{StereoseqFile.GENE}' or '{StereoseqFile.GENE_NAME}', got {gene_key!r}.")
    file, kind = _resolve(Path(path))
    if dataset_id is None:
        dataset_id = re.sub(r"[^A-Za-z0-9_-]", "_", file.name.split(".")[0]) or Technology.STEREOSEQ.value
    with timed(f"Reading Stereo-seq {_FORMATS[kind]} {file}"):
        if kind == "gem":
            sdata = _read_gem(file, bin_size, dataset_id, gene_key, show_progress_bar)
        else:
            with _open_h5(file) as f:
                if StereoseqFile.CELL_BIN in f:
                    sdata = _read_cellbin_gef(f, file, dataset_id, gene_key)
                elif StereoseqFile.GENE_EXP in f:
                    sdata = _read_square_gef(f, file, bin_size, dataset_id, gene_key)
                else:
                    raise ValueError(
                        f"{file}: not a Stereo-seq GEF: no '{StereoseqFile.GENE_EXP}' or '{StereoseqFile.CELL_BIN}' "
                        f"group; found {sorted(f)}."
                    )
    table = sdata.tables[Key.TABLE]
    logger.info("Stereo-seq %r: %d observations x %d genes", dataset_id, table.n_obs, table.n_vars)
    return sdata


# --------------------------------------------------------------------------------------------------------------------
# finding the file


def _kind(path: Path) -> _Kind | None:
    name = path.name.lower()
    if name.endswith(StereoseqFile.CELLBIN_GEF_SUFFIX):
        return "cellbin"
    if name.endswith(StereoseqFile.GEF_SUFFIX):
        return "gef"
    if name.endswith((StereoseqFile.GEM_SUFFIX, StereoseqFile.GEM_SUFFIX + StereoseqFile.GZIP_SUFFIX)):
        return "gem"
    return None


def _resolve(path: Path) -> tuple[Path, _Kind]:
    if not path.exists():
        raise FileNotFoundError(f"Stereo-seq input {str(path)!r} does not exist; expected {_EXPECTED}, or a folder.")
    if path.is_dir():
        candidates = sorted(p for p in path.iterdir() if p.is_file() and _kind(p) is not None)
        if not candidates:
            raise FileNotFoundError(
                f"{str(path)!r} holds no Stereo-seq file: expected {_EXPECTED}; found {listing(path)}."
            )
        if len(candidates) > 1:
            raise ValueError(
                f"{str(path)!r} holds {len(candidates)} Stereo-seq files, {[p.name for p in candidates]}: "
                "pass one of them as `path`."
            )
        path = candidates[0]
    kind = _kind(path)
    if kind is None:
        raise ValueError(f"{str(path)!r}: unknown file type; expected {_EXPECTED}.")
    return path, kind


def _open_h5(path: Path) -> h5py.File:
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 (GEF) file: {err}") from err


# --------------------------------------------------------------------------------------------------------------------
# summing counts per (bin, gene) in bounded memory


def _reduce(keys: np.ndarray, values: np.ndarray, runs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys and the sums of their values (``runs``: the keys are a few sorted runs)."""
    if keys.size == 0:
        return keys, values
    order = np.argsort(keys, kind="stable" if runs else "quicksort")  # timsort merges sorted runs
    keys = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return keys[starts], np.add.reduceat(values[order], starts)


class _Bucket:
    """Sorted unique keys with their sums, plus reduced parts waiting to be merged in.

    The sums are held in the narrowest unsigned type that fits them (``uint16`` until a sum exceeds 65,535).
    """

    __slots__ = ("keys", "n_pending", "pending", "values")

    def __init__(self) -> None:
        self.keys = np.empty(0, np.uint64)
        self.values = np.empty(0, np.uint16)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.n_pending = 0

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        self.pending.append((keys, values))
        self.n_pending += keys.size
        if self.n_pending >= max(_MERGE_MIN, self.keys.size // 8):
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        keys, values = _reduce(
            np.concatenate([k for k, _ in self.pending]), np.concatenate([v for _, v in self.pending]), runs=True
        )
        self.pending, self.n_pending = [], 0
        pos = np.searchsorted(self.keys, keys)
        hit = pos < self.keys.size
        hit[hit] = self.keys[pos[hit]] == keys[hit]
        new = ~hit
        summed = self.values[pos[hit]] + values[hit]  # in the wider type of `values`
        top = max(int(summed.max(initial=0)), int(values[new].max(initial=0)))
        if top > np.iinfo(self.values.dtype).max:
            self.values = self.values.astype(np.uint32 if top <= np.iinfo(np.uint32).max else np.uint64)
        self.values[pos[hit]] = summed  # keys are unique on both sides: no repeated positions
        if new.any():
            self.keys = np.insert(self.keys, pos[new], keys[new])
            self.values = np.insert(self.values, pos[new], values[new].astype(self.values.dtype))


class _SumByKey:
    """Sums of counts per packed (bin, gene) key, split into buckets (stripes of bins) of sorted unique keys.

    Added batches are staged up to `_STAGE_ROWS` rows, then reduced and split among the buckets; a bucket merges its
    pending parts once they reach an eighth of its size, so the memory held is about 10 bytes per distinct key, and
    the transient of a merge is bounded by one bucket.
    """

    def __init__(self, bin_size: int) -> None:
        span = max(0, round(np.log2(max(_BUCKET_SPAN_DNB / bin_size, 1))))
        self._shift = np.uint64(_GENE_BITS + _COORD_BITS + span)  # the high bits of bin x
        self._buckets: dict[int, _Bucket] = {}
        self._dtype: type[np.unsignedinteger] = np.uint32
        self._staged: list[tuple[np.ndarray, np.ndarray]] = []
        self._n_staged = 0
        self.total = 0

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        if keys.size == 0:
            return
        self.total += int(values.sum())
        if self.total >= np.iinfo(np.uint32).max:
            self._dtype = np.uint64
        self._staged.append((keys, values.astype(np.int64, copy=False)))
        self._n_staged += keys.size
        if self._n_staged >= _STAGE_ROWS:
            self._distribute()

    def _distribute(self) -> None:
        if not self._staged:
            return
        keys = np.concatenate([k for k, _ in self._staged])
        values = np.concatenate([v for _, v in self._staged])
        self._staged, self._n_staged = [], 0
        keys, values = _reduce(keys, values)
        values = values.astype(self._dtype)
        ids = keys >> self._shift
        cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        for start, stop in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [keys.size])), strict=True):
            bucket = self._buckets.setdefault(int(ids[start]), _Bucket())
            bucket.add(keys[start:stop].copy(), values[start:stop].copy())

    def to_csr(self, n_genes: int) -> tuple[sparse.csr_matrix, np.ndarray]:
        """Counts (bins x genes) and the packed bin keys of the rows; empties the buckets."""
        from scipy import sparse

        self._distribute()
        for bucket in self._buckets.values():
            bucket.flush()
        nnz = sum(bucket.keys.size for bucket in self._buckets.values())
        indices = np.empty(nnz, np.int32)
        data = np.empty(nnz, np.float32)
        bins, lengths = [np.empty(0, np.uint64)], [np.empty(0, np.int64)]
        pos = 0
        for bucket_id in sorted(self._buckets):  # buckets hold disjoint, increasing key ranges
            bucket = self._buckets.pop(bucket_id)
            keys, n = bucket.keys, bucket.keys.size
            indices[pos : pos + n] = keys & _GENE_MASK
            data[pos : pos + n] = bucket.values
            del bucket
            keys = keys >> np.uint64(_GENE_BITS)
            starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
            bins.append(keys[starts])
            lengths.append(np.diff(np.concatenate((starts, [n]))))
            pos += n
        indptr = np.concatenate(([0], np.cumsum(np.concatenate(lengths))))
        bin_keys = np.concatenate(bins)
        counts = sparse.csr_matrix((data, indices, indptr), shape=(bin_keys.size, n_genes))
        counts.eliminate_zeros()
        return counts, bin_keys


def _bin_keys(x: np.ndarray, y: np.ndarray, genes: np.ndarray, bin_size: int, file: Path) -> np.ndarray:
    """Pack (x // bin_size, y // bin_size, gene code) into uint64 keys."""
    keys = np.zeros(x.size, np.uint64)
    for coord, shift in ((x, _GENE_BITS + _COORD_BITS), (y, _GENE_BITS)):
        index = np.floor_divide(coord.astype(np.int64, copy=False), bin_size)
        if index.size and (index.min() < -_COORD_OFFSET or index.max() >= _COORD_OFFSET):
            raise ValueError(
                f"{file}: DNB coordinates from {coord.min()} to {coord.max()} exceed what bin{bin_size} can index "
                f"(bin indices within +-{_COORD_OFFSET})."
            )
        keys |= (index + _COORD_OFFSET).astype(np.uint64) << np.uint64(shift)
    return keys | genes.astype(np.uint64)


def _bin_table(sums: _SumByKey, n_genes: int, bin_size: int) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """Counts, obs names ``"{bin_x}_{bin_y}"`` and bin centres in DNB units."""
    counts, bin_keys = sums.to_csr(n_genes)
    bx = (bin_keys >> np.uint64(_COORD_BITS)).astype(np.int64) - _COORD_OFFSET
    by = (bin_keys & _COORD_MASK).astype(np.int64) - _COORD_OFFSET
    names = np.char.add(np.char.add(bx.astype(str), "_"), by.astype(str))
    centres = np.column_stack((bx, by)) * float(bin_size) + (bin_size - 1) / 2
    return counts, names, centres


def _check_counts(values: np.ndarray, file: Path, what: str) -> None:
    if values.dtype.kind == "f" and not np.array_equal(values, np.floor(values)):
        raise ValueError(f"{file}: {what} holds non-integer counts.")
    if values.size and values.min() < 0:
        raise ValueError(f"{file}: {what} holds negative counts.")


# --------------------------------------------------------------------------------------------------------------------
# GEM


@dataclass(frozen=True)
class _GemLayout:
    metadata: dict[str, str]
    n_header_lines: int  # "#" lines before the column header
    header_bytes: int  # their length in bytes (uncompressed)
    columns: list[str]
    gene: str  # column used as var_names
    other_gene: str | None  # the other gene column, if present
    count: str
    gzipped: bool


def _open_text(file: Path, gzipped: bool) -> IO[str]:
    if gzipped:
        return gzip.open(file, "rt", encoding="utf-8", errors="replace")
    return open(file, encoding="utf-8", errors="replace")


def _gem_layout(file: Path, gene_key: str) -> _GemLayout:
    gzipped = is_gzipped(file)
    metadata: dict[str, str] = {}
    n_header = n_bytes = 0
    header: str | None = None
    comment = StereoseqFile.COMMENT.encode()
    try:
        with gzip.open(file, "rb") if gzipped else open(file, "rb") as f:
            for raw in f:
                if not raw.startswith(comment):
                    header = raw.decode("utf-8", errors="replace")
                    break
                n_header += 1
                n_bytes += len(raw)
                key, sep, value = raw[1:].decode("utf-8", errors="replace").rstrip("\r\n").partition("=")
                if sep:
                    metadata[key.strip()] = value.strip()
    except (OSError, EOFError) as err:
        raise ValueError(f"{file}: cannot read the GEM: {err}") from err
    if header is None:
        raise ValueError(f"{file}: no data lines: the GEM holds {n_header} header line(s) and no column header.")
    columns = header.rstrip("\r\n").split("\t")
    count = next((c for c in _COUNT_COLUMNS if c in columns), None)
    missing = [str(c) for c in (StereoseqFile.GENE, StereoseqFile.X, StereoseqFile.Y) if c not in columns]
    if count is None:
        missing.append(" or ".join(_COUNT_COLUMNS))
    if missing:
        raise ValueError(f"{file}: not a Stereo-seq GEM: missing column(s) {missing}; found columns {columns}.")
    gene = gene_key if gene_key in columns else StereoseqFile.GENE
    other = next((c for c in (StereoseqFile.GENE, StereoseqFile.GENE_NAME) if c != gene and c in columns), None)
    return _GemLayout(metadata, n_header, n_bytes, columns, gene, other, count, gzipped)


class _GeneCodes:
    """A growing dictionary from gene identifiers to integer codes, in order of first appearance.

    Each batch's dictionary is looked up in the genes seen so far by :func:`pyarrow.compute.index_in` (hashing in
    C++), so that only new genes cost Python work.
    """

    def __init__(self, file: Path) -> None:
        import pyarrow as pa

        self.file = file
        self.known = pa.array([], pa.string())
        self.other: list[str] = []

    def __len__(self) -> int:
        return len(self.known)

    def encode(self, column: pa.DictionaryArray, other: pa.DictionaryArray | None) -> np.ndarray:
        """Codes of a batch's genes; records the other identifier of genes seen for the first time."""
        import pyarrow as pa
        from pyarrow import compute

        dictionary = column.dictionary
        indices = column.indices.to_numpy(zero_copy_only=False)
        lut = compute.index_in(dictionary, value_set=self.known).fill_null(-1).to_numpy(zero_copy_only=False)
        lut = lut.astype(np.int64)
        new = np.flatnonzero((lut < 0) & (np.bincount(indices, minlength=len(dictionary)) > 0))
        if new.size:
            n_before = len(self.known)
            if n_before + new.size > 1 << _GENE_BITS:
                raise ValueError(f"{self.file}: more than {1 << _GENE_BITS} distinct genes.")
            lut[new] = np.arange(n_before, n_before + new.size)
            added = dictionary.take(pa.array(new)).cast(pa.string())
            if any(name is None or not name.strip() for name in added.to_pylist()):
                raise ValueError(
                    f"{self.file}: a line has an empty gene identifier; fix or remove such lines (a gene named '' "
                    "would be created)."
                )
            self.known = pa.concat_arrays([self.known, added])
            if other is not None:
                first_row = np.full(len(dictionary), -1)
                first_row[indices[::-1]] = np.arange(indices.size)[::-1]  # the last write wins: the first occurrence
                other_indices = other.indices.to_numpy(zero_copy_only=False)
                self.other.extend(other.dictionary.take(pa.array(other_indices[first_row[new]])).to_pylist())
        return lut[indices]

    def names(self) -> list[str]:
        return self.known.to_pylist()


def _read_gem(
    file: Path, bin_size: int, dataset_id: str, gene_key: str, show_progress_bar: bool = False
) -> SpatialData:
    import pandas as pd
    import pyarrow as pa
    from pyarrow import csv
    from tqdm.auto import tqdm

    layout = _gem_layout(file, gene_key)
    columns = [layout.gene, StereoseqFile.X, StereoseqFile.Y, layout.count]
    dictionary = pa.dictionary(pa.int32(), pa.string())
    types = {
        layout.gene: dictionary,
        StereoseqFile.X: pa.int32(),
        StereoseqFile.Y: pa.int32(),
        layout.count: pa.int64(),
    }
    if layout.other_gene is not None:
        columns.append(layout.other_gene)
        types[layout.other_gene] = dictionary
    genes = _GeneCodes(file)
    sums = _SumByKey(bin_size)
    rows = 0
    big = file.stat().st_size >= _PROGRESS_BYTES
    bar = tqdm(desc=f"Reading {file.name}", unit=" lines", unit_scale=True, disable=not (show_progress_bar and big))
    try:
        stream = pa.input_stream(str(file), compression="gzip" if layout.gzipped else None)
        stream.read(layout.header_bytes)  # the "#" lines: the column header comes next
        reader = csv.open_csv(
            stream,
            read_options=csv.ReadOptions(block_size=_BLOCK_SIZE, use_threads=_ARROW_THREADS),
            parse_options=csv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=csv.ConvertOptions(
                column_types=types,
                include_columns=columns,
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
            memory_pool=pa.system_memory_pool(),  # returns freed batches to the OS; the default pool keeps them
        )
        for batch in reader:
            counts = batch.column(3).to_numpy()
            if counts.size and counts.min() < 0:
                raise _gem_error(file, layout, rows, "a negative count")
            codes = genes.encode(batch.column(0), batch.column(4) if layout.other_gene is not None else None)
            x = batch.column(1).to_numpy()
            y = batch.column(2).to_numpy()
            sums.add(_bin_keys(x, y, codes, bin_size, file), counts)
            rows += batch.num_rows
            bar.update(batch.num_rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise _gem_error(file, layout, rows, str(err)) from err
    except (OSError, EOFError) as err:  # a truncated or corrupt gzip stream
        raise ValueError(f"{file}: cannot read the GEM after {rows} data lines: {err}") from err
    finally:
        bar.close()
    if rows == 0:
        raise ValueError(f"{file}: no data lines: the GEM holds a header and no counts.")
    logger.info("Read %d GEM lines, %d genes, %d counts", rows, len(genes), sums.total)
    counts, names, centres = _bin_table(sums, len(genes), bin_size)
    var = pd.DataFrame({str(layout.other_gene): genes.other}) if layout.other_gene is not None else None
    return _build(
        counts,
        obs_names=names,
        var_names=genes.names(),
        coords=centres,
        dataset_id=dataset_id,
        file=file,
        bin_size=bin_size,
        var=var,
        file_format=_FORMATS["gem"],
        gene_key=layout.gene,
        metadata=layout.metadata,
    )


def _gem_error(file: Path, layout: _GemLayout, rows_ok: int, problem: str) -> ValueError:
    """Locate the first bad line (after the ``rows_ok`` data lines known to be fine) for a clear message."""
    bad = _first_bad_line(file, layout, rows_ok)
    if bad is None:
        return ValueError(f"{file}: malformed GEM after {rows_ok} data lines: {problem}")
    line_number, reason, text = bad
    return ValueError(f"{file}: line {line_number}: {reason}: {text[:200]!r}")


def _first_bad_line(file: Path, layout: _GemLayout, rows_ok: int) -> tuple[int, str, str] | None:
    integer = re.compile(r"[+-]?\d+")
    n_columns = len(layout.columns)
    position = {name: i for i, name in enumerate(layout.columns)}
    first = layout.n_header_lines + 2 + rows_ok  # every earlier line has been parsed
    with _open_text(file, layout.gzipped) as f:
        for line_number, line in enumerate(f, start=1):
            if line_number < first:
                continue
            text = line.rstrip("\r\n")
            if not text:
                continue
            fields = text.split("\t")
            if len(fields) != n_columns:
                return line_number, f"expected {n_columns} tab-separated fields, found {len(fields)}", text
            for name in (StereoseqFile.X, StereoseqFile.Y):
                value = fields[position[name]]
                if not integer.fullmatch(value) or not -(2**31) <= int(value) < 2**31:
                    return line_number, f"{name} is not an integer DNB coordinate", text
            count = fields[position[layout.count]]
            if not integer.fullmatch(count) or int(count) < 0:
                return line_number, f"{layout.count} is not a non-negative integer", text
            if not fields[position[layout.gene]]:
                return line_number, f"empty {layout.gene}", text
    return None


# --------------------------------------------------------------------------------------------------------------------
# GEF


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in values.tolist()]


def _gef_genes(
    genes: np.ndarray, file: Path, where: str, gene_key: str
) -> tuple[np.ndarray, list[str], pd.DataFrame | None, str]:
    """Codes of the file's genes after merging equal identifiers, the identifiers, ``var`` and the key used."""
    import pandas as pd

    fields = genes.dtype.names or ()
    available = [f for f in _GENE_FIELDS if f in fields]
    if not available:
        raise ValueError(f"{file}: {where} has no gene field ({', '.join(_GENE_FIELDS)}); found fields {list(fields)}.")
    key = gene_key if gene_key in available else available[0]
    codes, uniques = pd.factorize(np.asarray(_decode(genes[key]), dtype=object))
    other = next((f for f in (StereoseqFile.GENE, StereoseqFile.GENE_NAME) if f != key and f in available), None)
    var = None
    if other is not None:
        first = np.full(len(uniques), -1)
        first[codes[::-1]] = np.arange(codes.size)[::-1]
        var = pd.DataFrame({str(other): np.asarray(_decode(genes[other]), dtype=object)[first]})
    return codes.astype(np.int64), [str(u) for u in uniques], var, key


def _require(group: h5py.Group, names: tuple[str, ...], file: Path) -> None:
    missing = [str(n) for n in names if n not in group]
    if missing:
        raise ValueError(f"{file}: GEF group {group.name!r} lacks {missing}; found {sorted(group)}.")


def _require_fields(dataset: h5py.Dataset, names: tuple[str, ...], file: Path) -> None:
    fields = dataset.dtype.names or ()
    missing = [str(n) for n in names if n not in fields]
    if missing:
        raise ValueError(f"{file}: GEF dataset {dataset.name!r} lacks field(s) {missing}; found {list(fields)}.")


def _attrs(attrs: h5py.AttributeManager) -> dict[str, object]:
    """Attributes as plain Python values (writable to zarr)."""
    out: dict[str, object] = {}
    for key, value in attrs.items():
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(-1)[0]
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        elif isinstance(value, np.generic):
            value = value.item()
            value = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
        if isinstance(value, str | int | float | bool):
            out[key] = value
    return out


def _read_square_gef(f: h5py.File, file: Path, bin_size: int, dataset_id: str, gene_key: str) -> SpatialData:
    S = StereoseqFile
    _require(f[S.GENE_EXP], (S.BIN1,), file)
    level = f[S.GENE_EXP][S.BIN1]
    _require(level, (S.EXPRESSION, S.GENE_DATASET), file)
    expression, gene_table = level[S.EXPRESSION], level[S.GENE_DATASET]
    _require_fields(expression, (S.X, S.Y, S.GEF_COUNT), file)
    _require_fields(gene_table, (S.OFFSET, S.GEF_COUNT), file)
    genes = gene_table[()]
    codes, names, var, key = _gef_genes(genes, file, gene_table.name, gene_key)
    starts = genes[S.OFFSET].astype(np.int64)
    lengths = genes[S.GEF_COUNT].astype(np.int64)
    n_rows = expression.shape[0]
    if n_rows == 0:
        raise ValueError(f"{file}: no counts: {expression.name!r} is empty.")
    if (
        starts.size == 0
        or starts[0] != 0
        or np.any(starts[1:] != starts[:-1] + lengths[:-1])
        or (starts[-1] + lengths[-1] != n_rows)
    ):
        raise ValueError(
            f"{file}: {gene_table.name!r} offsets and counts do not tile the {n_rows} rows of {expression.name!r}."
        )
    sums = _SumByKey(bin_size)
    fields = expression.fields([S.X, S.Y, S.GEF_COUNT])
    for a in range(0, n_rows, _GEF_CHUNK):
        rows = fields[a : min(a + _GEF_CHUNK, n_rows)]
        counts = rows[S.GEF_COUNT]
        _check_counts(counts, file, repr(expression.name))
        gene_of_row = codes[np.searchsorted(starts, np.arange(a, a + rows.size), side="right") - 1]
        sums.add(_bin_keys(rows[S.X], rows[S.Y], gene_of_row, bin_size, file), counts)
    logger.info("Read %d GEF rows, %d genes, %d counts", n_rows, len(names), sums.total)
    counts, obs_names, centres = _bin_table(sums, len(names), bin_size)
    return _build(
        counts,
        obs_names=obs_names,
        var_names=names,
        coords=centres,
        dataset_id=dataset_id,
        file=file,
        bin_size=bin_size,
        var=var,
        file_format=_FORMATS["gef"],
        gene_key=key,
        metadata=_attrs(f.attrs),
    )


def _read_cellbin_gef(f: h5py.File, file: Path, dataset_id: str, gene_key: str) -> SpatialData:
    import pandas as pd
    from scipy import sparse

    S = StereoseqFile
    group = f[S.CELL_BIN]
    _require(group, (S.CELL, S.GENE_DATASET, S.CELL_EXP), file)
    cells = group[S.CELL][()]
    _require_fields(group[S.CELL], (S.X, S.Y, S.OFFSET, S.GENE_COUNT), file)
    _require_fields(group[S.CELL_EXP], (S.GENE, S.GEF_COUNT), file)
    if cells.size == 0:
        raise ValueError(f"{file}: no cells: {group[S.CELL].name!r} is empty.")
    codes, names, var, key = _gef_genes(group[S.GENE_DATASET][()], file, group[S.GENE_DATASET].name, gene_key)
    starts = cells[S.OFFSET].astype(np.int64)
    lengths = cells[S.GENE_COUNT].astype(np.int64)
    expression = group[S.CELL_EXP]
    nnz = expression.shape[0]
    if starts[0] != 0 or np.any(starts[1:] != starts[:-1] + lengths[:-1]) or starts[-1] + lengths[-1] != nnz:
        raise ValueError(f"{file}: cell offsets and gene counts do not tile the {nnz} rows of {expression.name!r}.")
    indices = np.empty(nnz, np.int32)
    data = np.empty(nnz, np.float32)
    fields = expression.fields([S.GENE, S.GEF_COUNT])
    for a in range(0, nnz, _GEF_CHUNK):
        rows = fields[a : min(a + _GEF_CHUNK, nnz)]
        _check_counts(rows[S.GEF_COUNT], file, repr(expression.name))
        gene = rows[S.GENE].astype(np.int64)
        if gene.size and (gene.min() < 0 or gene.max() >= codes.size):
            raise ValueError(f"{file}: {expression.name!r} refers to genes beyond the {codes.size} of the file.")
        indices[a : a + rows.size] = codes[gene]
        data[a : a + rows.size] = rows[S.GEF_COUNT]
    indptr = np.concatenate((starts, [nnz]))
    counts = sparse.csr_matrix((data, indices, indptr), shape=(cells.size, len(names)))
    counts.sum_duplicates()  # sorts the genes of each cell; sums genes merged under one name
    counts.eliminate_zeros()
    centres = np.column_stack((cells[S.X], cells[S.Y])).astype(np.float64)
    obs_names = np.arange(cells.size).astype(str)
    if S.CELL_ID in (cells.dtype.names or ()) and np.unique(cells[S.CELL_ID]).size == cells.size:
        obs_names = cells[S.CELL_ID].astype(str)
    skip = {S.CELL_ID, S.X, S.Y, S.OFFSET}
    obs = pd.DataFrame({name: cells[name] for name in cells.dtype.names if name not in skip})
    polygons = None
    if S.CELL_BORDER in group:
        polygons, n_without = _cell_polygons(group[S.CELL_BORDER][()], centres)
        if n_without:
            logger.info("%d cells have fewer than 3 border points: drawn as 1-DNB squares", n_without)
    else:
        logger.info("No %s in %s: cells drawn as circles", S.CELL_BORDER, file)
    return _build(
        counts,
        obs_names=obs_names,
        var_names=names,
        coords=centres,
        dataset_id=dataset_id,
        file=file,
        bin_size=None,
        var=var,
        obs=obs,
        polygons=polygons,
        file_format=_FORMATS["cellbin"],
        gene_key=key,
        metadata=_attrs(f.attrs),
    )


def _cell_polygons(border: np.ndarray, centres: np.ndarray) -> tuple[gpd.GeoDataFrame, int]:
    """Cell outlines from the padded border offsets; cells with fewer than 3 points become 1-DNB squares."""
    import geopandas as gpd
    import shapely

    valid = (border != _BORDER_PADDING).all(axis=2)
    n_points = valid.sum(axis=1)
    ok = n_points >= 3
    geometries = shapely.box(centres[:, 0] - 0.5, centres[:, 1] - 0.5, centres[:, 0] + 0.5, centres[:, 1] + 0.5)
    if ok.any():
        points = border[valid & ok[:, None]].astype(np.float64)
        points += np.repeat(centres[ok], n_points[ok], axis=0)
        rings = shapely.linearrings(points, indices=np.repeat(np.arange(ok.sum()), n_points[ok]))
        geometries[ok] = shapely.polygons(rings)
    return gpd.GeoDataFrame(geometry=geometries), int((~ok).sum())


# --------------------------------------------------------------------------------------------------------------------
# output


def _build(
    counts: sparse.csr_matrix,
    *,
    obs_names: np.ndarray,
    var_names: list[str],
    coords: np.ndarray,
    dataset_id: str,
    file: Path,
    bin_size: int | None,
    var: pd.DataFrame | None,
    file_format: str,
    gene_key: str,
    metadata: dict[str, object],
    obs: pd.DataFrame | None = None,
    polygons: gpd.GeoDataFrame | None = None,
) -> SpatialData:
    from sd_inspire.io._build import build_spatialdata

    S = StereoseqFile
    uns: dict[str, object] = {Key.MICRONS_PER_PIXEL: MICRONS_PER_DNB}
    if bin_size is not None:
        uns[S.BIN_SIZE] = bin_size
    uns[Technology.STEREOSEQ] = {
        str(S.FILE_FORMAT): file_format,
        str(S.GENE_KEY): str(gene_key),
        str(S.METADATA): metadata,
    }
    return build_spatialdata(
        counts,
        obs_names=obs_names,
        var_names=var_names,
        coords=coords,
        dataset_id=dataset_id,
        technology=Technology.STEREOSEQ,
        shape="square" if polygons is None and bin_size is not None else "circle",
        size=float(bin_size) if bin_size is not None else None,
        polygons=polygons,
        obs=obs,
        var=var,
        uns={str(k): v for k, v in uns.items()},
        source=str(file),
        reader="sd_inspire.io.stereoseq",
    )
