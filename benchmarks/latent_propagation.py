"""The trained latent space propagated over the spatial graph and across slices, scored with the suite's probe.

An ablation of the model's output, not of its training: for each dataset and seed of ``benchmarks/suite.py``
(prepared as the suite does), sd-inspire is trained with the defaults of ``tl.integrate`` (``random_state`` = the
seed) and its codes ``z`` (``obsm["X_inspire"]``) are transformed after training, with ``Â`` the row-normalised
spatial graph the model used and ``M`` the row-normalised mutual nearest neighbours of each code among the codes of
every other slice (10 per slice pair; spots without one keep their value):

- ``z``: the codes as trained (the suite's row);
- ``Az``: one hop of averaging over the spatial neighbours;
- ``half``: ``(z + Az) / 2``, a lazy step;
- ``A+mnn``: ``(Az + M Az) / 2``, the hop then an average with the matched codes of the other slices (``M`` from
  ``z``); ``A+mnnA``: the same with ``M`` searched among the ``Az``;
- ``half+mnn``: ``(h + M h) / 2`` with ``h`` = ``half``;
- ``coherent:8``, ``coherent:16``: the codes projected (orthogonally, so distances keep their scale) onto the 8 or
  16 directions along which they are most spatially coherent, the leading generalised eigenvectors of
  ``(Zc' Â Zc, Zc' Zc)`` with ``Zc`` the codes centred per slice (a ratio of 1: a direction as smooth over the
  graph as it can be; near 0: cell-to-cell noise); ``coherent:0.5`` keeps every direction whose ratio is at least
  0.5.

Each is scored by the suite's fixed probe with the run's seed (``ARI gmm``: mean per-slice ARI), the mean over three
more probe starts (``ARI gmm3``) and the suite's within-domain mixing. Appends one CSV row per dataset, seed and
variant to ``--out``::

    python benchmarks/latent_propagation.py --seeds 0 1 2 3 4 --out benchmarks/results/latent_propagation.csv

Session 32 ran the same computation (trained codes saved, variants scored by a second process, two processes side by
side, one thread each): ``benchmarks/results/latent_propagation_s32.csv``, discussed in ablations.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import sparse

sys.path.insert(0, str(Path(__file__).parent))

FIELDS = ["dataset", "seed", "variant", "ARI gmm", "ARI gmm3", "mixing"]
MNN_NEIGHBOURS = 10


def cross_slice_mnn(z: np.ndarray, slices: np.ndarray, k: int = MNN_NEIGHBOURS) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Row-normalised adjacency of mutual nearest neighbours across slices, and which rows have any."""
    from sklearn.neighbors import NearestNeighbors

    rows, cols = [], []
    names = np.unique(slices)
    for a in names:
        ia = np.flatnonzero(slices == a)
        for b in names[names != a]:
            ib = np.flatnonzero(slices == b)
            _, j = NearestNeighbors(n_neighbors=min(k, len(ib))).fit(z[ib]).kneighbors(z[ia])
            rows.append(np.repeat(ia, j.shape[1]))
            cols.append(ib[j.ravel()])
    r, c = np.concatenate(rows), np.concatenate(cols)
    knn = sparse.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(z), len(z)))
    mutual = sparse.csr_matrix(knn.multiply(knn.T))
    degree = np.asarray(mutual.sum(axis=1)).ravel()
    scale = sparse.diags(np.where(degree > 0, 1 / np.maximum(degree, 1), 0.0))
    return sparse.csr_matrix(scale @ mutual), degree > 0


def coherent_axes(z: np.ndarray, a: sparse.spmatrix, slices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directions of the codes from most to least spatially coherent, and their coherence ratios."""
    from scipy import linalg

    zc = z.copy()
    for name in np.unique(slices):
        zc[slices == name] -= zc[slices == name].mean(axis=0)
    spread = zc.T @ zc
    smooth = zc.T @ (a @ zc)
    ratio, axes = linalg.eigh(
        (smooth + smooth.T) / 2, spread + 1e-9 * np.trace(spread) / len(spread) * np.eye(len(spread))
    )
    order = np.argsort(ratio)[::-1]
    return axes[:, order], ratio[order]


def variants(z: np.ndarray, graph: sparse.spmatrix, slices: np.ndarray) -> dict[str, np.ndarray]:
    """The transformed codes described in the module docstring."""
    from sd_inspire._graph import normalized_adjacency

    a = normalized_adjacency(graph, normalization="mean")
    az = a @ z
    half = (z + az) / 2
    mnn, has = cross_slice_mnn(z, slices)
    mnn_a, has_a = cross_slice_mnn(az, slices)
    axes, ratio = coherent_axes(z, a, slices)
    # bases of the coherent projections, by name: the leading 8 or 16 directions, or those with a ratio >= 0.5
    coherent = {"8": axes[:, :8], "16": axes[:, :16], "0.5": axes[:, ratio >= 0.5]}
    return {
        "z": z,
        "Az": az,
        "half": half,
        "A+mnn": np.where(has[:, None], (az + mnn @ az) / 2, az),
        "half+mnn": np.where(has[:, None], (half + mnn @ half) / 2, half),
        "A+mnnA": np.where(has_a[:, None], (az + mnn_a @ az) / 2, az),
    } | {f"coherent:{name}": z @ np.linalg.qr(basis)[0] for name, basis in coherent.items()}


def scores(x: np.ndarray, truth: np.ndarray, slices: np.ndarray, seed: int) -> dict[str, float]:
    """The suite's probe (the run's start, and the mean of three more) and within-domain mixing."""
    import suite

    from sd_inspire.tl.metrics import batch_mixing

    k = len(np.unique(truth))
    starts = [suite.gmm_probe(x, k, seed * 10 + r) for r in range(3)]
    return {
        "ARI gmm": round(suite.slice_mean_ari(truth, suite.gmm_probe(x, k, seed), slices), 4),
        "ARI gmm3": round(float(np.mean([suite.slice_mean_ari(truth, lab, slices) for lab in starts])), 4),
        "mixing": round(batch_mixing(x, slices, truth), 4),
    }


def run_rows(table, dataset, seed: int, args) -> list[dict]:
    """One dataset and seed: sd-inspire trained with the defaults, one row per transform of its codes."""
    import sd_inspire as si

    si.tl.integrate(table, random_state=seed, show_progress_bar=False)
    truth = table.obs["domain"].astype(str).to_numpy()
    slices = table.obs["slice"].astype(str).to_numpy()
    ok = truth != "nan"
    z = np.asarray(table.obsm["X_inspire"], dtype=np.float64)
    return [
        {
            "dataset": dataset.name,
            "seed": seed,
            "variant": name,
            **scores(np.asarray(x)[ok], truth[ok], slices[ok], seed),
        }
        for name, x in variants(z, table.obsp["spatial_connectivities"], slices).items()
    ]


def main(argv: list[str] | None = None) -> int:
    from _common import append_rows_per_run

    return append_rows_per_run(__doc__, FIELDS, run_rows, argv)


if __name__ == "__main__":
    raise SystemExit(main())
