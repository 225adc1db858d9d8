"""sd-inspire against unintegrated baselines on simulated slices with ground truth.

    .venv/bin/python benchmarks/simulated.py [--seeds 0 1 2] [--n-spots 2000] [--max-steps N] [--n-latent 32 16]
        [--features pearson lognorm] [--n-hops 3] [--extra-components 2]

Two scenarios from ``sd_inspire.datasets.simulate``: four Visium-like replicates with strong per-slice batch effects,
and four technologies (Visium, Stereo-seq, Slide-seq, MERFISH panel) in the union gene space. For each: ARI/NMI of
domains (GMM, K = number of true domains) against the true domains, batch mixing within true domains, and factor
recovery (best correlation of a factor with each true cell-type proportion), for sd-inspire and two baselines:
PCA of the log expression and PCA of the neighbour-smoothed log expression (Â²X), both without integration.
sd-inspire runs once per latent width in ``--n-latent`` and encoder input in ``--features`` (the defaults of
``tl.integrate`` are labelled plainly), with ``--n-hops`` hops. Rows marked "K+2→K" fit a GMM with
``--extra-components`` more components than domains and merge them (``tl.domains(n_components=K + 2)``;
``--extra-components 0`` leaves these rows out). Domains are clustered as is (``tl.domains(smooth=0)``) and, in rows
marked "smooth=1", after one round of averaging over the neighbours (the default of ``tl.domains``).
Writes benchmarks/results/simulated.csv/.md (``--name`` changes the file name).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_FEATURES, DEFAULT_N_HOPS, DEFAULT_N_LATENT, model_label, peak_rss_gb, report, setup

SCENARIOS = {
    "replicates": {"technology": "visium", "batch_effect": 0.8},
    "cross-technology": {"technology": ["visium", "stereoseq", "slideseq", "merfish"], "batch_effect": 0.5},
}


def score(table, rep: str, labels, name: str, scenario: str, seed: int, factors=None, extra=None) -> dict:
    from sd_inspire.tl.metrics import ari, batch_mixing, factor_recovery, nmi, per_group_scores

    truth = table.obs["domain"].to_numpy()
    slices = table.obs["slice"].to_numpy()
    per = per_group_scores(truth, labels, slices, score="ari")
    row = {
        "scenario": scenario,
        "method": name,
        "seed": seed,
        "ARI pooled": ari(truth, labels),
        "ARI mean per slice": float(np.mean(list(per.values()))),
        "NMI pooled": nmi(truth, labels),
        "mixing (within domain)": batch_mixing(table.obsm[rep], slices, truth),
        "factor recovery": factor_recovery(factors, table.obsm["true_proportions"]) if factors is not None else np.nan,
    }
    row.update(extra or {})
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-spots", type=int, default=2000)
    parser.add_argument("--n-genes", type=int, default=1000)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--n-latent", type=int, nargs="+", default=[DEFAULT_N_LATENT])
    parser.add_argument("--features", nargs="+", choices=("pearson", "lognorm"), default=[DEFAULT_FEATURES])
    parser.add_argument("--n-hops", type=int, default=DEFAULT_N_HOPS)
    parser.add_argument("--extra-components", type=int, default=2)
    parser.add_argument("--name", default="simulated")
    args = parser.parse_args(argv)
    setup()
    from sklearn.decomposition import PCA

    import sd_inspire as si
    from sd_inspire.gr._propagate import normalized_adjacency

    rows = []
    for scenario, kwargs in SCENARIOS.items():
        for seed in args.seeds:
            adata = si.datasets.simulate(
                4, n_spots=args.n_spots, n_genes=args.n_genes, random_state=seed, output="anndata", **kwargs
            )
            n_domains = adata.obs["domain"].nunique()
            # "as is": no smoothing over neighbours (tl.domains' default since session 31 is one hop: its own rows)
            clusterings = [("", {"smooth": 0}), (", smooth=1", {"smooth": 1})]
            if args.extra_components:
                merged = f", K+{args.extra_components}→K"
                clusterings.append((merged, {"smooth": 0, "n_components": n_domains + args.extra_components}))
            gene_space = "union" if scenario == "cross-technology" else "shared"
            si.pp.preprocess(adata, n_top_genes=min(2000, args.n_genes), gene_space=gene_space)
            si.gr.spatial_neighbors(adata)
            hv = adata.var["highly_variable"].to_numpy() & adata.varm["measured"].all(axis=1).to_numpy()
            x = adata.X[:, hv].toarray()
            a_hat = normalized_adjacency(adata.obsp["spatial_connectivities"])
            for name, feats in (("PCA(X)", x), ("PCA(Â²X)", a_hat @ (a_hat @ x))):
                key = "X_" + name
                adata.obsm[key] = PCA(30, random_state=seed).fit_transform(feats)
                for suffix, clustering in clusterings:
                    si.tl.domains(
                        adata, n_domains=n_domains, use_rep=key, key_added="d", random_state=seed, **clustering
                    )
                    rows.append(score(adata, key, adata.obs["d"].to_numpy(), name + suffix, scenario, seed))
            for n_latent, features in itertools.product(args.n_latent, args.features):
                label = model_label(n_latent, features=features, n_hops=args.n_hops)
                start = time.perf_counter()
                si.tl.integrate(
                    adata,
                    n_latent=n_latent,
                    features=features,
                    n_hops=args.n_hops,
                    max_steps=args.max_steps,
                    random_state=seed,
                    show_progress_bar=False,
                )
                seconds = time.perf_counter() - start
                extra = {"seconds": round(seconds, 1), "peak GB": round(peak_rss_gb(), 2)}
                for suffix, clustering in clusterings:
                    si.tl.domains(adata, n_domains=n_domains, random_state=seed, **clustering)
                    labels = adata.obs["inspire_domain"].to_numpy()
                    factors = adata.obsm["inspire_factors"]
                    rows.append(score(adata, "X_inspire", labels, label + suffix, scenario, seed, factors, extra))
                    print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    cols = ["ARI pooled", "ARI mean per slice", "NMI pooled", "mixing (within domain)", "factor recovery"]
    summary = table.groupby(["scenario", "method"], sort=False)[cols].agg(["mean", "std"])
    summary.columns = [f"{a} {b}" for a, b in summary.columns]
    print(summary.round(3).to_string())
    summary_rows = [{"scenario": s, "method": m, "seed": "mean", **dict(r)} for (s, m), r in summary.iterrows()]
    report(
        rows + summary_rows,
        args.name,
        "python benchmarks/simulated.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
