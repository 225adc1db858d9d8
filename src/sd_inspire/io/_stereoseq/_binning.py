"""Summing DNB-level counts per (bin, gene) while streaming, in memory bounded by the non-zero pairs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pathlib import Path

    from scipy import sparse

# Tuning of the streaming (module constants so that tests can shrink them and cross chunk boundaries).
_STAGE_ROWS = 1 << 19  # rows of GEM or GEF staged before they are reduced and split among buckets
_MERGE_MIN = 1 << 16  # pending (bin, gene) sums of a bucket merged into it from this many on (or an eighth of it)
_BUCKET_SPAN_DNB = 256  # width in DNBs (~128 µm) of the stripe of bins a bucket of sums covers

# A (bin, gene) pair packed into one uint64: bin x (22 bits) | bin y (22 bits) | gene code (20 bits).
_GENE_BITS = 20
_COORD_BITS = 22
_COORD_OFFSET = 1 << (_COORD_BITS - 1)  # bin indices from -2**21 to 2**21 - 1
_GENE_MASK = np.uint64((1 << _GENE_BITS) - 1)
_COORD_MASK = np.uint64((1 << _COORD_BITS) - 1)


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
