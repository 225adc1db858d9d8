"""Run the peer methods (CellCharter, GraphST, published INSPIRE) on multi-slice datasets and save their embeddings.

    benchmarks/peers/.venv/bin/python benchmarks/peers/run_peers.py --data DIR --out DIR
        [--methods cellcharter graphst inspire] [--seeds 0 1 2 3 4] [--datasets NAME ...]
        [--timeout 30] [--threads 1] [--inspire-variant auto|gat|lgcn] [--skip-existing]

Run it with the peers' own venv (benchmarks/peers/setup.sh builds it); it never imports sd_inspire.

Input: DIR/<name>.h5ad, each a multi-slice dataset: X = raw counts (CSR), or normalised non-negative values when
``uns["values"] == "normalised"``; obs["slice"] (categorical); obs["domain"] (annotation, not used here);
obsm["spatial"] (each slice in its own frame).

Output, for each dataset x method x seed:
    OUT/<name>/<method>/seed<k>.npz   embedding (float32, n_obs x d, rows in the h5ad's order; NaN rows for cells the
                                      method's own QC removed), kept (bool, n_obs: False for those cells), seconds
                                      (wall time of the method, from the loaded AnnData to the embedding), peak_gb
                                      (peak RSS of the run, GB)
    OUT/<name>/<method>/info.json     version, settings, the command that reproduces each seed, per-seed notes
    OUT/<name>/<method>/error.txt     one paragraph per failed seed (exception, timeout, memory kill, not installed)
A dataset whose name ends in ``__seed<k>`` (one file per seed, as benchmarks/suite.py --export writes them) runs
only seed k (if k is among --seeds). Each dataset x method x seed runs in its own subprocess with ``--timeout``
minutes; a crash, a timeout or an out-of-memory kill is written to error.txt and the runner goes on. A timeout or
kill skips the remaining seeds of that dataset x method (they would fail the same way); other errors do not.

Each peer runs its documented default multi-slice workflow (README.md lists the settings and their sources); only
the seed changes between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = ("cellcharter", "graphst", "inspire")

# --- settings of each peer (README.md says where each value comes from) -------------------------------------------

CELLCHARTER = {
    "model": "scvi.model.SCVI(adata) with its defaults (n_latent=10, n_layers=1, n_hidden=128, gene_likelihood='zinb')",
    "setup_anndata": {"layer": "counts", "batch_key": "slice"},
    "train": {"early_stopping": True, "max_epochs": "scvi default: min(round(20000 / n_cells * 400), 400)"},
    "cell_filter": "cells with zero total counts are removed (kept False, NaN rows): scVI's library size is "
    "log(total counts)",
    "spatial_neighbors": {"library_key": "slice", "coord_type": "generic", "delaunay": True},
    "remove_long_links": {"distance_percentile": 99.0},
    "aggregate_neighbors": {"n_layers": 3, "aggregations": "mean", "use_rep": "X_scVI", "sample_key": "slice"},
    "embedding": "obsm['X_cellcharter'] = [X_scVI | mean over 1-hop | 2-hop | 3-hop neighbours], 4 x n_latent dims",
}
GRAPHST = {
    "tutorial": "Tutorial 4: Horizontal Integration (slices side by side in one frame, then one GraphST model)",
    "layout": "slices placed side by side along x in obs['slice'] order, gap = the largest slice extent, so the "
    "3-nearest-neighbour graph never links two slices",
    "GraphST": {
        "device": "cpu",
        "datatype": "10X",
        "epochs": 600,
        "dim_output": 64,
        "learning_rate": 0.001,
        "alpha": 10,
        "beta": 1,
        "random_seed": "--seeds",
    },
    "preprocess": "GraphST's own: seurat_v3 HVGs (3000), normalize_total 1e4, log1p, scale(zero_center=False, max 10)",
    "embedding": "adata.obsm['emb'] after model.train() (GraphST's reconstruction of its HVG features; GraphST's "
    "clustering() runs PCA(20) on it before mclust)",
}
INSPIRE_GAT = {
    "variant": "gat (INSPIRE.model.Model_GAT), recommended by INSPIRE for low-resolution spots (Visium, ST)",
    "preprocess": {"num_hvgs": 6000, "min_genes_qc": 50, "min_cells_qc": 50, "limit_num_genes": False},
    "build_graph_GAT": {"rad_coef": 1.1},
    "Model_GAT": {"n_spatial_factors": 20, "n_training_steps": 10000, "seed": "--seeds", "other": "defaults"},
    "embedding": "adata_full.obsm['latent'] from model.eval(adata_full) (32 dims, hidden_dims=[512, 32])",
}
INSPIRE_LGCN = {
    "variant": "lgcn (INSPIRE.model.Model_LGCN), recommended by INSPIRE for high-resolution (single-cell) data",
    "preprocess": {
        "num_hvgs": "n_vars (no further selection)",
        "min_genes_qc": 2,
        "min_cells_qc": 2,
        "limit_num_genes": True,
    },
    "build_graph_LGCN": {
        "rad_cutoff_list": "per slice, the median distance to the 8th nearest cell (about eight "
        "natural neighbours per cell, as the tutorial sets)",
        "k_lgcn": 1,
    },
    "Model_LGCN": {
        "n_spatial_factors": 20,
        "n_training_steps": 10000,
        "batch_size": "1024 below 20,000 cells in all, else 2048",
        "different_platforms": False,
        "seed": "--seeds",
        "other": "defaults",
    },
    "embedding": "adata_full.obsm['latent'] from model.eval(adata_st_list, adata_full) (hidden_dims[-1] dims)",
}


# --- helpers -------------------------------------------------------------------------------------------------------


class NotApplicable(Exception):
    """The method's documented workflow does not apply to this dataset."""


