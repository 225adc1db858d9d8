"""Helpers shared by the readers.

Folder listings for error messages, gzip-aware opening, id matching, and chunked reading of dense text and
MatrixMarket matrices into sparse.
"""

from __future__ import annotations

import csv
import gzip
import warnings
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from sd_inspire._constants import VisiumFile

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


def listing(path: Path, limit: int = 30) -> list[str]:
    """Names in a folder (sub-folders end with ``/``), for error messages; ``[]`` for a missing folder."""
    if not path.is_dir():
        return [path.name] if path.exists() else []
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    return names if len(names) <= limit else [*names[:limit], f"... ({len(names) - limit} more)"]


def resolve_file(folder: Path, file: str | Path) -> Path:
    """``folder / file`` (an absolute ``file`` stays as it is), or raise listing what the folder holds."""
    resolved = folder / file
    if not resolved.is_file():
        raise FileNotFoundError(f"{str(resolved)!r} does not exist; {str(folder)!r} holds {listing(folder)}.")
    return resolved


def examples(values: Sequence[Any] | pd.Index, n: int = 3) -> list[str]:
    """The first ``n`` values, as strings, for messages."""
    return [str(v) for v in list(values[:n])]


def open_text(file: Path) -> IO[str]:
    """Open a text file for reading, gunzipping when it is gzip-compressed (whatever its name)."""
    if is_gzipped(file):
        return gzip.open(file, "rt", newline="")
    return open(file, newline="")


def open_binary(file: Path) -> IO[bytes]:
    """Open a file for reading bytes, gunzipping when it is gzip-compressed (whatever its name)."""
    if is_gzipped(file):
        return gzip.open(file, "rb")
    return open(file, "rb")


