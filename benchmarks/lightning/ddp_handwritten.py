"""The hand-written data-parallel path, for compare.py: ``torchrun --nproc_per_node 2 ddp_handwritten.py OUT [STEPS]``.

Every rank builds the same model and calls ``InspireModel.train`` (which joins the gloo process group itself); each
rank saves its weights and timings.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

import sd_inspire as si
from sd_inspire.model import InspireModel


def main(out: str, n_steps: int) -> None:
    torch.set_num_threads(1)
    adata = si.datasets.simulate(3, n_spots=800, n_genes=300, output="anndata", random_state=0)
    si.pp.preprocess(adata)
    si.gr.spatial_neighbors(adata)
    m = InspireModel(adata, random_state=0, device="cpu")
    start = time.perf_counter()
    m.train(max_steps=n_steps, show_progress_bar=False)
    seconds = time.perf_counter() - start
    rank = m.world.rank
    torch.save(m.module.state_dict(), os.path.join(out, f"hand-rank{rank}.pt"))
    info = {
        "train_seconds": seconds,  # training loop + the count model's refit
        "fit_seconds": m.history["_seconds"][0],  # the training loop alone
        "refit_seconds": m.history.get("_refit_seconds", [float("nan")])[0],
        "steps": len(m.history["loss"]),
        "world_size": m.world.size,
    }
    with open(os.path.join(out, f"hand-rank{rank}.json"), "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300)