def set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def values_kind(adata) -> str:
    return "normalised" if str(adata.uns.get("values", "counts")) == "normalised" else "counts"


def slices_in_order(adata) -> list:
    column = adata.obs["slice"]
    return list(column.cat.categories) if hasattr(column, "cat") else list(dict.fromkeys(column))


def version_of(method: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    if method == "inspire":
        commit = HERE / ".venv" / "inspire_published" / "COMMIT"
        return "jiazhao97/INSPIRE@" + (commit.read_text().strip() if commit.exists() else "unknown")
    package = {"cellcharter": "cellcharter", "graphst": "GraphST"}[method]
    try:
        text = f"{package}=={version(package)}"
        if method == "cellcharter":
            text += f", scvi-tools=={version('scvi-tools')}, squidpy=={version('squidpy')}"
        return text
    except PackageNotFoundError:
        return "not installed"


def check_installed(method: str) -> None:
    import importlib

    module = {"cellcharter": "cellcharter", "graphst": "GraphST", "inspire": "INSPIRE"}[method]
    try:
        importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - any import failure means the peer cannot run
        hint = " (run setup.sh with INSPIRE_SRC set, see README.md)" if method == "inspire" else " (run setup.sh)"
        raise NotApplicable(f"not installed: import {module} failed: {type(error).__name__}: {error}{hint}") from None


# --- the three peers: each returns (embedding of the kept cells, kept mask, settings, notes) ------------------------


def run_cellcharter(adata, seed: int, threads: int):
    import anndata as ad
    import cellcharter as cc
    import numpy as np
    import scvi
    import squidpy as sq

    if values_kind(adata) == "normalised":
        raise NotApplicable(
            "not run: uns['values'] == 'normalised'. CellCharter's transcriptomics workflow fits scVI (a count model, "
            "ZINB) on raw counts; its docs offer only a modified scArches trVAE (MSE loss) for non-count data, and "
            "only for proteomics, which is not part of this protocol."
        )
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    kept = totals > 0
    sub = ad.AnnData(X=adata.X[kept].copy(), obs=adata.obs.loc[kept, ["slice"]].copy(), var=adata.var[[]].copy())
    sub.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)[kept]
    sub.layers["counts"] = sub.X.copy()

    scvi.settings.seed = seed
    scvi.settings.num_threads = threads
    scvi.settings.dl_num_workers = 0
    scvi.model.SCVI.setup_anndata(sub, layer="counts", batch_key="slice")
    model = scvi.model.SCVI(sub)
    model.train(early_stopping=True, accelerator="cpu", devices=1, enable_progress_bar=False)
    sub.obsm["X_scVI"] = model.get_latent_representation(sub).astype(np.float32)
    epochs = len(model.history["elbo_train"])

    sq.gr.spatial_neighbors(sub, library_key="slice", coord_type="generic", delaunay=True, spatial_key="spatial")
    cc.gr.remove_long_links(sub, distance_percentile=99.0)
    cc.gr.aggregate_neighbors(sub, n_layers=3, use_rep="X_scVI", out_key="X_cellcharter", sample_key="slice")
    notes = {
        "cells_removed": int((~kept).sum()),
        "scvi_epochs_trained": int(epochs),
        "scvi_max_epochs": int(min(round(20000 / sub.n_obs * 400), 400)),
    }
    return np.asarray(sub.obsm["X_cellcharter"]), kept, CELLCHARTER, notes