def is_gzipped(file: Path) -> bool:
    """Whether ``file`` starts with the gzip magic bytes (whatever its name)."""
    with open(file, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def head_rows(file: Path, sep: str, n: int = 2) -> list[list[str]]:
    """The first ``n`` rows of a delimited text file, parsed with the csv module (quotes removed)."""
    try:
        with open_text(file) as f:
            lines = [line for _, line in zip(range(n), f, strict=False)]
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: cannot be read as text ({e}).") from e
    return list(csv.reader(lines, delimiter=sep))


def check_unique(index: pd.Index, *, what: str, file: Path) -> None:
    """Raise if ``index`` repeats values."""
    if not index.is_unique:
        dup = index[index.duplicated()].unique()
        raise ValueError(f"{file}: {len(dup)} duplicated {what} (e.g. {examples(dup)}); each must appear once.")


def match_ids(
    left: pd.Index, right: pd.Index, *, what: str, left_name: str, right_name: str, stacklevel: int = 3
) -> pd.Index:
    """Ids found in both ``left`` and ``right``, in ``left``'s order; warn about the others, raise if none."""
    common = left[left.isin(right)]
    only_left = left[~left.isin(right)]
    only_right = right[~right.isin(left)]
    if len(common) == 0:
        raise ValueError(
            f"No {what} in common between {left_name} ({len(left)}, e.g. {examples(left)}) and {right_name} "
            f"({len(right)}, e.g. {examples(right)})."
        )
    parts = [
        f"{len(only)} {what} of {name} are missing from {other} (e.g. {examples(only)})"
        for only, name, other in ((only_left, left_name, right_name), (only_right, right_name, left_name))
        if len(only)
    ]
    if parts:
        warnings.warn(
            f"{' and '.join(parts)}; keeping the {len(common)} found in both.",
            UserWarning,
            stacklevel=stacklevel,
        )
    return common


def read_id_table(file: Path, *, value_dtype: Any = None) -> pd.DataFrame:
    """A comma-separated table whose first column (named or not) holds ids, indexed by them as strings.

    ``value_dtype`` applies to every other column (inferred per column by default). Ragged rows, repeated column
    names and repeated ids raise a :class:`ValueError` naming the file.
    """
    rows = head_rows(file, ",", 2)
    if not rows or not rows[0]:
        raise ValueError(f"{file}: the file is empty.")
    header = rows[0]
    if len(rows) > 1 and len(rows[1]) != len(header):
        raise ValueError(f"{file}: line 2 has {len(rows[1])} fields but the header has {len(header)}.")
    columns = pd.Index(header[1:])
    check_unique(columns, what="column names", file=file)
    dtype: dict[str, Any] = {_ID: str}
    if value_dtype is not None:
        dtype.update(dict.fromkeys(columns, value_dtype))
    try:
        with open_text(file) as f:
            table = pd.read_csv(f, header=0, names=[_ID, *columns], dtype=dtype, index_col=_ID)
    except (ValueError, OSError, EOFError) as e:  # pandas' ParserError and decoding errors included
        raise ValueError(f"{file}: malformed csv ({e}).") from e
    table.index.name = None
    check_unique(table.index, what="ids", file=file)
    return table


#: Placeholder name of the id column while reading (the vendor's name may be empty).
_ID = "__sd_inspire_id__"


def read_dense_matrix(
    file: Path, *, sep: str, chunk_size: int | None = None
) -> tuple[sparse.csr_matrix, pd.Index, pd.Index]:
    """Read a dense genes × observations text matrix in chunks of rows into a sparse observations × genes matrix.

    The first row holds the observation names, with or without a leading cell for the gene column (R's
    ``write.table`` omits it); each other row a gene name and one value per observation.

    Returns
    -------
    The ``float32`` CSR matrix (observations × genes), the observation names and the gene names.
    """
    rows = head_rows(file, sep, 2)
    if len(rows) < 2:
        raise ValueError(f"{file}: the matrix is empty (a header and at least one gene row are needed).")
    header, first = rows
    if len(first) == len(header):
        names = header[1:]
    elif len(first) == len(header) + 1:
        names = header
    else:
        raise ValueError(
            f"{file}: line 2 has {len(first)} fields but the header has {len(header)}; "
            "expected a gene name and one value per column of the header."
        )
    if not names:
        raise ValueError(f"{file}: the matrix has no columns.")
    obs_names = pd.Index(names)
    check_unique(obs_names, what="column names", file=file)
    n_obs = len(obs_names)
    if chunk_size is None:
        chunk_size = max(1, 10_000_000 // n_obs)  # about 40 MB of float32 values per chunk
    dtype: dict[int, Any] = {0: str, **dict.fromkeys(range(1, n_obs + 1), np.float32)}
    blocks, genes, bad_line = [], [], None
    try:
        with open_text(file) as f:
            reader = pd.read_csv(
                f,
                sep=sep,
                header=None,
                skiprows=1,
                names=range(n_obs + 1),
                index_col=0,
                dtype=dtype,
                chunksize=chunk_size,
                keep_default_na=False,
                na_values=[""],
            )
            for chunk in reader:
                values = chunk.to_numpy(dtype=np.float32)
                missing = np.isnan(values).any(axis=1)
                if missing.any():
                    bad_line = 2 + len(genes) + int(np.flatnonzero(missing)[0])
                    break
                blocks.append(sparse.csr_matrix(values))
                genes.extend(chunk.index.astype(str))
    except (ValueError, OSError, EOFError) as e:  # pandas' ParserError, EmptyDataError and decoding errors included
        raise ValueError(f"{file}: malformed matrix, expected a gene name and {n_obs} numbers per row ({e}).") from e
    if bad_line is not None:
        raise ValueError(f"{file}: missing values in line {bad_line}; each row needs a gene name and {n_obs} values.")
    if not genes:
        raise ValueError(f"{file}: the matrix has no gene rows.")
    counts = sparse.vstack(blocks, format="csr").T.tocsr()
    return counts, obs_names, pd.Index(genes)


def read_mtx(
    matrix_file: Path, barcodes_file: Path, features_file: Path, *, gene_expression_only: bool = True
) -> tuple[sparse.csr_matrix, pd.Index, pd.DataFrame]:
    """Read a MatrixMarket matrix with its barcodes and features (or genes) files, 10x Genomics style.

    The matrix may be features × barcodes (10x) or barcodes × features; the orientation follows the lengths of
    the two lists (features × barcodes when they are equal).

    Returns
    -------
    The ``float32`` CSR matrix (barcodes × features), the barcodes, and ``var`` indexed by unique gene names with
    columns ``"gene_ids"`` and ``"feature_types"`` (when the features file has them).
    """
    import scipy.io
    from anndata.utils import make_index_unique

    barcodes = pd.Index(_read_tsv(barcodes_file).iloc[:, 0].to_numpy(), dtype=str)
    features = _read_tsv(features_file)
    try:
        with open_binary(matrix_file) as f:
            matrix = scipy.io.mmread(f)
    except (ValueError, OSError, EOFError, IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"{matrix_file}: not a readable MatrixMarket file ({e}).") from e
    matrix = sparse.csr_matrix(matrix, dtype=np.float32)
    n_bc, n_ft = len(barcodes), len(features)
    if matrix.shape == (n_ft, n_bc):
        matrix = matrix.T.tocsr()
    elif matrix.shape != (n_bc, n_ft):
        raise ValueError(
            f"{matrix_file}: shape {matrix.shape} does not match {n_ft} features ({features_file.name}) × "
            f"{n_bc} barcodes ({barcodes_file.name})."
        )
    check_unique(barcodes, what="barcodes", file=barcodes_file)
    ids = features.iloc[:, 0].astype(str)
    names = features.iloc[:, 1].astype(str) if features.shape[1] > 1 else ids
    var = pd.DataFrame({VisiumFile.GENE_IDS.value: ids.to_numpy()})
    if features.shape[1] > 2:
        var[VisiumFile.FEATURE_TYPES.value] = pd.Categorical(features.iloc[:, 2].astype(str))
        if gene_expression_only:
            keep = (var[VisiumFile.FEATURE_TYPES] == VisiumFile.GENE_EXPRESSION).to_numpy()
            matrix, var, names = matrix[:, keep], var[keep], names[keep]
    var.index = make_index_unique(pd.Index(names.to_numpy(), dtype=str))
    return matrix, barcodes, var


def _read_tsv(file: Path) -> pd.DataFrame:
    try:
        with open_text(file) as f:
            table = pd.read_csv(f, sep="\t", header=None, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame({0: pd.Series([], dtype=str)})  # no rows: an empty matrix, reported by the caller
    except (pd.errors.ParserError, OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: malformed tab-separated file ({e}).") from e
    return table
