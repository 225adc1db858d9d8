"""Uncertainty of spatial factors (Laplace posterior, overdispersion, ensemble over seeds) against simulated truth.

    .venv/bin/python benchmarks/uncertainty.py [--n-models 1 5] [--seeds 0 1]

Simulated Visium-like slices (``datasets.simulate``): the expected counts of a spot are its true cell-type
proportions times cell-type profiles (rows summing to 1) times slice effects, the model's own form with
``n_factors = n_cell_types``. So each factor, matched to a cell type (the assignment of best total correlation),
has a true value per spot. ``tl.integrate(uncertainty=True, n_models=...)`` gives each spot's factor proportions
and their standard deviations. The table reports, per seed and ensemble size: factor recovery (mean matched
correlation), mean sd and mean absolute error, the coverage of the intervals mean ± 1 sd and mean ± 1.96 sd
(nominal 68% and 95%), how uncertainty follows where the truth is ambiguous (Spearman correlation of a spot's
uncertainty with its absolute error and with its depth; mean uncertainty at domain boundaries relative to
inside domains), the fitted count dispersion, wall time. Writes benchmarks/results/uncertainty.csv/.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_gb, report, setup


def matched(factors: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Column of ``factors`` matched to each column of ``truth`` (best total correlation)."""
    from scipy.optimize import linear_sum_assignment

    f = (factors - factors.mean(0)) / np.maximum(factors.std(0), 1e-12)
    t = (truth - truth.mean(0)) / np.maximum(truth.std(0), 1e-12)
    corr = t.T @ f / t.shape[0]
    rows, cols = linear_sum_assignment(-corr)
    return cols[np.argsort(rows)]


def boundary_fraction(table) -> np.ndarray:
    """Per spot, the fraction of its spatial neighbours in another true domain (0 inside a domain)."""
    from scipy import sparse

    graph = sparse.csr_matrix(table.obsp["spatial_connectivities"])
    domain = table.obs["domain"].astype(str).to_numpy()
    rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
    other = np.bincount(rows, weights=domain[graph.indices] != domain[rows], minlength=graph.shape[0])
    return other / np.maximum(np.diff(graph.indptr), 1)


def run(seed: int, n_models: int, n_types: int) -> dict:
    from scipy.stats import spearmanr

    import sd_inspire as si

    sdata = si.datasets.simulate(4, n_spots=2000, n_genes=1000, n_cell_types=n_types, random_state=seed)
    table = sdata["table"]
    truth = np.asarray(table.obsm["true_proportions"], dtype=float)
    t0 = time.perf_counter()
    si.tl.integrate(
        sdata, n_factors=n_types, n_models=n_models, uncertainty=True, random_state=seed, show_progress_bar=False
    )
    seconds = time.perf_counter() - t0
    mean, sd = table.obsm["inspire_factors"].astype(float), table.obsm["inspire_factors_sd"].astype(float)
    cols = matched(mean, truth)
    mean, sd = mean[:, cols], sd[:, cols]
    err = np.abs(mean - truth)
    spot_unc = table.obs["inspire_uncertainty"].to_numpy()
    boundary = boundary_fraction(table)
    return {
        "seed": seed,
        "n_models": n_models,
        "factor recovery": float(np.mean(np.diag(np.corrcoef(mean.T, truth.T)[:n_types, n_types:]))),
        "mean sd": float(sd.mean()),
        "mean |error|": float(err.mean()),
        "coverage ±1 sd (68%)": float((err <= sd).mean()),
        "coverage ±1.96 sd (95%)": float((err <= 1.96 * sd).mean()),
        "spearman(uncertainty, |error|)": float(spearmanr(spot_unc, err.mean(axis=1)).statistic),
        "spearman(uncertainty, depth)": float(spearmanr(spot_unc, table.obs["total_counts"]).statistic),
        "sd at domain boundaries / inside": float(spot_unc[boundary > 0].mean() / spot_unc[boundary == 0].mean()),
        "dispersion": float(np.mean(table.uns["inspire"]["uncertainty"]["dispersion"])),
        "seconds": round(seconds, 1),
        "peak GB": round(peak_rss_gb(), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--n-models", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--n-cell-types", type=int, default=6)
    args = parser.parse_args(argv)
    setup()
    rows = []
    for seed in args.seeds:
        for n_models in args.n_models:
            rows.append(run(seed, n_models, args.n_cell_types))
            print(rows[-1], flush=True)
    report(
        rows, "uncertainty", "python benchmarks/uncertainty.py " + " ".join(argv if argv is not None else sys.argv[1:])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