def run_graphst(adata, seed: int, threads: int):
    import anndata as ad
    import numpy as np
    import torch
    from GraphST import GraphST

    coords = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2].copy()
    slices = slices_in_order(adata)
    labels = adata.obs["slice"].astype(str).to_numpy()
    extents = [np.ptp(coords[labels == str(s)], axis=0).max() for s in slices]
    gap = float(max(extents)) if extents else 0.0
    offset = 0.0
    for s in slices:
        rows = labels == str(s)
        xy = coords[rows]
        xy = xy - xy.min(axis=0)
        xy[:, 0] += offset
        coords[rows] = xy
        offset = float(xy[:, 0].max()) + gap
    sub = ad.AnnData(X=adata.X.copy(), obs=adata.obs[["slice"]].copy(), var=adata.var[[]].copy())
    sub.var_names_make_unique()
    sub.obsm["spatial"] = coords

    torch.set_num_threads(threads)
    model = GraphST.GraphST(sub, device=torch.device("cpu"), random_seed=seed)
    result = model.train()
    notes = {"input_values": values_kind(adata)}
    if values_kind(adata) == "normalised":
        notes["warning"] = (
            "GraphST's own preprocessing (seurat_v3 HVGs, normalize_total, log1p) ran on normalised values"
        )
    return np.asarray(result.obsm["emb"]), np.ones(adata.n_obs, dtype=bool), GRAPHST, notes


def choose_inspire_variant(adata, requested: str) -> tuple[str, str]:
    if requested != "auto":
        return requested, "--inspire-variant"
    technology = str(adata.uns.get("technology", "")).strip().lower()
    if technology:
        spot_based = technology in ("visium", "10x visium", "st", "spatial transcriptomics")
        return ("gat" if spot_based else "lgcn"), f"uns['technology'] = {technology!r}"
    if adata.n_vars > 1000:
        return "gat", f"{adata.n_vars} genes > 1000: sequencing-based (spot) data"
    return "lgcn", f"{adata.n_vars} genes <= 1000: targeted in-situ panel (single cells)"


