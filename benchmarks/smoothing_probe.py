"""How much neighbour smoothing a suite dataset's annotation tolerates: the fixed probe on PCA of ``Â^h Y``.

For one dataset of ``benchmarks/suite.py`` (prepared as the suite does), the principal components ``Y`` of the
per-slice centred log expression (optionally each gene scaled to unit variance within its slice) are averaged over
``h`` hops of the spatial graph, and the suite's GMM probe (three probe starts) scores each. Cell-type annotations
lose their structure after one hop; tissue domains gain from a few. Prints one line per setting::

    python benchmarks/smoothing_probe.py MERFISH
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    import suite
    from sklearn.decomposition import PCA

    from sd_inspire.gr import propagate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="name (substring) of a suite dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hops", type=int, nargs="+", default=[0, 1, 3])
    args = parser.parse_args()
    dataset = next(d for d in suite.DATASETS if args.dataset.lower() in d.name.lower())
    table = suite.prepare(dataset.load(args.seed, False))
    truth = table.obs["domain"].astype(str).to_numpy()
    slices = table.obs["slice"].astype(str).to_numpy()
    k = len(np.unique(truth))
    for scaled in (False, True):
        y = suite._z_scores(table, scale=scaled)
        work = table.copy()
        work.obsm["y"] = PCA(min(30, y.shape[1] - 1), random_state=args.seed).fit_transform(y)
        for hops in args.hops:
            if hops:
                propagate(work, n_hops=hops, use_rep="y", key_added="smoothed")
            emb = work.obsm["X_smoothed"] if hops else work.obsm["y"]
            scores = [suite.slice_mean_ari(truth, suite.gmm_probe(emb, k, r), slices) for r in range(3)]
            print(f"{dataset.name}: genes scaled={scaled}, hops={hops}: probe ARI {np.round(scores, 3).tolist()}")


if __name__ == "__main__":
    main()
