"""Shared helpers of the benchmark scripts: timing, peak memory, result tables."""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _integrate_default(name: str):
    import inspect

    from sd_inspire.tl import integrate

    return inspect.signature(integrate).parameters[name].default


DEFAULT_N_LATENT = _integrate_default("n_latent")
DEFAULT_ENCODER = _integrate_default("encoder")
DEFAULT_N_FACTORS = _integrate_default("n_factors")
DEFAULT_FEATURES = _integrate_default("features")
DEFAULT_N_HOPS = _integrate_default("n_hops")


def model_label(
    n_latent: int,
    encoder: str = DEFAULT_ENCODER,
    n_factors: int = DEFAULT_N_FACTORS,
    features: str = DEFAULT_FEATURES,
    n_hops: int = DEFAULT_N_HOPS,
) -> str:
    """Name of sd-inspire in result tables: plain with ``tl.integrate``'s defaults, else with what differs."""
    settings = (
        ("encoder", encoder, DEFAULT_ENCODER),
        ("n_latent", n_latent, DEFAULT_N_LATENT),
        ("n_factors", n_factors, DEFAULT_N_FACTORS),
        ("features", features, DEFAULT_FEATURES),
        ("n_hops", n_hops, DEFAULT_N_HOPS),
    )
    changed = [f"{k}={v}" for k, v, d in settings if v != d]
    return "sd-inspire" + (f" ({', '.join(changed)})" if changed else "")


def setup(threads: int = 2) -> None:
    """Quiet logs and warnings, fix the number of torch threads."""
    import torch

    torch.set_num_threads(threads)
    logging.getLogger("sd_inspire").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


@contextmanager
def stopwatch(record: dict, key: str = "seconds"):
    """Store the elapsed wall time of the block in ``record[key]``."""
    start = time.perf_counter()
    yield
    record[key] = round(time.perf_counter() - start, 2)


def report(rows: list[dict], name: str, command: str) -> pd.DataFrame:
    """Print a table and write it (CSV and Markdown with the command that made it) to benchmarks/results/."""
    RESULTS.mkdir(exist_ok=True)
    rounded = [{k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()} for row in rows]
    table = pd.DataFrame(rounded)
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(table.to_string(index=False))
    table.to_csv(RESULTS / f"{name}.csv", index=False)
    md = f"Command: `{command}`\n\n" + table.to_markdown(index=False, floatfmt=".3f") + "\n"
    (RESULTS / f"{name}.md").write_text(md)
    (RESULTS / f"{name}.json").write_text(json.dumps({"command": command, "python": sys.version}, indent=1))
    print(f"\nwritten: {RESULTS / (name + '.csv')}")
    return table


def append_rows_per_run(doc: str, fields: list[str], rows, argv: list[str] | None = None, extra_args=None) -> int:
    """The command line of the per-run ablation scripts: for every chosen suite dataset and seed, append the rows of
    ``rows(table, dataset, seed, args)`` (dicts with ``fields`` as keys) to ``--out``, one CSV row each.

    ``table`` is the dataset prepared as ``benchmarks/suite.py`` prepares it; ``extra_args(parser)`` adds options.
    """
    import argparse
    import csv

    import suite

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", help="names (substrings) of suite datasets (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="CSV file the rows are appended to")
    if extra_args is not None:
        extra_args(parser)
    args = parser.parse_args(argv)
    suite.setup(args.threads)
    chosen = [d for d in suite.DATASETS if not args.datasets or any(n in d.name for n in args.datasets)]
    new = not args.out.exists()
    with args.out.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fields, lineterminator="\n")
        if new:
            writer.writeheader()
        for dataset in chosen:
            for seed in args.seeds:
                for row in rows(suite.prepare(dataset.load(seed, False)), dataset, seed, args):
                    writer.writerow(row)
                    handle.flush()
                    print(row, flush=True)
    return 0
