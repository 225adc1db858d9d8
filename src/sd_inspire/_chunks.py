"""Row-chunked access to count and expression matrices held in memory or out of core (dask arrays on zarr).

One helper serves every stage that streams over spots, so the same code runs on a SciPy matrix in memory and on a
table opened out of core by :func:`sd_inspire.io.read_zarr`, whose ``X`` and layers are dask arrays of sparse
row chunks read from the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Rows per chunk of the matrices of a table opened out of core, and of the streaming passes over them.
CHUNK_ROWS = 8192


def is_lazy(x: Any) -> bool:
    """Whether ``x`` is a dask array (a matrix kept out of core), without importing dask."""
    return type(x).__module__.startswith("dask.") and hasattr(x, "chunks")


def _as_csr(block: Any) -> sparse.csr_matrix:
    if sparse.issparse(block):
        return sparse.csr_matrix(block)
    return sparse.csr_matrix(np.asarray(block))


def read_rows(x: Any, start: int, stop: int) -> sparse.csr_matrix:
    """Rows ``start:stop`` of ``x`` as a CSR matrix (computed from disk for a dask array)."""
    if is_lazy(x):
        import dask

        with dask.config.set(scheduler="synchronous"):  # reading one chunk: threads would only add overhead
            return _as_csr(x[start:stop].compute())
    return _as_csr(x[start:stop])


def row_blocks(x: Any, chunk_size: int = CHUNK_ROWS) -> Iterator[tuple[int, int, sparse.csr_matrix]]:
    """``(start, stop, rows)`` over ``x`` in row blocks; a dask array is read block by block along its chunks."""
    n = x.shape[0]
    if is_lazy(x):
        bounds = np.cumsum((0, *x.chunks[0]))
        # merge the array's own chunks up to about chunk_size rows, never splitting one
        starts = [int(bounds[0])]
        for b in bounds[1:-1]:
            if b - starts[-1] >= chunk_size:
                starts.append(int(b))
        edges = [*starts, n]
    else:
        edges = [*range(0, n, chunk_size), n]
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        if stop > start:
            yield start, stop, read_rows(x, start, stop)


def matmul_rows(x: Any, w: np.ndarray, chunk_size: int = CHUNK_ROWS) -> np.ndarray:
    """``x @ w`` (float32) in row blocks: memory is the output plus one block of ``x``."""
    out = np.empty((x.shape[0], w.shape[1]), dtype=np.float32)
    for start, stop, block in row_blocks(x, chunk_size):
        out[start:stop] = block @ w
    return out
