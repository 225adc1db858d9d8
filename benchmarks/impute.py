"""Impute genes a slice did not measure: hide 20% of one slice's genes, integrate, predict them, compare.

    .venv/bin/python benchmarks/impute.py [--datasets dlpfc simulated] [--seeds 0] [--fraction 0.2]

For each data set, a random ``--fraction`` of the genes of one slice (the last) that another slice also measured
are hidden: their counts in that slice are set to zero and ``varm["measured"]`` says the slice did not measure
them. The slices are integrated in the ``"union"`` gene space and the hidden genes imputed. Each method is scored
by the Pearson correlation, over the spots of that slice, between its prediction and the hidden log-normalised
expression, per gene (mean and median over genes with any expression, and over those among the 1,000 most variable genes). Methods: copying the nearest latent
neighbour's expression (INSPIRE's tutorial), the mean of 50 latent neighbours, ``tl.impute`` (kernel-weighted
neighbours, spatially smoothed; the default) and ``tl.impute(method="model")`` (on the hidden genes inside the
model's gene space). Writes benchmarks/results/impute.csv/.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, peak_rss_gb, report, setup
from dlpfc import load as load_dlpfc


def hide_genes(sdata, target: str, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hide genes of slice ``target`` in place; return their columns and their true log-normalised expression."""
    table = sdata["table"]
    measured = table.varm["measured"]
    others = measured.drop(columns=[target]).any(axis=1).to_numpy()
    candidates = np.flatnonzero(measured[target].to_numpy() & others)
    rng = np.random.default_rng(seed)
    hidden = np.sort(rng.choice(candidates, size=int(round(fraction * measured[target].sum())), replace=False))
    rows = np.flatnonzero((table.obs["slice"] == target).to_numpy())
    counts = sparse.csr_matrix(table.X, dtype=np.float32)
    total = np.asarray(counts[rows].sum(axis=1)).ravel()
    truth = np.log1p(1e4 * counts[rows][:, hidden].toarray() / total[:, None])
    counts = counts.tolil()
    counts[np.ix_(rows, hidden)] = 0
    table.X = counts.tocsr()
    table.X.eliminate_zeros()
    measured.loc[table.var_names[hidden], target] = False
    table.varm["measured"] = measured
    return hidden, truth


def gene_correlations(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson correlation per column; NaN where either column is constant."""
    p = pred - pred.mean(axis=0)
    t = truth - truth.mean(axis=0)
    denom = np.sqrt((p**2).sum(axis=0) * (t**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (p * t).sum(axis=0) / denom, np.nan)


def run(name: str, sdata, seed: int, fraction: float, max_steps: int | None) -> list[dict]:
    import sd_inspire as si

    table = sdata["table"]
    target = str(table.obs["slice"].cat.categories[-1])
    hidden, truth = hide_genes(sdata, target, fraction, seed)
    t0 = time.perf_counter()
    si.pp.preprocess(sdata, gene_space="union", n_top_genes=3000)
    si.gr.spatial_neighbors(sdata)
    si.tl.integrate(sdata, random_state=seed, max_steps=max_steps, show_progress_bar=False)
    integrate_s = time.perf_counter() - t0
    rows_t = np.flatnonzero((table.obs["slice"] == target).to_numpy())
    genes = table.var_names[hidden]
    expressed = truth.std(axis=0) > 0
    in_model = table.var["inspire_gene"].to_numpy()[hidden]
    # informative genes: among the 1,000 most variable of the gene space (ranked on the slices that measured them)
    variable = (table.var["highly_variable_rank"].to_numpy()[hidden] < 1000) & expressed
    methods = {
        "nearest latent neighbour (INSPIRE tutorial)": {"n_neighbors": 1, "smooth": 0},
        "mean of 50 latent neighbours": {"n_neighbors": 50, "smooth": 0},
        "tl.impute (neighbors, default)": {},
        "tl.impute (model)": {"method": "model"},
    }
    out = []
    for method, kwargs in methods.items():
        use = expressed & (in_model if kwargs.get("method") == "model" else True)
        t1 = time.perf_counter()
        si.tl.impute(sdata, genes=genes[use], key_added="imp", **kwargs)
        seconds = time.perf_counter() - t1
        layer = table.layers["imp"]
        pred = layer[rows_t][:, table.var_names.get_indexer(genes[use])].toarray()
        corr = gene_correlations(pred, truth[:, use])
        top = variable[use]
        out.append(
            {
                "data": name,
                "seed": seed,
                "method": method,
                "hidden genes scored": int(use.sum()),
                "corr mean": float(np.nanmean(corr)),
                "corr median": float(np.nanmedian(corr)),
                "variable genes scored": int(top.sum()),
                "corr mean (variable)": float(np.nanmean(corr[top])),
                "corr median (variable)": float(np.nanmedian(corr[top])),
                "impute s": round(seconds, 2),
                "integrate s": round(integrate_s, 1),
                "peak GB": round(peak_rss_gb(), 2),
            }
        )
        print(out[-1], flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["dlpfc", "simulated"], choices=["dlpfc", "simulated"])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "visium" / "DLPFC_151673-151676")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args(argv)
    setup()
    import sd_inspire as si

    rows = []
    for seed in args.seeds:
        for name in args.datasets:
            if name == "dlpfc":
                if not args.data.is_dir():
                    parser.error(f"no DLPFC data at {args.data}")
                sdata = load_dlpfc(args.data)
            else:
                sdata = si.datasets.simulate(4, n_spots=3000, n_genes=2000, random_state=seed)
            rows += run(name, sdata, seed, args.fraction, args.max_steps)
    report(rows, "impute", "python benchmarks/impute.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
