"""Readers on large inputs: wall time and peak memory of a Stereo-seq GEM and a Visium HD-sized 10x count matrix.

    .venv/bin/python benchmarks/io.py [--gem-lines 50000000] [--hd-bins 400000] [--repeats 3] [--workdir DIR]

1. Writes a synthetic bin1 GEM (numpy draws, written by pyarrow's CSV writer in chunks): ``--gem-lines`` lines over
   a square of ``--gem-extent`` DNBs, genes drawn with Zipf-like frequencies, mostly 1-counts, in random order (the
   worst case for streaming: every batch touches every bin). Reads it with ``sd_inspire.io.stereoseq(bin_size=50)``.
   The reader's memory grows with the non-zero (bin, gene) pairs, so each extent is a density: 5000 DNBs gives
   ~5,000 lines per bin50 at 50M lines (a SAW bin50 of brain tissue holds ~4,000-15,000), 8000 DNBs ~2,000 (sparse,
   many distinct pairs: the harder case). "nnz / input" reports it.
2. Writes a Visium HD-sized 10x ``filtered_feature_bc_matrix.h5`` (``--hd-bins`` bins x ``--hd-genes`` genes at
   ``--hd-density``, gzip-compressed like Space Ranger's) with ``spatial/scalefactors_json.json`` and
   ``spatial/tissue_positions.csv``, and reads it with ``sd_inspire.io.visium(images=False)``.

Every read runs in a fresh subprocess that reports its own wall time and peak RSS (``VmHWM``), so generating the
inputs does not count; "import GB" is the peak RSS of that process after its imports, before reading. Reports the
median time over ``--repeats`` reads, the peak memory and its ratio to the file size; writes
benchmarks/results/io.csv/.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_gb, report, setup

GEM_HEADER = "#FileFormat=GEMv0.1\n#SortedBy=None\n#BinSize=1\n#Stereo-seqChip=SYNTHETIC\n#OffsetX=0\n#OffsetY=0\n"


def write_gem(path: Path, n_lines: int, extent: int, n_genes: int, seed: int = 0, chunk: int = 2_000_000) -> None:
    import pyarrow as pa
    from pyarrow import csv

    rng = np.random.default_rng(seed)
    names = pa.array([f"Gene{i:05d}" for i in range(n_genes)])
    weights = 1.0 / (np.arange(n_genes) + 50.0) ** 1.1  # a few genes dominate, most are rare
    weights /= weights.sum()
    options = csv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with open(path, "wb") as f:
        f.write((GEM_HEADER + "geneID\tx\ty\tMIDCount\n").encode())
        for start in range(0, n_lines, chunk):
            m = min(chunk, n_lines - start)
            genes = rng.choice(n_genes, size=m, p=weights).astype(np.int32)
            table = pa.table(
                {
                    "geneID": pa.DictionaryArray.from_arrays(genes, names),
                    "x": rng.integers(0, extent, m, dtype=np.int32),
                    "y": rng.integers(0, extent, m, dtype=np.int32),
                    "MIDCount": rng.geometric(0.7, m).astype(np.int32),
                }
            )
            csv.write_csv(table, f, write_options=options)


def write_visium_hd(folder: Path, n_bins: int, n_genes: int, density: float, seed: int = 0) -> int:
    """A Space Ranger-like folder of 8 µm bins; returns the number of non-zero entries."""
    import h5py
    import pandas as pd

    rng = np.random.default_rng(seed)
    (folder / "spatial").mkdir(parents=True)
    side = int(np.ceil(np.sqrt(n_bins)))
    row, col = np.divmod(np.arange(n_bins), side)
    barcodes = np.char.add(
        np.char.add(np.char.add("s_008um_", np.char.zfill(row.astype(str), 5)), "_"),
        np.char.add(np.char.zfill(col.astype(str), 5), "-1"),
    )
    weights = 1.0 / (np.arange(n_genes) + 100.0)
    weights /= weights.sum()
    per_bin = rng.binomial(n_genes, density, n_bins)
    chunk = max(1, 5_000_000 // max(1, int(n_genes * density)))
    indptr = [np.zeros(1, np.int64)]
    with h5py.File(folder / "filtered_feature_bc_matrix.h5", "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["library_ids"] = np.array([folder.name.encode()])
        f.attrs["chemistry_description"] = "Visium HD v1"
        f.attrs["software_version"] = "spaceranger-3.0.0 (synthetic)"
        f.attrs["version"] = 2
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=barcodes.astype("S"))
        g.create_dataset("shape", data=np.array([n_genes, n_bins], dtype="<i4"))
        kw = {"chunks": (1 << 18,), "maxshape": (None,), "compression": "gzip", "compression_opts": 4}
        data = g.create_dataset("data", shape=(0,), dtype="<i4", **kw)
        indices = g.create_dataset("indices", shape=(0,), dtype="<i8", **kw)
        features = g.create_group("features")
        features.create_dataset(
            "id", data=np.char.add("ENSG", np.char.zfill(np.arange(n_genes).astype(str), 11)).astype("S")
        )
        features.create_dataset("name", data=np.char.add("Gene", np.arange(n_genes).astype(str)).astype("S"))
        features.create_dataset("feature_type", data=np.full(n_genes, b"Gene Expression"))
        features.create_dataset("genome", data=np.full(n_genes, b"GRCh38"))
        features.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        for a in range(0, n_bins, chunk):
            k = per_bin[a : a + chunk]
            local = np.repeat(np.arange(k.size, dtype=np.int64), k)
            keys = np.unique(local * n_genes + rng.choice(n_genes, size=local.size, p=weights))  # sorted, no repeats
            rows, genes = np.divmod(keys, n_genes)
            counts = np.bincount(rows, minlength=k.size)
            values = rng.geometric(0.6, keys.size).astype("<i4")
            n = data.shape[0]
            data.resize((n + keys.size,))
            indices.resize((n + keys.size,))
            data[n:] = values
            indices[n:] = genes
            indptr.append(n + np.cumsum(counts))
        g.create_dataset("indptr", data=np.concatenate(indptr))
        nnz = int(data.shape[0])
    um_per_px = 0.2738
    pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": 1,
            "array_row": row,
            "array_col": col,
            "pxl_row_in_fullres": row * 8 / um_per_px,
            "pxl_col_in_fullres": col * 8 / um_per_px,
        }
    ).to_csv(folder / "spatial" / "tissue_positions.csv", index=False)
    scalefactors = {
        "spot_diameter_fullres": 8 / um_per_px,
        "bin_size_um": 8.0,
        "microns_per_pixel": um_per_px,
        "tissue_hires_scalef": 0.1,
        "tissue_lowres_scalef": 0.01,
        "fiducial_diameter_fullres": 100.0,
        "regist_target_img_scalef": 0.2,
    }
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors))
    return nnz


def process_peak_gb() -> float:
    """Peak resident memory of this process image, in GB.

    ``ru_maxrss`` survives ``exec``: a child forked from a large parent starts with the parent's peak. The kernel's
    per-image high-water mark (``VmHWM``) does not; fall back to ``ru_maxrss`` where /proc is absent.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return peak_rss_gb()
    kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return kb / 1e6


