"""Prototype: one training run of sd_inspire's hand-written ``Trainer`` as a Lightning ``LightningModule``.

A benchmark, not part of the package (see README.md beside this file). It wraps the package's own
``InspireModule``, ``ModelData`` and sampler and calls the package's loss functions, ``encoder_input`` and
anchor search, so only the loop is Lightning's. What Lightning does not keep for us is checkpointed by hand:
the sampler position and the numpy generator (through a stateful ``DataLoader``, which Lightning saves and
restores), and torch's global generator (dropout), the anchors, the step and the history (``on_save_checkpoint``).

Run as a script for the data-parallel check (Lightning re-launches this script once per process)::

    python lightning_trainer.py ddp OUT_DIR [N_STEPS]
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from sd_inspire.model._anchors import anchor_subsample, mutual_neighbours, neighbour_reach
from sd_inspire.model._sampler import make_sampler
from sd_inspire.model._trainer import ENCODE_ROWS, encoder_input

if TYPE_CHECKING:
    from sd_inspire.model._module import InspireModule, LossWeights
    from sd_inspire.model._setup import ModelData
    from sd_inspire.model._trainer import TrainConfig


# ---------------------------------------------------------------------------------------------------- data glue
class SamplerDataset(IterableDataset):
    """Endless stratified minibatches drawn by the package's sampler (in memory or out-of-core), as tensors.

    The length is the number of steps: with a known length Lightning fetches each batch just before its step
    (no batch is prefetched), so the sampler position saved with a checkpoint is that of the last step run.
    """

    def __init__(self, data: ModelData, per_slice: int, rng: np.random.Generator, shard: tuple[int, int], n: int):
        self.data, self.rng, self.n = data, rng, n
        self.sampler = make_sampler(data.counts, data.slices, per_slice, rng, shard, data.slice_names)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        d = self.data
        while True:
            idx, counts = self.sampler.next_batch()
            yield {
                "idx": torch.as_tensor(idx),
                # torch.tensor copies into torch's own (aligned) memory, as Trainer.batch does: same sums every run
                "counts": torch.tensor(counts.toarray()),
                "library": torch.as_tensor(d.library[idx]),
                "saturated": torch.as_tensor(d.saturated[idx]),
                "s": torch.as_tensor(d.slices[idx]),
            }


class StatefulLoader(DataLoader):
    """A DataLoader with ``state_dict``/``load_state_dict``: Lightning then checkpoints the sampler and generator."""

    def state_dict(self) -> dict[str, Any]:
        state = self.dataset.sampler.state()
        return {
            "sampler": {k: v if k.endswith("pos") else [torch.as_tensor(a) for a in v] for k, v in state.items()},
            "rng": self.dataset.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = state["sampler"]
        self.dataset.sampler.load_state(
            {k: v if k.endswith("pos") else [np.asarray(a) for a in v] for k, v in sampler.items()}
        )
        self.dataset.rng.bit_generator.state = state["rng"]


# ---------------------------------------------------------------------------------------------------- the module
class LitInspire(pl.LightningModule):
    """The adversarial game of ``Trainer.train_step`` under manual optimisation (two Adam optimisers)."""

    def __init__(
        self, module: InspireModule, data: ModelData, config: TrainConfig, weights: LossWeights, seed: int,
        graph_encoder: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.module, self.data, self.config, self.weights, self.seed = module, data, config, weights, seed
        self.graph_encoder = graph_encoder
        self.automatic_optimization = False  # two optimisers, two backward passes per step
        self.n_done = 0  # steps run (Lightning's global_step counts optimiser steps: two per step here)
        self.history: dict[str, list[float]] = {}
        self.anchors: tuple[np.ndarray, ...] | None = None
        self.anchors_at = -1  # the step whose anchor search has been done
        self._torch_rng: torch.Tensor | None = None  # restored at the start of training
        self.rng: np.random.Generator | None = None

    # -- what Trainer computes in its __init__ and properties
    @property
    def warmup_steps(self) -> int:
        return int(self.config.warmup_fraction * self.config.n_steps)

    @property
    def uses_anchors(self) -> bool:
        return self.module.n_slices > 1 and self.config.alignment in ("mnn", "both") and self.weights.alignment > 0

    @property
    def uses_discriminator(self) -> bool:
        return self.module.n_slices > 1 and self.config.alignment in ("adversarial", "both")

    def anchor_steps(self) -> list[int]:
        start, n = self.warmup_steps, max(1, self.config.anchor_refreshes)
        return sorted({start + (self.config.n_steps - start) * i // n for i in range(n)})

    def configure_optimizers(self):
        lr = self.config.lr
        return (
            torch.optim.Adam(self.module.generative_parameters(), lr=lr, fused=True),
            torch.optim.Adam(self.module.discriminator.parameters(), lr=lr, fused=True),
        )

    def train_dataloader(self) -> DataLoader:
        rank, size = self.trainer.global_rank, self.trainer.world_size
        self.rng = np.random.default_rng(self.seed if rank == 0 else [self.seed, rank])  # as InspireModel.train
        per_rank = max(1, -(-self.config.per_slice // size))
        dataset = SamplerDataset(self.data, per_rank, self.rng, (rank, size), self.config.n_steps)
        # batch_size=None: the sampler makes the batches; a generator of its own keeps the DataLoader's base seed
        # off torch's global generator (which drives dropout); num_workers=0: one sampler, one stream
        return StatefulLoader(dataset, batch_size=None, num_workers=0, generator=torch.Generator())

    def on_fit_start(self) -> None:
        self._features = torch.as_tensor(self.data.features, device=self.device)
        self._mask = torch.as_tensor(self.data.mask, dtype=torch.float32, device=self.device)
        width = self.data.features.shape[1]
        self._geometry = slice(width - (self.data.n_base or width), None)

    def _encoder_input(self, idx: np.ndarray):
        n_layers = self.module.encoder.n_layers if self.graph_encoder else None
        return encoder_input(self._features, self.data, idx, self.device, n_layers)

    # -- anchors: searched before the step that needs them (after the previous step, or at the start)
    @torch.inference_mode()
    def _refresh_anchors(self) -> None:
        if not (self.uses_anchors and self.n_done in self.anchor_steps()) or self.anchors_at == self.n_done:
            return
        rows = anchor_subsample(self.data.slices, self.rng)
        was_training = self.module.training
        self.module.eval()
        z = np.concatenate([
            self.module.encode(self._encoder_input(rows[i : i + ENCODE_ROWS])).cpu().numpy()
            for i in range(0, rows.size, ENCODE_ROWS)
        ])  # fmt: skip
        self.module.train(was_training)
        codes = self.data.slices[rows]
        a, b = mutual_neighbours(z, codes, self.config.anchor_neighbours)
        reach = neighbour_reach(z, codes, self.config.anchor_neighbours)
        self.anchors = (rows[a], rows[b], (0.5 * (reach[a] + reach[b])).astype(np.float32))
        self.anchors_at = self.n_done

    def on_train_start(self) -> None:
        self._start = time.perf_counter()
        if self._torch_rng is not None:  # resumed: dropout continues where the checkpointed run was
            torch.set_rng_state(self._torch_rng)
            self._torch_rng = None
        self._refresh_anchors()

    def on_train_end(self) -> None:
        self.history.setdefault("_seconds", []).append(time.perf_counter() - self._start)  # as Trainer.fit

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # after ModelCheckpoint's hook (callbacks run first): a checkpoint holds the state before this search
        self._refresh_anchors()

    # -- one step: Trainer.train_step
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        opt, opt_disc = self.optimizers()
        cfg = self.config
        self.module.train()
        idx = batch["idx"]
        h_seed = self._features[idx]
        h = self._encoder_input(idx.cpu().numpy()) if self.graph_encoder else h_seed
        margin = None if self.n_done < self.warmup_steps else cfg.margin
        terms, z = self.module.losses(
            h, batch["counts"], batch["library"], batch["s"], self._mask,
            h_seed=h_seed, h_geometry=h_seed[:, self._geometry], saturated=batch["saturated"],
            margin=margin, adversarial=self.uses_discriminator,
        )  # fmt: skip
        if self.anchors is not None and self.anchors[0].size:
            pick = self.rng.integers(0, self.anchors[0].size, cfg.per_slice * self.module.n_slices)
            first, second, reach = (part[pick] for part in self.anchors)
            terms["alignment"] = self.module.alignment_loss(
                self._encoder_input(first), self._encoder_input(second), torch.as_tensor(reach, device=self.device)
            )
        w = asdict(self.weights)
        ramp = 1.0 if self.warmup_steps == 0 else min(1.0, self.n_done / self.warmup_steps)
        w["adversarial"] = self.weights.adversarial * ramp
        loss = sum(w[k] * v for k, v in terms.items())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Training diverged at step {self.n_done + 1}.")
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()
        record = {k: float(v.detach()) for k, v in terms.items()}
        record["loss"] = float(loss.detach())
        if self.uses_discriminator:
            d_loss = self.module.discriminator_loss(z, batch["s"], margin)
            opt_disc.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_disc.step()
            record["discriminator"] = float(d_loss.detach())
        self.n_done += 1
        for k, v in record.items():
            self.history.setdefault(k, []).append(v)

    # -- the state Lightning does not checkpoint (the sampler and numpy generator travel with the DataLoader)
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["inspire"] = {
            "step": self.n_done,
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "anchors": [] if self.anchors is None else [torch.as_tensor(a) for a in self.anchors],
            "anchors_at": self.anchors_at,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["inspire"]
        self.n_done, self.anchors_at = int(state["step"]), int(state["anchors_at"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self._torch_rng = state["torch_rng"]
        self.anchors = tuple(np.asarray(a) for a in state["anchors"]) or None


def trainer_kwargs(n_steps: int, **kwargs: Any) -> dict[str, Any]:
    """Settings of a quiet ``pl.Trainer`` for ``n_steps`` steps (one epoch of ``n_steps`` batches)."""
    return {
        "max_epochs": 1,
        "max_steps": -1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        **kwargs,
    }


# ---------------------------------------------------------------------------------------------------- DDP check
def _ddp_main(out: str, n_steps: int, strategy: str) -> None:
    """Train on 2 CPU processes (gloo); each rank saves its weights and the training loop's time."""
    import json
    import os

    import sd_inspire as si
    from sd_inspire.model import InspireModel

    torch.set_num_threads(1)
    adata = si.datasets.simulate(3, n_spots=800, n_genes=300, output="anndata", random_state=0)
    si.pp.preprocess(adata)
    si.gr.spatial_neighbors(adata)
    m = InspireModel(adata, random_state=0, device="cpu")
    config, weights = m._train_settings(
        max_steps=n_steps, batch_size=1024, lr=1e-3, loss_weights=None, alignment="both", warmup_fraction=0.2,
        margin=5.0, early_stopping=False, patience=200, checkpoint_every=0,
    )  # fmt: skip
    lit = LitInspire(m.module, m.data, config, weights, m.seed)
    trainer = pl.Trainer(**trainer_kwargs(n_steps, accelerator="cpu", devices=2, strategy=strategy))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(m.seed + 1)
        trainer.fit(lit)
    rank = trainer.global_rank
    torch.save(m.module.state_dict(), os.path.join(out, f"lightning-rank{rank}.pt"))
    with open(os.path.join(out, f"lightning-rank{rank}.json"), "w") as f:
        json.dump(
            {"fit_seconds": lit.history["_seconds"][-1], "steps": lit.n_done, "world_size": trainer.world_size}, f
        )


if __name__ == "__main__":
    import sys

    if len(sys.argv) >= 3 and sys.argv[1] == "ddp":
        _ddp_main(
            sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 300, sys.argv[4] if len(sys.argv) > 4 else "ddp"
        )
    else:
        sys.exit(__doc__)
