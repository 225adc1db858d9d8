"""Register slices with ``tl.align``: simulated slices under known motions, and the real DLPFC slices.

    .venv/bin/python benchmarks/align.py [--parts simulated dlpfc] [--max-steps N] [--repeats 3] [--data DIR]

(a) Simulated: four Visium-like serial sections (``si.datasets.simulate``, 2,000 spots each, 1,000 genes; the
simulator lays the same tissue over each slice's extent, so the true registration is the identity only for slices of
equal size) integrated with ``tl.integrate`` (``--max-steps``, 300 by default), then each slice's coordinates are
jittered (10 µm, so that slices do not share one exact spot lattice) and moved by a known rotation (10-40°) and
translation (hundreds of µm). Per slice: rotation error (°), translation error at
the slice's centre (µm) and target registration error (root mean square displacement of its spots, µm) of
``tl.align`` (rigid and affine, with and without refinement) and of an INSPIRE-style baseline (mutual nearest
neighbours with k=1 and a least-squares rigid fit, as in the INSPIRE tutorials); median wall time of
``--repeats`` runs.

(b) DLPFC 151673-151676: preprocess (3,000 genes), integrate (default steps), then for each adjacent pair INSPIRE's
neighbour correlation score (best Pearson correlation with the 6 spatially nearest spots of the next slice, mean
over spots; on log-normalised expression of the highly variable genes and on the latent space) and the agreement of
manual layers among those 6 neighbours, before alignment (each slice in its own frame) and after.

Prints the tables and writes benchmarks/results/align.md (both tables) plus align_simulated.csv/.md and
align_dlpfc.csv/.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED_DATA, report, setup

SLICES_DLPFC = ("151673", "151674", "151675", "151676")
#: Known motion of each simulated slice: rotation (degrees) and translation (µm).
MOTIONS = {"slice0": (25.0, 300.0, -200.0), "slice1": (-10.0, -150.0, 400.0), "slice2": (40.0, 500.0, 100.0)}
MOTIONS["slice3"] = (15.0, -400.0, -300.0)
JITTER_UM = 10.0
METHODS = (
    ("sd-inspire rigid", {"model": "rigid", "refine": 10}),
    ("sd-inspire rigid, no refinement", {"model": "rigid", "refine": 0}),
    ("sd-inspire affine", {"model": "affine", "refine": 10}),
    ("sd-inspire affine, no refinement", {"model": "affine", "refine": 0}),
    ("INSPIRE-style (MNN k=1, least squares)", None),
)


def _rigid(degrees: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a), tx], [np.sin(a), np.cos(a), ty], [0.0, 0.0, 1.0]])


def _apply(t: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ t[:2, :2].T + t[:2, 2]


def inspire_style(adata, order: list[str], reference: str) -> dict[str, np.ndarray]:
    """The published recipe: k=1 mutual nearest neighbours in the latent space, least-squares rigid fit, chained.

    Our own code (sparse k-NN instead of the published dense pair matrix); no outlier handling, as published.
    """
    from sd_inspire.tl._align import _fit, _mutual_pairs

    labels = adata.obs["slice"].astype(str).to_numpy()
    xy, latent = adata.obsm["spatial"][:, :2], np.asarray(adata.obsm["X_inspire"], dtype=np.float64)
    ref = order.index(reference)
    transforms = {reference: np.eye(3)}
    for i in [*range(ref + 1, len(order)), *range(ref - 1, -1, -1)]:
        moving, fixed = order[i], order[i - 1] if i > ref else order[i + 1]
        m, f = labels == moving, labels == fixed
        im, jf = _mutual_pairs(latent[m], latent[f], 1)
        transforms[moving] = transforms[fixed] @ _fit(xy[m][im], xy[f][jf], "rigid")
    return transforms


def _timed(fn, repeats: int):
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - t0)
    return out, float(np.median(seconds))


def simulated(max_steps: int, repeats: int) -> list[dict]:
    import anndata as ad

    import sd_inspire as si
    from sd_inspire.tl._align import align
    from sd_inspire.tl._registration_metrics import registration_error, target_registration_error

    sdata = si.datasets.simulate(4, n_spots=2000, n_genes=1000, random_state=0)
    t0 = time.perf_counter()
    si.tl.integrate(sdata, max_steps=max_steps, show_progress_bar=False, random_state=0)
    print(f"simulated: integrate ({max_steps} steps) {time.perf_counter() - t0:.1f} s", flush=True)
    table = sdata["table"]
    adata = ad.AnnData(obs=table.obs[["slice"]].copy(), obsm={"X_inspire": table.obsm["X_inspire"]})
    labels = adata.obs["slice"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    true = table.obsm["spatial"] + rng.normal(0.0, JITTER_UM, table.obsm["spatial"].shape)
    moves = {s: _rigid(*m) for s, m in MOTIONS.items()}
    observed = true.copy()
    for s, t in moves.items():
        observed[labels == s] = _apply(t, true[labels == s])
    adata.obsm["spatial"] = observed
    order = list(MOTIONS)
    reference = order[(len(order) - 1) // 2]

    rows = []
    for name, kwargs in METHODS:
        if kwargs is None:
            transforms, seconds = _timed(lambda: inspire_style(adata, order, reference), repeats)
        else:
            _, seconds = _timed(lambda kwargs=kwargs: align(adata, random_state=0, **kwargs), repeats)
            transforms = adata.uns["spatial_aligned"]["transforms"]
        errors = []
        for s in order:
            if s == reference:
                continue
            truth = moves[reference] @ np.linalg.inv(moves[s])
            xy = observed[labels == s]
            err = registration_error(transforms[s], truth, center=xy.mean(axis=0))
            tre = target_registration_error(transforms[s], truth, xy)
            errors.append((err.rotation, err.translation, tre))
            rows.append(
                {
                    "method": name,
                    "slice": s,
                    "true rotation (°)": MOTIONS[s][0] - MOTIONS[reference][0],
                    "rotation error (°)": err.rotation,
                    "translation error (µm)": err.translation,
                    "TRE (µm)": tre,
                    "seconds": round(seconds, 2),
                }
            )
        mean = np.mean(errors, axis=0)
        rows.append(
            {
                "method": name,
                "slice": "mean",
                "true rotation (°)": np.nan,
                "rotation error (°)": mean[0],
                "translation error (µm)": mean[1],
                "TRE (µm)": mean[2],
                "seconds": round(seconds, 2),
            }
        )
        print(rows[-1], flush=True)
    return rows


def dlpfc(folder: Path, max_steps: int | None, repeats: int) -> list[dict]:
    from dlpfc import load

    import sd_inspire as si
    from sd_inspire.tl._align import align
    from sd_inspire.tl._registration_metrics import neighbour_agreement, neighbour_correlation

    sdata = load(folder)
    si.pp.preprocess(sdata, n_top_genes=3000)
    si.gr.spatial_neighbors(sdata)
    t0 = time.perf_counter()
    si.tl.integrate(sdata, max_steps=max_steps, show_progress_bar=False, random_state=0)
    print(f"dlpfc: integrate {time.perf_counter() - t0:.1f} s", flush=True)
    table = sdata["table"]
    labels = table.obs["slice"].astype(str).to_numpy()
    expression = table.X[:, table.var["highly_variable"].to_numpy()]
    latent = table.obsm["X_inspire"]
    layers = table.obs["layer"].astype(object).to_numpy()
    order = list(SLICES_DLPFC)

    def scores(coords: np.ndarray) -> list[dict]:
        out = []
        for a, b in zip(order[:-1], order[1:], strict=True):
            m, n = labels == a, labels == b
            out.append(
                {
                    "pair": f"{a} -> {b}",
                    "NC expression": neighbour_correlation(expression[m], coords[m], expression[n], coords[n]),
                    "NC latent": neighbour_correlation(latent[m], coords[m], latent[n], coords[n]),
                    "layer agreement": neighbour_agreement(layers[m], coords[m], layers[n], coords[n]),
                }
            )
        return out

    rows = [{"method": "before alignment (own frames)", "seconds": np.nan, **r} for r in scores(table.obsm["spatial"])]
    for name, kwargs in METHODS:
        if "no refinement" in name:
            continue
        if kwargs is None:
            transforms, seconds = _timed(lambda: inspire_style(table, order, order[1]), repeats)
            coords = np.empty((table.n_obs, 2))
            for s in order:
                coords[labels == s] = _apply(transforms[s], table.obsm["spatial"][labels == s].astype(np.float64))
        else:
            _, seconds = _timed(lambda kwargs=kwargs: align(sdata, random_state=0, **kwargs), repeats)
            coords = table.obsm["spatial_aligned"][:, :2]
            pairs = table.uns["spatial_aligned"]["pairs"]
            print(pairs.round(3).to_string(), flush=True)
        rows += [{"method": name, "seconds": round(seconds, 2), **r} for r in scores(coords)]
    for method in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == method]
        mean = {k: float(np.mean([r[k] for r in group])) for k in ("NC expression", "NC latent", "layer agreement")}
        rows.append({"method": method, "seconds": group[0]["seconds"], "pair": "mean", **mean})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    rows = sorted(rows, key=lambda r: methods.index(r["method"]))  # stable: each method's pairs, then its mean
    return [
        {k: r[k] for k in ("method", "pair", "NC expression", "NC latent", "layer agreement", "seconds")} for r in rows
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=["simulated", "dlpfc"], default=["simulated", "dlpfc"])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "visium" / "DLPFC_151673-151676")
    parser.add_argument("--max-steps", type=int, default=300, help="training steps of the simulated integration")
    parser.add_argument("--dlpfc-max-steps", type=int, default=None, help="training steps on DLPFC (default: auto)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each alignment (median time)")
    args = parser.parse_args(argv)
    setup()
    command = "python benchmarks/align.py " + " ".join(argv if argv is not None else sys.argv[1:])
    sections = []
    if "simulated" in args.parts:
        rows = simulated(args.max_steps, args.repeats)
        table = report(rows, "align_simulated", command)
        sections.append(("(a) Simulated slices under known rigid motions", table))
    if "dlpfc" in args.parts:
        if not args.data.is_dir():
            parser.error(f"no DLPFC data at {args.data}")
        rows = dlpfc(args.data, args.dlpfc_max_steps, args.repeats)
        table = report(rows, "align_dlpfc", command)
        sections.append(("(b) DLPFC 151673-151676, adjacent pairs", table))
    text = f"Command: `{command}`\n"
    for title, table in sections:
        text += f"\n## {title}\n\n" + table.to_markdown(index=False, floatfmt=".3f") + "\n"
    (RESULTS / "align.md").write_text(text)
    print(f"written: {RESULTS / 'align.md'}")
    return 0


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    sys.exit(main())
