"""Minibatches stratified over slices (in memory or from counts on disk) and sampled subgraphs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from sd_inspire._chunks import chunk_edges, is_lazy, read_rows

if TYPE_CHECKING:
    from collections.abc import Iterator


def sample_subgraph(graph: sparse.csr_matrix, seeds: np.ndarray, n_hops: int) -> tuple[np.ndarray, sparse.coo_matrix]:
    """Nodes (seeds first) of the ``n_hops`` neighbourhood of ``seeds`` and the subgraph they induce."""
    nodes, frontier = seeds, seeds
    seen = np.zeros(graph.shape[0], dtype=bool)
    seen[seeds] = True
    for _ in range(n_hops):
        starts, stops = graph.indptr[frontier], graph.indptr[frontier + 1]
        neigh = (
            np.concatenate([graph.indices[a:b] for a, b in zip(starts, stops, strict=True)])
            if frontier.size
            else seeds[:0]
        )
        new = np.unique(neigh[~seen[neigh]])
        seen[new] = True
        nodes, frontier = np.concatenate([nodes, new]), new
    return nodes, graph[nodes][:, nodes].tocoo()


class StratifiedSampler:
    """Endless minibatches with the same number of spots from every slice, each slice cycled in shuffled order.

    Parameters
    ----------
    slices
        Slice code of each spot.
    per_slice
        Spots drawn from each slice per batch (at most the slice's size).
    rng
        The only source of randomness.
    counts
        Count matrix (SciPy CSR) whose rows :meth:`next_batch` returns with the indices.
    shard
        ``(rank, n_ranks)``: draw only from this rank's share of every slice (data-parallel training).
    """

    def __init__(
        self,
        slices: np.ndarray,
        per_slice: int,
        rng: np.random.Generator,
        counts: sparse.csr_matrix | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.rng = rng
        self.counts = counts
        rank, size = shard
        self.groups = [np.flatnonzero(slices == k)[rank::size] for k in range(int(slices.max()) + 1)]
        self.per_slice = [min(per_slice, g.size) for g in self.groups]
        self._order = [rng.permutation(g) for g in self.groups]
        self._pos = [0] * len(self.groups)

    def state(self) -> dict:
        """Position of the sampler, to checkpoint."""
        return {"order": [o.copy() for o in self._order], "pos": list(self._pos)}

    def load_state(self, state: dict) -> None:
        """Restore a position saved by :meth:`state`."""
        self._order = [np.asarray(o) for o in state["order"]]
        self._pos = list(state["pos"])

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        out = []
        for k, group in enumerate(self.groups):
            b = self.per_slice[k]
            if self._pos[k] + b > group.size:
                self._order[k] = self.rng.permutation(group)
                self._pos[k] = 0
            out.append(self._order[k][self._pos[k] : self._pos[k] + b])
            self._pos[k] += b
        return np.concatenate(out)

    def next_batch(self) -> tuple[np.ndarray, sparse.csr_matrix]:
        """Indices of the next minibatch and their rows of the counts."""
        idx = next(self)
        return idx, self.counts[idx]


class BufferedSampler(StratifiedSampler):
    """Stratified minibatches from counts kept on disk, read a few blocks of rows per slice at a time.

    Random single rows of an on-disk matrix cost a chunk read each, so each slice's spots are cut into blocks along
    the matrix's chunks; a buffer holds ``blocks_per_slice`` blocks of each slice, drawn in shuffled order, and
    minibatches draw each slice's spots without replacement from its buffer, which is refilled when exhausted.
    Memory is the buffer, not the matrix. A spot is drawn at most once per pass over its slice's blocks (the
    few left in a buffer too small for a minibatch are skipped, as a sampler drops an incomplete last batch).

    Parameters
    ----------
    slices
        Slice code of each spot.
    per_slice
        Spots drawn from each slice per batch.
    rng
        The only source of randomness.
    counts
        The count matrix (a dask array of row chunks).
    shard
        ``(rank, n_ranks)``: draw only from this rank's share of every slice's blocks (data-parallel training).
    buffer_rows
        Rows held in memory over all slices (at least two blocks per slice).
    """

    def __init__(
        self,
        slices: np.ndarray,
        per_slice: int,
        rng: np.random.Generator,
        counts: Any,
        shard: tuple[int, int] = (0, 1),
        *,
        buffer_rows: int = 65_536,
    ) -> None:
        self.rng, self.counts = rng, counts
        rank, size = shard
        self.groups = [np.flatnonzero(slices == k) for k in range(int(slices.max()) + 1)]
        # a rank reads whole blocks of its own: every size-th block of each slice (its rows if too few blocks)
        self.blocks = []
        for g in self.groups:
            blocks = self._cut(g, chunk_edges(counts))
            self.blocks.append(blocks[rank::size] if len(blocks) >= size else [b[rank::size] for b in blocks])
        self.groups = [np.concatenate(b) for b in self.blocks]
        largest = max(max(b.size for b in blocks) for blocks in self.blocks)
        self.blocks_per_slice = max(2, buffer_rows // max(1, len(self.groups) * largest))
        self.per_slice = [min(per_slice, g.size) for g in self.groups]
        self._block_order = [rng.permutation(len(b)) for b in self.blocks]
        self._block_pos = [0] * len(self.groups)
        self._rows: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(self.groups)
        self._counts: list[sparse.csr_matrix | None] = [None] * len(self.groups)
        self._pos = [0] * len(self.groups)
        self._buffer_blocks: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(self.groups)
        self._buffer_order: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(self.groups)
        for k in range(len(self.groups)):
            self._refill(k)

    @staticmethod
    def _cut(group: np.ndarray, edges: np.ndarray) -> list[np.ndarray]:
        """Rows of one slice cut at the matrix's chunk edges (a block never spans two chunks)."""
        cuts = np.flatnonzero(np.diff(np.searchsorted(edges, group, side="right")))
        return [b for b in np.split(group, cuts + 1) if b.size]

    def _refill(self, k: int, block_ids: np.ndarray | None = None, order: np.ndarray | None = None) -> None:
        """Load the next blocks of slice ``k`` (or the given ones) and shuffle their rows (or apply ``order``)."""
        if block_ids is None:
            take, ids = min(self.blocks_per_slice, len(self.blocks[k])), []
            while len(ids) < take:
                if self._block_pos[k] >= len(self.blocks[k]):
                    self._block_order[k] = self.rng.permutation(len(self.blocks[k]))
                    self._block_pos[k] = 0
                ids.append(int(self._block_order[k][self._block_pos[k]]))
                self._block_pos[k] += 1
            block_ids = np.asarray(ids)
        blocks = [self.blocks[k][i] for i in block_ids]
        rows = np.concatenate(blocks)
        parts = []
        for b in blocks:
            part = read_rows(self.counts, int(b[0]), int(b[-1]) + 1)
            parts.append(part if part.shape[0] == b.size else part[b - b[0]])  # contiguous: no copy
        order = self.rng.permutation(rows.size) if order is None else np.asarray(order)
        self._buffer_blocks[k], self._buffer_order[k] = block_ids, order
        self._rows[k] = rows[order]
        # rows stay in reading order; each minibatch gathers its own few (no permuted copy of the buffer)
        self._counts[k] = parts[0] if len(parts) == 1 else sparse.vstack(parts, format="csr")
        self._pos[k] = 0

    def state(self) -> dict:
        """Position of the sampler, to checkpoint (the buffer is re-read on resume)."""
        return {
            "block_order": [o.copy() for o in self._block_order],
            "block_pos": list(self._block_pos),
            "buffer_blocks": [b.copy() for b in self._buffer_blocks],
            "buffer_order": [o.copy() for o in self._buffer_order],
            "pos": list(self._pos),
        }

    def load_state(self, state: dict) -> None:
        """Restore a position saved by :meth:`state`."""
        self._block_order = [np.asarray(o) for o in state["block_order"]]
        self._block_pos = list(state["block_pos"])
        for k in range(len(self.groups)):
            self._refill(k, np.asarray(state["buffer_blocks"][k]), np.asarray(state["buffer_order"][k]))
        self._pos = list(state["pos"])

    def next_batch(self) -> tuple[np.ndarray, sparse.csr_matrix]:
        """Indices of the next minibatch and their rows of the counts."""
        idx, counts = [], []
        for k in range(len(self.groups)):
            b = self.per_slice[k]
            if self._pos[k] + b > self._rows[k].size:
                self._refill(k)
            b = min(b, self._rows[k].size)
            idx.append(self._rows[k][self._pos[k] : self._pos[k] + b])
            counts.append(self._counts[k][self._buffer_order[k][self._pos[k] : self._pos[k] + b]])
            self._pos[k] += b
        return np.concatenate(idx), sparse.vstack(counts, format="csr")

    def __next__(self) -> np.ndarray:
        return self.next_batch()[0]


def make_sampler(
    counts: Any,
    slices: np.ndarray,
    per_slice: int,
    rng: np.random.Generator,
    shard: tuple[int, int] = (0, 1),
    names: list[str] | None = None,
) -> StratifiedSampler:
    """The minibatch sampler for counts in memory (rows drawn anywhere) or on disk (block buffer).

    Raises
    ------
    ValueError
        If a slice has fewer spots than there are training processes (a rank would have nothing of it).
    """
    sizes = np.bincount(slices)
    if (sizes < shard[1]).any():
        k = int(np.argmin(sizes))
        name = repr(names[k]) if names is not None else k
        raise ValueError(f"Slice {name} has {int(sizes[k])} spots, fewer than the {shard[1]} training processes.")
    if is_lazy(counts):
        return BufferedSampler(slices, per_slice, rng, counts, shard)
    return StratifiedSampler(slices, per_slice, rng, counts, shard)