def run_inspire(adata, seed: int, threads: int, variant: str):
    import anndata as ad
    import INSPIRE
    import matplotlib
    import numpy as np
    import torch
    from sklearn.neighbors import NearestNeighbors

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.set_num_threads(threads)
    variant, reason = choose_inspire_variant(adata, variant)
    slices = slices_in_order(adata)
    labels = adata.obs["slice"].astype(str).to_numpy()
    adata_st_list = []
    for s in slices:
        rows = np.flatnonzero(labels == str(s))
        part = ad.AnnData(X=adata.X[rows].copy(), var=adata.var[[]].copy())
        part.obs_names = [f"c{r}" for r in rows]
        part.obs["_row"] = rows
        part.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)[rows, :2].copy()
        adata_st_list.append(part)

    notes = {"variant_reason": reason, "input_values": values_kind(adata)}
    if values_kind(adata) == "normalised":
        notes["warning"] = "INSPIRE's Poisson reconstruction and its library sizes were computed on normalised values"
    if variant == "gat":
        settings = INSPIRE_GAT
        adata_st_list, adata_full = INSPIRE.utils.preprocess(
            adata_st_list, num_hvgs=6000, min_genes_qc=50, min_cells_qc=50, spot_size=1
        )
        adata_st_list = INSPIRE.utils.build_graph_GAT(adata_st_list, rad_coef=1.1)
        model = INSPIRE.model.Model_GAT(adata_st_list, n_spatial_factors=20, n_training_steps=10000, seed=seed)
        model.train()
        adata_full, _ = model.eval(adata_full)
    else:
        settings = INSPIRE_LGCN
        adata_st_list, adata_full = INSPIRE.utils.preprocess(
            adata_st_list, num_hvgs=adata.n_vars, min_genes_qc=2, min_cells_qc=2, spot_size=1, limit_num_genes=True
        )
        radii = []
        for part in adata_st_list:
            xy = np.asarray(part.obsm["spatial"], dtype=np.float64)
            k = min(9, part.n_obs)
            dist, _ = NearestNeighbors(n_neighbors=k).fit(xy).kneighbors(xy)
            radii.append(float(np.median(dist[:, k - 1])))
        adata_st_list = INSPIRE.utils.build_graph_LGCN(adata_st_list, rad_cutoff_list=radii)
        n_total = sum(part.n_obs for part in adata_st_list)
        batch_size = 1024 if n_total < 20000 else 2048
        model = INSPIRE.model.Model_LGCN(
            adata_st_list, n_spatial_factors=20, n_training_steps=10000, batch_size=batch_size, seed=seed
        )
        model.train(adata_st_list)
        adata_full, _ = model.eval(adata_st_list, adata_full)
        notes.update({"rad_cutoff_list": radii, "batch_size": batch_size})
    plt.close("all")

    rows = np.concatenate([np.asarray(part.obs["_row"], dtype=np.int64) for part in adata_st_list])
    latent = np.asarray(adata_full.obsm["latent"])
    assert latent.shape[0] == rows.shape[0], (latent.shape, rows.shape)
    kept = np.zeros(adata.n_obs, dtype=bool)
    kept[rows] = True
    embedding = np.full((adata.n_obs, latent.shape[1]), np.nan, dtype=np.float32)
    embedding[rows] = latent
    notes.update({"variant": variant, "cells_removed": int((~kept).sum()), "genes_used": int(adata_st_list[0].n_vars)})
    return embedding[kept], kept, settings, notes


# --- one run, in its own process ----------------------------------------------------------------------------------


def reproduce_command(args, name: str, method: str, seed: int) -> str:
    parts = [
        "benchmarks/peers/.venv/bin/python",
        "benchmarks/peers/run_peers.py",
        "--data",
        str(args.data),
        "--out",
        str(args.out),
        "--methods",
        method,
        "--seeds",
        str(seed),
        "--datasets",
        name,
        "--timeout",
        f"{args.timeout:g}",
        "--threads",
        str(args.threads),
    ]
    if method == "inspire":
        parts += ["--inspire-variant", args.inspire_variant]
    return shlex.join(parts)


