"""Run by test_distributed under torchrun (or plainly): integrate a small simulation, save the latent space."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

import sd_inspire as si


def main() -> None:
    torch.set_num_threads(1)
    out = sys.argv[1]
    adata = si.datasets.simulate(3, n_spots=500, n_genes=150, output="anndata", random_state=0)
    si.tl.integrate(adata, n_factors=5, max_steps=250, batch_size=384, show_progress_bar=False, random_state=0)
    rank = int(os.environ.get("RANK", "0"))
    np.save(os.path.join(out, f"latent{rank}.npy"), adata.obsm["X_inspire"])
    si.tl.domains(adata, n_domains=5, random_state=0)
    np.save(os.path.join(out, f"domains{rank}.npy"), adata.obs["inspire_domain"].cat.codes.to_numpy())
    np.save(os.path.join(out, "truth.npy"), adata.obs["domain"].cat.codes.to_numpy())


if __name__ == "__main__":
    main()
