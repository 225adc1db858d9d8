"""How many EM passes of each spot's factors on its own counts: factor recovery against the true proportions.

For each dataset of ``benchmarks/suite.py`` that knows the true cell-type proportions (``obsm["true_proportions"]``:
the eight ``datasets.simulate`` regimes and the two sets of ``benchmarks/_mixtures.py``), prepared as the suite
does, sd-inspire is trained with the defaults of ``tl.integrate`` but ``refine_factors=0`` (``random_state`` = the
seed), and its factors are refined with :func:`sd_inspire.model.refine_factors` (the programs and slice effects the
model fitted) for each number of passes in ``--passes`` (0: the factor head's output). Each is scored by the
suite's factor recovery (:func:`sd_inspire.tl.metrics.factor_recovery`), beside plain NMF of the same counts as the
suite runs it; ``--prior a ...`` also scores a MAP form of the passes (not in the package, rows ``MAP<a>``:
:func:`map_factors`). Appends one CSV row per dataset, seed and number of passes to ``--out``::

    python benchmarks/factor_refinement.py --seeds 0 1 [--passes 0 5 ...] [--prior 10 30 ...] --out FILE

Session 33 chose ``tl.integrate``'s default (five passes) from these rows (seeds 0-1, two processes side by side,
one thread each: ``benchmarks/results/factor_refinement_s33.csv``, computed by a prototype of the same EM in float64
on the sparse counts; this script, with the package's float32 passes, gives the same rows to the fourth decimal,
checked on the 100-gene panel, seed 0), discussed in ablations.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

FIELDS = ["dataset", "seed", "passes", "factor recovery"]
PASSES = [0, 5, 10, 25, 50, 100, 200]
#: Passes of the MAP variant (``--prior``), enough for it to settle.
MAP_PASSES = 50


def map_factors(factors, programs, effects, mask, counts, codes, prior: float, n_passes: int = MAP_PASSES):
    """A MAP form of the passes (not in the package): the model's proportions as a Dirichlet-like prior worth
    ``prior`` pseudo-counts, ``θ ← (θ Σ_g x_g φ_g / mix_g + prior θ0) / (L + prior)``, so deep spots move further
    from the spatial fit than shallow ones."""
    from sd_inspire.model import slice_programs

    weighted = slice_programs(programs, effects, mask)
    scale = weighted.sum(axis=2)
    phi = weighted / scale[:, :, None]
    x = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    out = np.empty_like(factors)
    for s in np.unique(codes):
        rows = codes == s
        theta0 = factors[rows] * scale[s]
        theta0 /= theta0.sum(axis=1, keepdims=True)
        theta, xs = theta0.copy(), x[rows]
        total = xs.sum(axis=1, keepdims=True)
        for _ in range(n_passes):
            mix = np.maximum(theta @ phi[s], 1e-300)
            theta = (theta * ((xs / mix) @ phi[s].T) + prior * theta0) / (total + prior)
            theta /= theta.sum(axis=1, keepdims=True)
        b = theta / scale[s]
        out[rows] = b / b.sum(axis=1, keepdims=True)
    return out


def fitted_count_model(table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, object, np.ndarray]:
    """What ``tl.integrate`` wrote of the count model, on the model's genes: factors, programs (K x G), slice
    effects, genes each slice measured, the counts and each spot's slice code."""
    from sd_inspire._utils import measured_mask

    uns = table.uns["inspire"]
    cols = table.var_names.get_indexer(list(uns["genes"]))
    names = [str(s) for s in uns["slices"]]
    measured = measured_mask(table, table.obs["slice"])
    mask = np.stack([measured[name].to_numpy(dtype=bool)[cols] for name in names])
    programs = np.asarray(table.varm["inspire_loadings"], dtype=np.float64)[cols].T
    codes = np.asarray(table.obs["slice"].astype(str).map({n: i for i, n in enumerate(names)}), dtype=int)
    effects = np.asarray(uns["slice_gene_effects"], dtype=np.float64)
    factors = np.asarray(table.obsm["inspire_factors"], dtype=np.float64)
    return factors, programs, effects, mask, table.layers["counts"][:, cols], codes


def run_rows(table, dataset, seed: int, args) -> list[dict]:
    """One dataset and seed: the factor head's output refined by each number of passes, and plain NMF."""
    import suite

    import sd_inspire as si
    from sd_inspire.tl.metrics import factor_recovery

    if "true_proportions" not in table.obsm:
        return []
    truth = table.obsm["true_proportions"]
    si.tl.integrate(table, random_state=seed, refine_factors=0, show_progress_bar=False)
    fitted = fitted_count_model(table)

    def row(passes, factors) -> dict:
        recovery = round(factor_recovery(factors, truth), 4)
        return {"dataset": dataset.name, "seed": seed, "passes": passes, "factor recovery": recovery}

    rows = [row(n, si.model.refine_factors(*fitted, n_passes=n)) for n in args.passes]
    rows += [row(f"MAP{prior:g}", map_factors(*fitted, prior)) for prior in args.prior]
    return [*rows, row("NMF", suite.nmf_factors(table, 20, seed))]


def _extra(parser) -> None:
    parser.add_argument("--passes", type=int, nargs="+", default=PASSES, help="numbers of EM passes to score")
    parser.add_argument(
        "--prior", type=float, nargs="*", default=[], help="pseudo-counts of the MAP variant's prior (rows 'MAP<a>')"
    )


def main(argv: list[str] | None = None) -> int:
    from _common import append_rows_per_run

    return append_rows_per_run(__doc__, FIELDS, run_rows, argv, _extra)


if __name__ == "__main__":
    raise SystemExit(main())