def worker(args) -> int:
    """Run one dataset x method x seed; write seed<k>.npz and update info.json, or raise."""
    set_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("MPLBACKEND", "Agg")
    import numpy as np

    method, name, seed = args.worker_method, args.worker_dataset, args.worker_seed
    out_dir = Path(args.out) / name / method
    out_dir.mkdir(parents=True, exist_ok=True)
    check_installed(method)

    import anndata as ad
    import scipy.sparse as sp

    adata = ad.read_h5ad(Path(args.data) / f"{name}.h5ad")
    missing = [key for key, where in (("slice", adata.obs), ("spatial", adata.obsm)) if key not in where]
    if missing:
        raise ValueError(
            f"input {name}.h5ad lacks {', '.join(missing)} (obs['slice'] and obsm['spatial'] are required)"
        )
    if not sp.issparse(adata.X):
        adata.X = sp.csr_matrix(adata.X)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)

    start = time.perf_counter()
    if method == "cellcharter":
        embedding, kept, settings, notes = run_cellcharter(adata, seed, args.threads)
    elif method == "graphst":
        embedding, kept, settings, notes = run_graphst(adata, seed, args.threads)
    else:
        embedding, kept, settings, notes = run_inspire(adata, seed, args.threads, args.inspire_variant)
    seconds = time.perf_counter() - start

    full = np.full((adata.n_obs, embedding.shape[1]), np.nan, dtype=np.float32)
    full[kept] = np.asarray(embedding, dtype=np.float32)
    if not np.isfinite(full[kept]).all():
        raise FloatingPointError(f"{method} returned non-finite values for kept cells")
    peak = peak_rss_gb()
    np.savez(
        out_dir / f"seed{seed}.npz", embedding=full, kept=kept, seconds=np.float64(seconds), peak_gb=np.float64(peak)
    )

    info_path = out_dir / "info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    import torch

    info.update(
        {
            "method": method,
            "dataset": name,
            "version": version_of(method),
            "settings": settings,
            "input_values": values_kind(adata),
            "threads": args.threads,
            "environment": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "numpy": np.__version__,
                "machine": platform.machine(),
            },
            "n_obs": int(adata.n_obs),
            "embedding_dim": int(full.shape[1]),
        }
    )
    info.setdefault("runs", {})[f"seed{seed}"] = {
        "command": reproduce_command(args, name, method, seed),
        "seconds": round(seconds, 2),
        "peak_gb": round(peak, 3),
        "cells_without_embedding": int((~kept).sum()),
        **notes,
    }
    info_path.write_text(json.dumps(info, indent=2, default=str) + "\n")
    print(f"{name} {method} seed{seed}: {full.shape} in {seconds:.1f} s, peak {peak:.2f} GB", flush=True)
    return 0


