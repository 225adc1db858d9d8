"""Time and peak memory of the whole pipeline versus the number of spots, and quality at each size.

    .venv/bin/python benchmarks/scale.py [--sizes 10000 100000 300000 1000000] [--n-slices 8] [--n-genes 2000]
        [--device cpu|cuda|auto] [--max-steps N] [--threads 2] [--out-of-core auto|always|never]
        [--out benchmarks/results]

For each total number of spots (split evenly over ``--n-slices`` simulated Visium-like slices with ``--n-genes``
genes), a fresh Python process runs ``si.datasets.simulate`` -> ``si.pp.preprocess`` -> ``si.gr.spatial_neighbors``
-> ``si.tl.integrate`` (default steps unless ``--max-steps``; its data preparation, which holds the neighbour
propagation, its training, the count model's final fit, the outputs and its write-back are timed separately) ->
``sdata.write`` (zarr, in a temporary folder), so each size's peak memory is its own. From 500,000 spots
(``--out-of-core auto``) the data take the out-of-core path: ``simulate(path=...)`` writes the slices into a zarr
store one at a time, the store is opened with ``si.io.read_zarr(out_of_core=True)`` and every stage streams the
counts from it; integrate writes the results into that store, which is then the annotated store (checked on a fresh
read), and writing the whole SpatialData to a second store is timed after the total, as "copy to a new store".
Every stage records its wall time and its peak resident memory:
the kernel's high-water mark (``VmHWM``) is reset between stages through ``/proc/self/clear_refs``; where that
fails the column says "cumulative" and holds the peak since the process started.

Quality on the simulation's ground truth, after the timed pipeline: ARI of ``si.tl.domains`` (GMM with the true
number of domains) against ``obs["domain"]`` on all spots, factor recovery (best correlation of a factor with each
true cell-type proportion) on all spots, and within-domain batch mixing of the latent space on a fixed-size random
subsample (``--mixing-sample``, the same at every size so the scores compare).

Writes benchmarks/results/scale.csv/.md/.json and scale.png (log-log time per stage versus spots, with a line of
slope 1 through the largest size's total, i.e. linear extrapolation to 1M spots). ``--plot-only`` redraws the plot
from an existing scale.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
from _common import report, setup

#: Stages of the timed pipeline, in order; "integrate" holds its sub-stages (the rest of it: building the model and
#: encoding every spot).
STAGES = ["simulate", "preprocess", "spatial_neighbors", "integrate", "write"]
SUBSTAGES = [
    "integrate: prepare",
    "integrate: train",
    "integrate: final fit",
    "integrate: outputs",
    "integrate: write-back",
]
#: Sizes from which ``--out-of-core auto`` simulates into a zarr store and keeps the counts on disk.
OUT_OF_CORE_FROM = 500_000


# ---------------------------------------------------------------------------------------------- peak memory
class Meter:
    """Wall time and peak RSS of nested stages, from the kernel's high-water mark of this process."""

    def __init__(self) -> None:
        self.resettable = self._reset()
        self.open: list[float] = []  # peak (GB) seen so far by each open stage, outermost first
        self.records: dict[str, dict[str, float]] = {}

    @staticmethod
    def _status(field: str) -> float:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / 1e9  # kB -> GB
        raise KeyError(field)

    def _reset(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            return False
        return True

    def hwm(self) -> float:
        """Peak RSS in GB since the last reset (or since start, if resets fail)."""
        return self._status("VmHWM")

    @contextmanager
    def stage(self, name: str):
        """Record ``seconds`` and ``peak GB`` of the block under ``name``; stages may nest."""
        # fold the current high-water mark into the enclosing stages before resetting it
        now = self.hwm()
        self.open = [max(p, now) for p in self.open]
        if self.resettable:
            self._reset()
        self.open.append(self.hwm())
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            peak = max(self.open.pop(), self.hwm())
            self.open = [max(p, peak) for p in self.open]
            self.records[name] = {"seconds": seconds, "peak GB": peak}
            print(f"  {name:<24s} {seconds:9.1f} s  peak {peak:6.2f} GB  (RSS now {self._status('VmRSS'):.2f})")
            sys.stdout.flush()


def _instrument(meter: Meter) -> None:
    """Time the sub-stages of ``si.tl.integrate`` (benchmark-only wrappers around its internal functions)."""
    from sd_inspire.model import _model
    from sd_inspire.model._trainer import Trainer
    from sd_inspire.tl import _integrate

    def wrap(owner, attribute: str, stage: str, after=None) -> None:
        inner = getattr(owner, attribute)

        def timed(*args, **kwargs):
            with meter.stage(stage):
                out = inner(*args, **kwargs)
            if after is not None:
                after(args)
            return out

        setattr(owner, attribute, timed)

    def record_steps(args) -> None:
        meter.records["integrate: train"]["steps"] = args[0].step

    wrap(_model, "prepare", "integrate: prepare")
    wrap(Trainer, "fit", "integrate: train", after=record_steps)
    wrap(_model.InspireModel, "_fit_count_model", "integrate: final fit")
    wrap(_integrate, "_outputs", "integrate: outputs")
    wrap(_integrate, "_write_results", "integrate: write-back")


# ---------------------------------------------------------------------------------------------- one size
def run_size(args: argparse.Namespace) -> dict:
    """The pipeline at one size, in this process; returns one result row."""
    setup(args.threads)
    import sd_inspire as si
    from sd_inspire.tl.metrics import ari, batch_mixing, factor_recovery

    meter = Meter()
    _instrument(meter)
    per_slice = args.size // args.n_slices
    out_of_core = args.out_of_core == "always" or (args.out_of_core == "auto" and args.size >= OUT_OF_CORE_FROM)
    if args.tmp is not None:
        Path(args.tmp).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="sd_inspire_scale_", dir=args.tmp))
    try:
        with meter.stage("total"):
            with meter.stage("simulate"):
                sdata = si.datasets.simulate(
                    args.n_slices,
                    n_spots=per_slice,
                    n_genes=args.n_genes,
                    random_state=args.seed,
                    path=tmp / "input.zarr" if out_of_core else None,
                )
                if out_of_core:  # as from si.io.read_zarr on a store too big for memory
                    sdata = si.io.read_zarr(tmp / "input.zarr", out_of_core=True)
            table = sdata["table"]
            with meter.stage("preprocess"):
                si.pp.preprocess(sdata)
            with meter.stage("spatial_neighbors"):
                si.gr.spatial_neighbors(sdata)
            with meter.stage("integrate"):
                si.tl.integrate(
                    sdata,
                    max_steps=args.max_steps,
                    device=args.device,
                    random_state=args.seed,
                    show_progress_bar=False,
                )
            if not out_of_core:  # in memory: the annotated SpatialData is written to a store
                with meter.stage("write"):
                    sdata.write(tmp / "scale.zarr")
        if out_of_core:
            # integrate wrote its results and the table's new keys into the store it read (docs/large_data.md):
            # that store is the annotated one. Checked on a fresh read; then, outside the total, what writing the
            # whole SpatialData to a second store would add
            back = si.io.read_zarr(tmp / "input.zarr", out_of_core=True)
            missing = {"X_inspire", "inspire_factors"} - set(back["table"].obsm)
            if missing or "inspire_factors" not in back.tables:
                raise RuntimeError(f"integrate did not write its results into the store: {sorted(missing)} missing")
            with meter.stage("copy to a new store"):
                sdata.write(tmp / "scale.zarr")
        annotated = tmp / ("input.zarr" if out_of_core else "scale.zarr")
        store_gb = sum(f.stat().st_size for f in annotated.rglob("*") if f.is_file()) / 1e9
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # quality on the ground truth (not part of the timed pipeline)
    truth = table.obs["domain"].to_numpy()
    n_domains = int(table.obs["domain"].nunique())
    with meter.stage("domains"):
        si.tl.domains(table, n_domains=n_domains, random_state=args.seed)
    rng = np.random.default_rng(args.seed)
    sample = np.sort(rng.choice(table.n_obs, min(args.mixing_sample, table.n_obs), replace=False))
    with meter.stage("metrics"):
        quality = {
            "ARI": ari(truth, table.obs["inspire_domain"].to_numpy()),
            "mixing (within domain)": batch_mixing(
                table.obsm["X_inspire"][sample], table.obs["slice"].to_numpy()[sample], truth[sample]
            ),
            "factor recovery": factor_recovery(table.obsm["inspire_factors"], table.obsm["true_proportions"]),
        }

    rec = meter.records
    peak = "peak GB" if meter.resettable else "peak GB (cumulative)"
    row: dict = {
        "spots": int(table.n_obs),
        "slices": args.n_slices,
        "genes in model": int(table.var["highly_variable"].sum()),
        "nnz/spot": round(float(table.obs["n_genes_by_counts"].mean()), 1),
        "out of core": out_of_core,
        "steps": int(rec["integrate: train"]["steps"]),
        "device": _resolved_device(args.device),
        "total s": rec["total"]["seconds"],
        f"total {peak}": rec["total"]["peak GB"],
    }
    for name in STAGES[:3] + ["integrate", *SUBSTAGES, "write", "copy to a new store"]:
        row[f"{name} s"] = rec[name]["seconds"] if name in rec else float("nan")  # a stage this path has not
        row[f"{name} {peak}"] = rec[name]["peak GB"] if name in rec else float("nan")
    row["results written"] = "into the store read" if out_of_core else "new store"
    row["zarr GB"] = store_gb
    row.update(quality)
    row["domains s"] = rec["domains"]["seconds"]
    row["mixing sample"] = int(sample.size)
    row["threads"] = args.threads
    row["load avg (1 min)"] = os.getloadavg()[0]
    return row


