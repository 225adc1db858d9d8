"""Differential factors: power on a known condition effect, false positives on null simulations.

    .venv/bin/python benchmarks/differential.py [--effect-seeds 0 1 2 3 4] [--null-seeds 0 ... 19] [--fold 2.0]
        [--name differential]

Each simulation is six Visium-like slices of one tissue (``datasets.simulate``, 600 spots, 300 genes, one sample
per slice), integrated by ``tl.integrate`` with its defaults, then tested by ``tl.differential_factors`` (three
slices per condition, the samples as replicates, Benjamini-Hochberg over the factors), with its default moderated
t-test and with the ordinary pooled t-test (``moderated=False``).

- **Effect**: in three slices chosen at random, one cell type (chosen at random among those with at least 5% of
  the cells) is ``--fold`` times as abundant in every domain (``simulate(abundance_change=...)``). "The factor" of
  that cell type is the factor whose usage correlates best, over spots, with the cell type's true proportion.
  Reported: its adjusted p-value and rank, and the other factors called (adjusted p < 0.05), with the correlation
  of their usage with that cell type (a factor sharing the cell type changes too; one that does not is a false
  call).
- **Null**: no effect; every split of the six slices into 3 + 3 (ten distinct ones) is tested. Reported: the share
  of tests (factor x split) with adjusted p < 0.05 and the share of splits with any such call (the family-wise
  rate that Benjamini-Hochberg bounds by 5% when nothing changes).

Prints and writes ``benchmarks/results/{name}_effect.md``, ``{name}_null.md`` and ``{name}_summary.md``.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, report, setup

N_SLICES, N_SPOTS, N_GENES = 6, 600, 300


def simulate_and_integrate(seed: int, change: dict | None):
    import sd_inspire as si

    adata = si.datasets.simulate(
        N_SLICES, n_spots=N_SPOTS, n_genes=N_GENES, abundance_change=change, random_state=seed, output="anndata"
    )
    start = time.perf_counter()
    si.tl.integrate(adata, random_state=seed, show_progress_bar=False)
    return adata, time.perf_counter() - start


def differential(adata, case_slices: list[str], moderated: bool):
    import sd_inspire as si

    adata.obs["condition"] = np.where(adata.obs["slice"].isin(case_slices), "case", "control")
    si.tl.differential_factors(
        adata, condition_key="condition", sample_key="slice", reference="control", moderated=moderated
    )
    return adata.uns["inspire_differential"]["results"].set_index("factor")


def effect_run(seed: int, fold: float) -> list[dict]:
    rng = np.random.default_rng(1000 + seed)
    probe_data = __import__("sd_inspire").datasets.simulate(
        N_SLICES, n_spots=N_SPOTS, n_genes=N_GENES, random_state=seed, output="anndata"
    )
    shares = probe_data.obsm["true_proportions"].mean(axis=0)
    candidates = np.flatnonzero(shares >= 0.05)
    cell_type = f"CT{int(rng.choice(candidates))}"
    case = sorted(rng.choice(N_SLICES, 3, replace=False).tolist())
    adata, seconds = simulate_and_integrate(seed, {int(s): {cell_type: fold} for s in case})
    truth = adata.obsm["true_proportions"][:, int(cell_type[2:])]
    beta = np.asarray(adata.obsm["inspire_factors"])
    corr = np.array(
        [np.corrcoef(beta[:, k], truth)[0, 1] if beta[:, k].std() > 0 else 0.0 for k in range(beta.shape[1])]
    )
    target = f"factor_{int(np.nanargmax(corr))}"
    rows = []
    for moderated in (True, False):
        results = differential(adata, [f"slice{s}" for s in case], moderated)
        called = results.index[results["pvalue_adj"] < 0.05].tolist()
        others = [f for f in called if f != target]
        rows.append(
            {
                "test": "moderated t" if moderated else "t",
                "seed": seed,
                "cell type": cell_type,
                "fold": fold,
                "case slices": " ".join(map(str, case)),
                "factor": target,
                "corr with cell type": float(corr[int(target.split("_")[1])]),
                "log2 FC": float(results.loc[target, "log2_fold_change"]),
                "p adj": float(results.loc[target, "pvalue_adj"]),
                "rank": int(results.index.get_loc(target)) + 1,
                "found": bool(results.loc[target, "pvalue_adj"] < 0.05),
                "other calls": len(others),
                "others' corr with cell type": " ".join(f"{corr[int(f.split('_')[1])]:.2f}" for f in others),
                "integrate s": seconds,
            }
        )
    return rows


def null_runs(seed: int) -> list[dict]:
    adata, seconds = simulate_and_integrate(seed, None)
    names = [f"slice{s}" for s in range(N_SLICES)]
    rows = []
    for case in itertools.combinations(names, 3):
        if "slice0" not in case:  # the complement of a split already tested: the same test
            continue
        for moderated in (True, False):
            results = differential(adata, list(case), moderated)
            rows.append(
                {
                    "test": "moderated t" if moderated else "t",
                    "seed": seed,
                    "case slices": " ".join(c[5:] for c in case),
                    "tests": len(results),
                    "calls": int((results["pvalue_adj"] < 0.05).sum()),
                    "raw p < 0.05": int((results["pvalue"] < 0.05).sum()),
                    "min p adj": float(results["pvalue_adj"].min()),
                    "integrate s": seconds,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--effect-seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--null-seeds", type=int, nargs="*", default=list(range(20)))
    parser.add_argument("--fold", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="differential")
    args = parser.parse_args()
    setup(args.threads)
    command = "python benchmarks/differential.py " + " ".join(sys.argv[1:])
    effect = [row for seed in args.effect_seeds for row in effect_run(seed, args.fold)]
    null = [row for seed in args.null_seeds for row in null_runs(seed)]
    lines = [f"Command: `{command}`; {platform.processor() or platform.machine()}, torch threads {args.threads}.\n"]
    if effect:
        table = report(effect, f"{args.name}_effect", command)
        for name, part in table.groupby("test", sort=False):
            lines.append(
                f"{name}: effect ({args.fold}x one cell type in 3 of 6 slices), {len(part)} simulations: the cell "
                f"type's factor found (adjusted p < 0.05) in {int(part['found'].sum())}; median rank "
                f"{part['rank'].median():.0f}; other factors called per simulation: {part['other calls'].mean():.1f} "
                "on average."
            )
    if null:
        table = report(null, f"{args.name}_null", command)
        for name, part in table.groupby("test", sort=False):
            lines.append(
                f"{name}: null, {part['seed'].nunique()} simulations x {part.groupby('seed').size().iloc[0]} splits: "
                f"{part['calls'].sum()} of {part['tests'].sum()} tests called "
                f"({part['calls'].sum() / part['tests'].sum():.1%}); splits with any call: "
                f"{(part['calls'] > 0).mean():.1%}; raw p < 0.05: {part['raw p < 0.05'].sum() / part['tests'].sum():.1%} "
                "of tests."
            )
    text = "\n\n".join(lines) + "\n"
    (RESULTS / f"{args.name}_summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
