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
    from collections.abc import Callable, Iterator

#: Rows per chunk of the matrices of a table opened out of core, and of the streaming passes over them.
CHUNK_ROWS = 8192
#: Default ``chunk_size`` of the public functions that stream over spots (``gr.propagate``, ``tl.impute``,
#: ``tl.transfer_labels``, the smoothing of ``tl.domains``): rows per block of their passes. Larger than
#: :data:`CHUNK_ROWS`: a pass over a table on disk merges its chunks up to about this many rows (never splitting one).
DEFAULT_CHUNK_SIZE = 20_000


def is_lazy(x: Any) -> bool:
    """Whether ``x`` is a dask array (a matrix kept out of core), without importing dask."""
    return type(x).__module__.startswith("dask.") and hasattr(x, "chunks")


def _as_csr(block: Any) -> sparse.csr_matrix:
    if sparse.issparse(block):
        return sparse.csr_matrix(block)
    return sparse.csr_matrix(np.asarray(block))


def read_rows(x: Any, start: int, stop: int) -> sparse.csr_matrix:
    """Rows ``start:stop`` of ``x`` as a CSR matrix (computed from disk for a dask array)."""
    if is_lazy(x):  # reading one chunk: dask's threads would only add overhead
        return _as_csr(x[start:stop].compute(scheduler="synchronous"))
    return _as_csr(x[start:stop])


def chunk_edges(x: Any) -> np.ndarray:
    """Row offsets where the chunks of a dask array start, and its end (one chunk for a matrix in memory)."""
    return np.cumsum((0, *x.chunks[0])) if is_lazy(x) else np.array([0, x.shape[0]])


def _spans(x: Any, chunk_size: int) -> list[tuple[int, int]]:
    """Row ranges of about ``chunk_size`` rows; for a dask array, along its chunks (never splitting one)."""
    n = x.shape[0]
    if is_lazy(x):
        bounds = chunk_edges(x)
        # merge the array's own chunks up to about chunk_size rows, never splitting one
        starts = [int(bounds[0])]
        for b in bounds[1:-1]:
            if b - starts[-1] >= chunk_size:
                starts.append(int(b))
        edges = [*starts, n]
    else:
        edges = [*range(0, n, chunk_size), n]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def row_blocks(x: Any, chunk_size: int = CHUNK_ROWS) -> Iterator[tuple[int, int, sparse.csr_matrix]]:
    """``(start, stop, rows)`` over ``x`` in row blocks; a dask array is read block by block along its chunks.

    From disk, the next block is read in a background thread while the caller works on the current one (memory:
    two blocks), so decompressing the store overlaps the computation instead of adding to it.
    """
    spans = _spans(x, chunk_size)
    if not is_lazy(x) or len(spans) < 2:
        for start, stop in spans:
            yield start, stop, read_rows(x, start, stop)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sd-inspire-read") as ahead:  # waits on leaving
        pending = ahead.submit(read_rows, x, *spans[0])
        for i, (start, stop) in enumerate(spans):
            block = pending.result()
            if i + 1 < len(spans):
                pending = ahead.submit(read_rows, x, *spans[i + 1])
            yield start, stop, block


def dask_client() -> Any:
    """The active :class:`distributed.Client`, or ``None`` (dask.distributed absent or no client started)."""
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover - distributed is a dependency of spatialdata
        return None
    try:
        return get_client()
    except ValueError:
        return None


def map_row_blocks(
    x: Any,
    func: Callable[..., Any],
    *,
    rows: tuple[np.ndarray, ...] = (),
    args: tuple = (),
    chunk_size: int = CHUNK_ROWS,
) -> Iterator[tuple[int, int, Any]]:
    """``(start, stop, func(block, *rows[start:stop], *args))`` for each row block of ``x``, in order.

    ``rows`` are per-spot arrays cut to each block; ``args`` go to every call. For a matrix on disk with a
    :mod:`dask.distributed` client active, the blocks are read and processed by the cluster's workers (only the
    results travel back); otherwise one block at a time in this process.
    """
    client = dask_client() if is_lazy(x) else None
    if client is None:
        for start, stop, block in row_blocks(x, chunk_size):
            yield start, stop, func(block, *(r[start:stop] for r in rows), *args)
        return
    import dask

    spans = _spans(x, chunk_size)
    tasks = [dask.delayed(_apply)(func, x[a:b], *(r[a:b] for r in rows), *args) for a, b in spans]
    futures = client.compute(tasks)
    for (start, stop), future in zip(spans, futures, strict=True):
        yield start, stop, future.result()
        future.release()


def _apply(func: Callable[..., Any], block: Any, *args: Any) -> Any:
    return func(_as_csr(block), *args)


def matmul_rows(x: Any, w: np.ndarray | sparse.spmatrix, chunk_size: int = CHUNK_ROWS) -> np.ndarray:
    """``x @ w`` as a dense float32 array, in row blocks of ``x``: memory is the output plus one block's product."""
    out = np.empty((x.shape[0], w.shape[1]), dtype=np.float32)
    for start, stop, product in map_row_blocks(x, _matmul, args=(w,), chunk_size=chunk_size):
        out[start:stop] = product
    return out


def _matmul(block: sparse.csr_matrix, w: np.ndarray | sparse.spmatrix) -> np.ndarray:
    product = block @ w
    return np.asarray(product.toarray() if sparse.issparse(product) else product, dtype=np.float32)