def _resolved_device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


# ---------------------------------------------------------------------------------------------- plot
def plot(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = table["spots"].to_numpy(dtype=float)
    for name in ["total", *STAGES[:3], *SUBSTAGES, "write"]:
        y = table[f"{name} s"].to_numpy(dtype=float)
        style = {"color": "black", "lw": 2.5} if name == "total" else {"lw": 1.2}
        ax.plot(x, y, marker="o", label=name, **style)
    if x.size:  # slope 1 through the largest size's total: where linear scaling would take it
        i = int(np.argmax(x))
        ref = np.array([x.min(), max(x.max(), 1e6)])
        ax.plot(ref, table["total s"].iloc[i] * ref / x[i], "k--", lw=1, label="linear from largest size")
    ax.axhline(15 * 60, color="red", ls=":", lw=1, label="15 min target")
    ax.set(xscale="log", yscale="log", xlabel="spots", ylabel="wall time (s)", title="sd-inspire: time per stage")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000, 1_000_000])
    parser.add_argument("--n-slices", type=int, default=8)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out-of-core",
        choices=["auto", "always", "never"],
        default="auto",
        help="simulate into a zarr store and keep the counts on disk (auto: from 500k spots)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixing-sample", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=_common.RESULTS, help="folder of the result table and plot")
    parser.add_argument("--tmp", default=None, help="folder for the temporary zarr stores")
    parser.add_argument("--plot-only", action="store_true", help="redraw scale.png from scale.csv in --out")
    parser.add_argument("--merge", action="store_true", help="keep the rows of other sizes already in scale.csv")
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)  # child process: one size
    parser.add_argument("--row-json", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.plot_only:
        import pandas as pd

        plot(pd.read_csv(args.out / "scale.csv").dropna(subset=["total s"]), args.out / "scale.png")
        return 0
    if args.size is not None:  # child
        row = run_size(args)
        args.row_json.write_text(json.dumps(row))
        return 0

    command = "python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for size in args.sizes:
        print(f"== {size} spots", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "row.json"
            child = [sys.executable, str(Path(__file__).resolve()), "--size", str(size), "--row-json", str(out)]
            child += ["--n-slices", str(args.n_slices), "--n-genes", str(args.n_genes), "--device", args.device]
            child += ["--threads", str(args.threads), "--seed", str(args.seed)]
            child += ["--mixing-sample", str(args.mixing_sample), "--out-of-core", args.out_of_core]
            child += ["--max-steps", str(args.max_steps)] if args.max_steps is not None else []
            child += ["--tmp", args.tmp] if args.tmp is not None else []
            result = subprocess.run(child, check=False)
            if result.returncode != 0 or not out.exists():
                print(f"!! {size} spots failed (exit code {result.returncode})", flush=True)
                rows.append({"spots": size, "failed": f"exit code {result.returncode}"})
                continue
            rows.append(json.loads(out.read_text()))
    _common.RESULTS = args.out
    if args.merge and (args.out / "scale.csv").exists():  # keep other sizes' rows, each with its own command
        import pandas as pd

        done = {int(r["spots"]) for r in rows}
        old = pd.read_csv(args.out / "scale.csv").to_dict("records")
        rows = sorted([r for r in old if int(r["spots"]) not in done] + rows, key=lambda r: int(r["spots"]))
        command += " (merged with the rows of other sizes already in scale.csv)"
    table = report(rows, "scale", command)
    ok = table.dropna(subset=["total s"]) if "total s" in table else table.iloc[:0]
    if len(ok):
        plot(ok, args.out / "scale.png")
        print(f"written: {args.out / 'scale.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