def write_error(out_dir: Path, seed, text: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    label = "all seeds" if seed is None else f"seed {seed}"
    with open(out_dir / "error.txt", "a") as handle:
        handle.write(f"[{label}] {text.strip()}\n\n")


def run_one(args, name: str, method: str, seed: int) -> str:
    """Run a worker subprocess; return 'ok', 'error' or 'fatal' (timeout / killed: skip the other seeds)."""
    out_dir = Path(args.out) / name / method
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--data",
        str(args.data),
        "--out",
        str(args.out),
        "--threads",
        str(args.threads),
        "--inspire-variant",
        args.inspire_variant,
        "--timeout",
        f"{args.timeout:g}",
        "--worker-method",
        method,
        "--worker-dataset",
        name,
        "--worker-seed",
        str(seed),
    ]
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(args.threads)
    env.setdefault("MPLBACKEND", "Agg")
    env["PYTHONWARNINGS"] = "ignore"
    env["TQDM_DISABLE"] = "1"
    log_path = out_dir / f"seed{seed}.log"
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = start + args.timeout * 60
        status = None
        while status is None:
            pid, raw, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                status = raw
                break
            if time.perf_counter() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                os.wait4(process.pid, 0)
                write_error(
                    out_dir,
                    seed,
                    f"Timeout: no result after {args.timeout:g} min (--timeout); the run was "
                    f"killed. Log: {log_path.name}.",
                )
                return "fatal"
            time.sleep(0.5)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - start
    if process.returncode == 0:
        return "ok"
    if process.returncode < 0:
        number = -process.returncode
        kind = {
            signal.SIGKILL: "likely out of memory (the kernel's OOM killer)",
            signal.SIGTERM: "terminated by another process",
        }.get(number, "crash")
        write_error(
            out_dir,
            seed,
            f"Killed by signal {signal.Signals(number).name} after {elapsed:.0f} s with a peak "
            f"RSS of {usage.ru_maxrss / 1e6:.1f} GB, {kind}. Log: {log_path.name}.",
        )
        return "fatal"
    reason = (out_dir / f".seed{seed}.reason").read_text() if (out_dir / f".seed{seed}.reason").exists() else ""
    (out_dir / f".seed{seed}.reason").unlink(missing_ok=True)
    if not reason:
        tail = log_path.read_text().strip().splitlines()[-1:] or ["(no output)"]
        reason = f"exit code {process.returncode}: {tail[0]}"
    write_error(out_dir, seed, reason.rstrip(".") + f". Log: {log_path.name}.")
    return "not_applicable" if reason.startswith(("not installed", "not run")) else "error"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, type=Path, help="folder of <name>.h5ad files")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--datasets", nargs="+", default=None, help="dataset names (default: every *.h5ad in --data)")
    parser.add_argument("--timeout", type=float, default=30.0, help="minutes per dataset x method x seed (default 30)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1)")
    parser.add_argument(
        "--inspire-variant",
        default="auto",
        choices=("auto", "gat", "lgcn"),
        help="INSPIRE's GAT (spots) or LGCN (single cells); auto: uns['technology'] if set, "
        "else GAT above 1000 genes, LGCN otherwise",
    )
    parser.add_argument("--skip-existing", action="store_true", help="keep seed<k>.npz files that already exist")
    parser.add_argument("--worker-method", help=argparse.SUPPRESS)
    parser.add_argument("--worker-dataset", help=argparse.SUPPRESS)
    parser.add_argument("--worker-seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker_method:
        out_dir = Path(args.out) / args.worker_dataset / args.worker_method
        try:
            return worker(args)
        except NotApplicable as error:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f".seed{args.worker_seed}.reason").write_text(str(error))
            print(error, flush=True)
            return 3
        except Exception as error:  # noqa: BLE001 - report any failure of the peer and let the runner go on
            traceback.print_exc()
            out_dir.mkdir(parents=True, exist_ok=True)
            frames = traceback.extract_tb(error.__traceback__)
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})"
            ours = [frame for frame in frames if Path(frame.filename).resolve() == Path(__file__).resolve()]
            if ours and ours[-1] is not frames[-1]:
                where += f", called from run_peers.py:{ours[-1].lineno} ({ours[-1].name})"
            message = " ".join(str(error).split())[:1500]
            (out_dir / f".seed{args.worker_seed}.reason").write_text(
                f"{type(error).__name__}: {message} (raised in {where})."
            )
            return 2

    names = args.datasets or sorted(path.stem for path in args.data.glob("*.h5ad"))
    if not names:
        parser.error(f"no .h5ad files in {args.data}")
    summary = []
    for name in names:
        if not (args.data / f"{name}.h5ad").exists():
            print(f"{name}: {args.data / (name + '.h5ad')} not found, skipped", flush=True)
            continue
        for method in args.methods:
            out_dir = args.out / name / method
            match = re.search(r"__seed(\d+)$", name)
            seeds = [s for s in args.seeds if match is None or s == int(match.group(1))]
            todo = [s for s in seeds if not (args.skip_existing and (out_dir / f"seed{s}.npz").exists())]
            if not todo:
                continue
            if (out_dir / "error.txt").exists():
                (out_dir / "error.txt").unlink()
            for position, seed in enumerate(todo):
                (out_dir / f"seed{seed}.npz").unlink(missing_ok=True)
                start = time.perf_counter()
                result = run_one(args, name, method, seed)
                took = time.perf_counter() - start
                summary.append((name, method, seed, result, took))
                print(f"[{name} / {method} / seed {seed}] {result} ({took:.0f} s)", flush=True)
                if result in ("fatal", "not_applicable") and position + 1 < len(todo):
                    rest = todo[position + 1 :]
                    write_error(
                        out_dir,
                        None,
                        f"seed{'s' if len(rest) > 1 else ''} {' '.join(map(str, rest))} not run after the failure above.",
                    )
                    break
    failed = [row for row in summary if row[3] != "ok"]
    print(f"done: {len(summary) - len(failed)} runs ok, {len(failed)} failed or not applicable", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
