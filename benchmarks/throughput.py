"""Training throughput of sd-inspire on the CPU: steps and spots per second.

    .venv/bin/python benchmarks/throughput.py [--threads 2] [--steps 200]

Three simulated Visium-like slices (as the published INSPIRE measurement: batch 1024 spots per slice x 3 slices,
~3 steps/s, i.e. ~9,200 spots/s, on this machine) with 3,000 genes in the gene space, for the "lgcn" and "gat"
encoders and several batch sizes. Reports the median over repeats of the time per step (after warm-up), spots per
second and peak memory; writes benchmarks/results/throughput.csv/.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_gb, report, setup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    setup(args.threads)
    import sd_inspire as si
    from sd_inspire.model import InspireModel

    adata = si.datasets.simulate(3, n_spots=4000, n_genes=4000, output="anndata")
    si.pp.preprocess(adata, n_top_genes=3000)
    si.gr.spatial_neighbors(adata)
    rows = []
    for encoder, batch_sizes in (("lgcn", (1024, 3072)), ("gat", (1024, 3072))):
        for batch in batch_sizes:
            timings = []
            for repeat in range(args.repeats):
                model = InspireModel(adata, encoder=encoder, random_state=repeat)
                model.train(max_steps=10, batch_size=batch, show_progress_bar=False)  # warm-up
                start = time.perf_counter()
                model.train(max_steps=args.steps, batch_size=batch, show_progress_bar=False)
                timings.append((time.perf_counter() - start) / args.steps)
            per_step = float(np.median(timings))
            spots = (batch // 3) * 3
            rows.append(
                {
                    "encoder": encoder,
                    "batch (spots)": spots,
                    "genes": int(adata.var["highly_variable"].sum()),
                    "s/step (median)": round(per_step, 4),
                    "steps/s": round(1 / per_step, 2),
                    "spots/s": round(spots / per_step),
                    "vs INSPIRE 9,200 spots/s": round(spots / per_step / 9200, 2),
                    "peak GB": round(peak_rss_gb(), 2),
                    "threads": args.threads,
                }
            )
            print(rows[-1], flush=True)
    report(
        rows, "throughput", "python benchmarks/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
