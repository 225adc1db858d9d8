"""Reference mapping: train on some slices, map a held-out slice onto the kept model, compare with joint integration.

    .venv/bin/python benchmarks/reference_mapping.py [--seeds 0 1 2 3 4] [--datasets dlpfc replicates cross]
        [--data ../shared/data/visium/DLPFC_151673-151676] [--name reference_mapping]

For each data set and each held-out slice: ``tl.integrate`` on the other slices (``model_dir``), then
``tl.map_query`` of the held-out slice onto that model, and ``tl.transfer_labels`` of the reference's annotation.
Beside it, ``tl.integrate`` of all slices jointly (once per data set and seed) and per-slice clustering (PCA of the
held-out slice's own neighbour-smoothed z-scores, ``PCA(Â²z)``). Every representation of the held-out slice is
scored by the fixed probe (``GaussianMixture(K, covariance_type="tied", init_params="kmeans", reg_covar=1e-3)``, K
the number of annotated domains of that slice) and k-means; "pooled" columns fit one mixture (K of the whole data
set) over all slices (the reference's and the mapped query's codes, or the joint integration's) and score the
held-out slice; the transferred labels are scored by accuracy and ARI.

Data sets: ``dlpfc``, the four DLPFC slices (manual layers), each held out in turn; ``replicates``, four simulated
Visium-like replicates, each held out in turn; ``cross``, three simulated Visium-like slices as the reference and a
200-gene MERFISH-like panel as the query. Targets (issue 22): mapped-slice ARI within 0.03 of joint integration,
mapping at least 10x faster than retraining (joint integration).

Prints and writes ``benchmarks/results/{name}.csv/.md`` (one row per data set, held-out slice and seed) and
``{name}_summary.md`` (mean ± sd over seeds and held-out slices).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED_DATA, peak_rss_gb, report, setup
from suite import N_PCS, _z_scores, gmm_probe, probe

DLPFC = SHARED_DATA / "visium" / "DLPFC_151673-151676"


def datasets(names: list[str], dlpfc: Path, seed: int) -> dict[str, tuple]:
    """``name -> (table, label column, held-out slices)``."""
    import sd_inspire as si

    out = {}
    for name in names:
        if name == "dlpfc":
            from dlpfc import load

            table = load(dlpfc)["table"]  # spots without a manual layer are kept, and not scored
            out[name] = (table, "layer", list(table.obs["slice"].cat.categories))
        elif name == "replicates":
            table = si.datasets.simulate(4, n_spots=1500, n_genes=500, random_state=100 + seed, output="anndata")
            out[name] = (table, "domain", list(table.obs["slice"].cat.categories))
        elif name == "cross":
            table = si.datasets.simulate(
                4,
                n_spots=1500,
                n_genes=800,
                technology=["visium", "visium", "visium", "merfish"],
                panel_size=200,
                random_state=200 + seed,
                output="anndata",
            )
            out[name] = (table, "domain", ["slice3"])
        else:
            raise ValueError(f"unknown data set {name!r}")
    return out


def smoothed_pca(table, seed: int) -> np.ndarray:
    """``PCA(Â²z)`` of one slice on its own: the per-slice clustering baseline of ``benchmarks/suite.py``."""
    from sklearn.decomposition import PCA

    from sd_inspire.gr import propagate

    work = table.copy()
    work.obsm["z"] = _z_scores(work)
    propagate(work, n_hops=2, use_rep="z", key_added="smooth")
    return PCA(min(N_PCS, table.n_vars - 1), random_state=seed).fit_transform(work.obsm["X_smooth"])


def held_out_scores(latent: np.ndarray, truth: np.ndarray, seed: int) -> dict[str, float]:
    from sd_inspire.tl.metrics import ari

    known = pd.notna(truth)
    k = int(pd.Series(truth[known]).nunique())
    labels = probe(latent[known], k, seed)
    return {"gmm": ari(truth[known], labels["gmm"]), "kmeans": ari(truth[known], labels["kmeans"])}


def run(name: str, table, label: str, held_out: list[str], seed: int) -> list[dict]:
    import sd_inspire as si
    from sd_inspire.tl.metrics import ari

    si.pp.preprocess(table)
    si.gr.spatial_neighbors(table)
    joint = table.copy()
    start = time.perf_counter()
    si.tl.integrate(joint, random_state=seed, show_progress_bar=False)
    joint_seconds = time.perf_counter() - start
    rows = []
    for query_slice in held_out:
        is_query = (table.obs["slice"] == query_slice).to_numpy()
        reference, query = table[~is_query].copy(), table[is_query].copy()
        truth = query.obs[label].to_numpy(dtype=object)
        row = {"data": name, "query": query_slice, "seed": seed, "query spots": int(is_query.sum())}
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            si.tl.integrate(reference, random_state=seed, model_dir=Path(folder) / "m", show_progress_bar=False)
            reference_seconds = time.perf_counter() - start
            start = time.perf_counter()
            si.tl.map_query(query, Path(folder) / "m", random_state=seed, show_progress_bar=False)
            map_seconds = time.perf_counter() - start
        mapped = held_out_scores(query.obsm["X_inspire"], truth, seed)
        # one mixture over all slices, scored on the held-out slice: reference + mapped query, and joint
        k = int(table.obs[label].dropna().nunique())
        both = np.vstack([reference.obsm["X_inspire"], query.obsm["X_inspire"]])
        pooled_mapped = gmm_probe(both, k, seed)[reference.n_obs :]
        pooled_joint = gmm_probe(joint.obsm["X_inspire"], k, seed)[is_query]
        known = pd.notna(truth)
        together = held_out_scores(joint.obsm["X_inspire"][is_query], truth, seed)
        alone = held_out_scores(smoothed_pca(query, seed), truth, seed)
        si.tl.transfer_labels(query, reference, key=label)
        transferred = query.obs[f"{label}_transferred"].astype(str).to_numpy()
        row.update(
            {
                "ARI mapped": mapped["gmm"],
                "ARI joint": together["gmm"],
                "ARI per-slice PCA(Â²z)": alone["gmm"],
                "ARI mapped (pooled)": ari(truth[known], pooled_mapped[known]),
                "ARI joint (pooled)": ari(truth[known], pooled_joint[known]),
                "kmeans mapped": mapped["kmeans"],
                "kmeans joint": together["kmeans"],
                "kmeans per-slice": alone["kmeans"],
                "transfer accuracy": float((transferred[known] == truth[known].astype(str)).mean()),
                "transfer ARI": ari(truth[known], transferred[known]),
                "map s": map_seconds,
                "joint s": joint_seconds,
                "reference s": reference_seconds,
                "speed-up vs joint": joint_seconds / map_seconds,
                "peak GB": peak_rss_gb(),
            }
        )
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--datasets", nargs="+", default=["dlpfc", "replicates", "cross"])
    parser.add_argument("--data", type=Path, default=DLPFC)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="reference_mapping")
    args = parser.parse_args()
    setup(args.threads)
    names = [n for n in args.datasets if n != "dlpfc" or args.data.is_dir()]
    if len(names) < len(args.datasets):
        print(f"DLPFC not found at {args.data}: skipped")
    rows = []
    for seed in args.seeds:
        for name, (table, label, held_out) in datasets(names, args.data, seed).items():
            rows += run(name, table, label, held_out, seed)
    command = "python benchmarks/reference_mapping.py " + " ".join(sys.argv[1:])
    report(rows, args.name, command)
    table = pd.DataFrame(rows)
    columns = [
        "ARI mapped",
        "ARI joint",
        "ARI mapped (pooled)",
        "ARI joint (pooled)",
        "ARI per-slice PCA(Â²z)",
        "transfer accuracy",
        "map s",
        "joint s",
    ]
    summary = table.groupby("data")[columns].agg(lambda v: f"{np.mean(v):.3f} ± {np.std(v):.3f}")
    summary["speed-up (median)"] = table.groupby("data")["speed-up vs joint"].median().round(1)
    summary["ARI mapped - joint"] = (
        table.assign(d=table["ARI mapped"] - table["ARI joint"]).groupby("data")["d"].mean().round(3)
    )
    header = (
        f"Command: `{command}`; {platform.processor() or platform.machine()}, torch threads {args.threads}; "
        f"seeds {args.seeds}. Mean ± sd over seeds and held-out slices.\n\n"
    )
    (RESULTS / f"{args.name}_summary.md").write_text(header + summary.to_markdown() + "\n")
    print(summary.to_string())


if __name__ == "__main__":
    main()