def measure(kind: str, path: str, bin_size: int) -> dict:
    """Run in a fresh process: import, read, report time and this process's peak memory."""
    logging.getLogger("sd_inspire").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    import spatialdata  # noqa: F401 - the readers' imports are loaded before the clock and "import GB" start

    import sd_inspire as si

    if kind == "gem":
        import pyarrow.csv  # noqa: F401
    else:
        import spatialdata_io  # noqa: F401

    import_gb = process_peak_gb()
    start = time.perf_counter()
    sdata = si.io.stereoseq(path, bin_size=bin_size) if kind == "gem" else si.io.visium(path, images=False)
    seconds = time.perf_counter() - start
    table = sdata["table"]
    return {
        "seconds": seconds,
        "peak GB": process_peak_gb(),
        "import GB": import_gb,
        "obs": table.n_obs,
        "vars": table.n_vars,
        "nnz": int(table.X.nnz),
        "total counts": float(table.X.sum()),
    }


def run_child(kind: str, path: Path, bin_size: int) -> dict:
    command = [sys.executable, __file__, "--measure", kind, str(path), "--bin-size", str(bin_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed_reads(kind: str, path: Path, bin_size: int, repeats: int) -> dict:
    runs = [run_child(kind, path, bin_size) for _ in range(repeats)]
    for r in runs:
        print(f"  {kind}: {r['seconds']:.1f} s, peak {r['peak GB']:.2f} GB", flush=True)
    out = dict(runs[0])
    out["seconds"] = float(np.median([r["seconds"] for r in runs]))
    out["peak GB"] = max(r["peak GB"] for r in runs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gem-lines", type=int, default=50_000_000)
    parser.add_argument(
        "--gem-extent",
        type=int,
        nargs="+",
        default=[5000, 8000],
        help="side of the square of DNBs, one GEM each (5000 = 2.5 mm: ~5,000 lines per bin50 at 50M lines)",
    )
    parser.add_argument("--gem-genes", type=int, default=20_000)
    parser.add_argument("--bin-size", type=int, default=50)
    parser.add_argument("--hd-bins", type=int, default=400_000)
    parser.add_argument("--hd-genes", type=int, default=18_000)
    parser.add_argument("--hd-density", type=float, default=0.015)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-gem", action="store_true")
    parser.add_argument("--skip-hd", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the inputs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated Visium folder")
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1], args.bin_size)))
        return 0
    setup(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="sd_inspire_io_", dir=args.workdir))
    rows = []
    try:
        for extent in [] if args.skip_gem else args.gem_extent:
            gem = workdir / "SYNTH.gem"
            start = time.perf_counter()
            write_gem(gem, args.gem_lines, extent, args.gem_genes)
            size = gem.stat().st_size / 1e9
            print(f"wrote {gem} ({args.gem_lines:,} lines, {size:.2f} GB) in {time.perf_counter() - start:.0f} s")
            r = timed_reads("gem", gem, args.bin_size, args.repeats)
            rows.append(
                {
                    "reader": f"stereoseq GEM -> bin{args.bin_size}",
                    "input": f"{args.gem_lines:,} lines, {extent}^2 DNBs",
                    "file GB": size,
                    "obs": r["obs"],
                    "vars": r["vars"],
                    "nnz": r["nnz"],
                    "nnz / input": r["nnz"] / args.gem_lines,
                    "s (median)": r["seconds"],
                    "M input rows/s": args.gem_lines / r["seconds"] / 1e6,
                    "peak GB": r["peak GB"],
                    "import GB": r["import GB"],
                    "peak / file": r["peak GB"] / size,
                    "(peak - import) / file": (r["peak GB"] - r["import GB"]) / size,
                }
            )
            print(rows[-1], flush=True)
            gem.unlink()  # free the disk before writing the next input
        if not args.skip_hd:
            folder = workdir / "hd_square_008um"
            start = time.perf_counter()
            nnz = write_visium_hd(folder, args.hd_bins, args.hd_genes, args.hd_density)
            h5 = folder / "filtered_feature_bc_matrix.h5"
            size = h5.stat().st_size / 1e9
            seconds = time.perf_counter() - start
            print(f"wrote {h5} ({args.hd_bins:,} bins, {nnz:,} non-zeros, {size:.2f} GB) in {seconds:.0f} s")
            r = timed_reads("visium", folder, args.bin_size, args.repeats)
            rows.append(
                {
                    "reader": "visium 10x h5 (images=False)",
                    "input": f"{args.hd_bins:,} bins",
                    "file GB": size,
                    "obs": r["obs"],
                    "vars": r["vars"],
                    "nnz": r["nnz"],
                    "nnz / input": r["nnz"] / args.hd_bins,
                    "s (median)": r["seconds"],
                    "M input rows/s": args.hd_bins / r["seconds"] / 1e6,
                    "peak GB": r["peak GB"],
                    "import GB": r["import GB"],
                    "peak / file": r["peak GB"] / size,
                    "(peak - import) / file": (r["peak GB"] - r["import GB"]) / size,
                }
            )
            print(rows[-1], flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report(rows, "io", "python benchmarks/io.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
