"""``tl.domains`` with and without averaging over the neighbours, on every suite dataset: what chose its ``smooth``.

For each dataset and seed of ``benchmarks/suite.py`` (prepared as the suite does), sd-inspire is trained with the
defaults of ``tl.integrate`` (``random_state`` = the seed) and its latent space clustered by ``tl.domains`` (its
GMM, best of ten starts, K = the number of annotated domains) with ``smooth`` 0, 1 and 2; with ``--baselines`` the
suite's PCA(Â²z) and Harmony(PCA(Â²z)) are clustered the same way with ``smooth`` 0 and 1. Scores are the mean
per-slice ARI against the annotation. Appends one CSV row per dataset, seed and representation to ``--out``, so
that runs split over processes (one per seed, say) add to one file::

    python benchmarks/domains_smooth.py --seeds 0 1 2 3 4 --out benchmarks/results/domains_smooth.csv
    python benchmarks/domains_smooth.py --seeds 0 --datasets DLPFC --baselines --out /tmp/domains.csv

Session 31 ran the equivalent of these (one process per dataset and seed, one thread each): the results are
``benchmarks/results/domains_smooth_s31.csv`` and ``domains_smooth_baselines_s31.csv``, discussed in ablations.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

FIELDS = ["dataset", "seed", "method", "smooth0", "smooth1", "smooth2"]


def domain_scores(table, use_rep: str, k: int, seed: int, smooths: tuple[int, ...]) -> dict[str, float]:
    """Mean per-slice ARI of ``tl.domains`` on ``obsm[use_rep]`` for each ``smooth`` (only annotated spots)."""
    import suite

    import sd_inspire as si

    truth = table.obs["domain"].astype(str).to_numpy()
    slices = table.obs["slice"].astype(str).to_numpy()
    annotated = truth != "nan"
    out = {}
    for smooth in smooths:
        si.tl.domains(
            table,
            n_domains=k,
            use_rep=use_rep,
            smooth=smooth,
            random_state=seed,
            key_added="d",
            show_progress_bar=False,
        )
        labels = table.obs["d"].astype(str).to_numpy()
        out[f"smooth{smooth}"] = round(suite.slice_mean_ari(truth[annotated], labels[annotated], slices[annotated]), 3)
    return out


def run_rows(table, dataset, seed: int, args) -> list[dict]:
    """One dataset and seed: sd-inspire trained with the defaults, its rows (and the baselines' with --baselines)."""
    import suite

    import sd_inspire as si

    annotation = table.obs["domain"].astype(str)
    k = annotation[annotation != "nan"].nunique()
    si.tl.integrate(table, random_state=seed, show_progress_bar=False)
    rows = {"sd-inspire": domain_scores(table, "X_inspire", k, seed, (0, 1, 2))}
    if args.baselines:
        for name, result in suite.baselines(table, seed).items():
            if name != "PCA(z)":
                table.obsm["X_baseline"] = np.asarray(result["embedding"])
                rows[name] = domain_scores(table, "X_baseline", k, seed, (0, 1))
    return [{"dataset": dataset.name, "seed": seed, "method": method, **scores} for method, scores in rows.items()]


def main(argv: list[str] | None = None) -> int:
    from _common import append_rows_per_run

    def options(parser):
        parser.add_argument("--baselines", action="store_true", help="also cluster PCA(Â²z) and Harmony(PCA(Â²z))")

    return append_rows_per_run(__doc__, FIELDS, run_rows, argv, options)


if __name__ == "__main__":
    raise SystemExit(main())
