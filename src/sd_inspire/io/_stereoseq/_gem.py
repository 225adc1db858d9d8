"""Reading a Stereo-seq GEM text file (optionally gzipped) in blocks, with clear errors on malformed lines."""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sd_inspire._constants import StereoseqFile
from sd_inspire._logging import logger
from sd_inspire.io._stereoseq._binning import _GENE_BITS, _bin_keys, _bin_table, _SumByKey
from sd_inspire.io._stereoseq._files import _FORMATS
from sd_inspire.io._stereoseq._output import _Parsed
from sd_inspire.io._utils import is_gzipped

if TYPE_CHECKING:
    from pathlib import Path
    from typing import IO

    import pyarrow as pa

# Tuning of the streaming (module constants so that tests can shrink them and cross chunk boundaries).
_BLOCK_SIZE = 1 << 20  # bytes of GEM text per batch (~45,000 lines); pyarrow holds ~40 blocks at a time
#: Files from this size on get a progress bar (smaller ones take seconds).
_PROGRESS_BYTES = 100 * 2**20
_ARROW_THREADS = False  # threaded parsing reads further ahead, for no gain: sorting the keys dominates

_COUNT_COLUMNS = (StereoseqFile.COUNT, StereoseqFile.COUNT_V1, StereoseqFile.COUNT_UMI)


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


def _read_gem(file: Path, bin_size: int, gene_key: str, show_progress_bar: bool = False) -> _Parsed:
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
    return _Parsed(counts, names, genes.names(), centres, var, _FORMATS["gem"], layout.gene, layout.metadata, bin_size)


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
