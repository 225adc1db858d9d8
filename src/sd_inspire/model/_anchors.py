"""Mutual nearest neighbours across slices: the anchors of the alignment term.

A pair ``(i, j)`` of spots from two different slices is an anchor when ``j`` is among the ``k`` nearest spots of
its slice to ``i`` and ``i`` among the ``k`` nearest of its slice to ``j`` (cosine similarity of latent codes). Only
spots with a counterpart are paired, so a domain that one slice lacks gets no partner there and is not pulled onto
another domain: the alignment holds when slices differ in composition, unlike a discriminator, which asks every
slice for the same mixture of codes. No AnnData here.
"""

from __future__ import annotations

import numpy as np

#: Spots of each slice among which anchors are searched (drawn at random in larger slices): the search is
#: quadratic in this number per pair of slices, and a few thousand anchors per slice pair are plenty for a loss
#: term drawn a few hundred at a time.
MAX_ANCHOR_SPOTS = 4096


def mutual_neighbours(
    z: np.ndarray, slices: np.ndarray, k: int, *, chunk_size: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Anchor pairs of mutual ``k``-nearest neighbours between every two slices, by cosine similarity.

    Returns row indices ``(i, j)`` into ``z`` with ``slices[i] < slices[j]``.

    Parameters
    ----------
    z
        Codes, n x d.
    slices
        Slice code of each row.
    k
        Neighbours searched in the other slice.
    chunk_size
        Rows of similarities computed at once.
    """
    x = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    groups = [np.flatnonzero(slices == s) for s in np.unique(slices)]
    first, second = [], []
    for a in range(len(groups)):
        for b in range(a + 1, len(groups)):
            ia, ib = groups[a], groups[b]
            ab = _top_k(x[ia], x[ib], k, chunk_size)  # for each row of a, its neighbours in b (local indices)
            ba = _top_k(x[ib], x[ia], k, chunk_size)
            rows = np.repeat(np.arange(ia.size), ab.shape[1])
            cols = ab.ravel()
            # mutual: row r of a is among the neighbours of its neighbour c in b
            keep = (ba[cols] == rows[:, None]).any(axis=1)
            first.append(ia[rows[keep]])
            second.append(ib[cols[keep]])
    if not first:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(first).astype(np.int64), np.concatenate(second).astype(np.int64)


def _top_k(x: np.ndarray, y: np.ndarray, k: int, chunk_size: int) -> np.ndarray:
    """Indices of the ``k`` rows of ``y`` most similar to each row of ``x`` (unit rows), in increasing order."""
    import torch  # its top-k selection is ten times numpy's argpartition on these blocks (the bulk of a search)

    k = min(k, y.shape[0])
    out = np.empty((x.shape[0], k), dtype=np.int64)
    for start in range(0, x.shape[0], chunk_size):
        sim = torch.from_numpy(x[start : start + chunk_size] @ y.T)
        top = torch.topk(sim, k, dim=1, sorted=False).indices.numpy()
        out[start : start + chunk_size] = np.sort(top, axis=1)  # one order whatever the selection algorithm
    return out


def anchor_subsample(slices: np.ndarray, rng: np.random.Generator, max_per_slice: int = MAX_ANCHOR_SPOTS) -> np.ndarray:
    """Sorted rows of at most ``max_per_slice`` spots of each slice, drawn without replacement."""
    picked = []
    for s in np.unique(slices):
        rows = np.flatnonzero(slices == s)
        picked.append(rows if rows.size <= max_per_slice else rng.choice(rows, max_per_slice, replace=False))
    return np.sort(np.concatenate(picked))


def neighbour_reach(z: np.ndarray, slices: np.ndarray, k: int) -> np.ndarray:
    """Squared Euclidean distance of each row to its ``k``-th nearest row of the same slice.

    In units of the total variance of ``z``, the scale of the alignment term.
    """
    from sklearn.neighbors import NearestNeighbors

    spread = max(float(((z - z.mean(axis=0)) ** 2).sum(axis=1).mean()), 1e-12)
    reach = np.zeros(z.shape[0])
    for s in np.unique(slices):
        rows = np.flatnonzero(slices == s)
        n = min(k + 1, rows.size)
        distances = NearestNeighbors(n_neighbors=n).fit(z[rows]).kneighbors(z[rows])[0]
        reach[rows] = distances[:, -1] ** 2
    return reach / spread
