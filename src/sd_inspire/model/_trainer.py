"""Training loop: alternating generator/discriminator steps, warm-up, checkpoints, resume, early stopping."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from sd_inspire._logging import logger
from sd_inspire.model._anchors import anchor_subsample, mutual_neighbours, neighbour_reach
from sd_inspire.model._distributed import World, average_gradients, mean_over_ranks
from sd_inspire.model._sampler import make_sampler, sample_subgraph

if TYPE_CHECKING:
    from pathlib import Path

    from scipy import sparse

    from sd_inspire.model._module import InspireModule, LossWeights
    from sd_inspire.model._sampler import StratifiedSampler
    from sd_inspire.model._setup import ModelData


@dataclass
class TrainConfig:
    """Settings of one training run."""

    n_steps: int
    per_slice: int
    lr: float = 1e-3
    warmup_fraction: float = 0.2
    margin: float = 5.0
    early_stopping: bool = False
    patience: int = 200
    checkpoint_every: int = 0
    alignment: str = "both"  # "mnn": anchor pairs pulled together; "adversarial": slice discriminator; "both"
    anchor_neighbours: int = 20  # k of the mutual nearest neighbours
    anchor_refreshes: int = 4  # anchor searches: at the end of the warm-up and evenly after it


#: Spots encoded at once in forward passes without gradients (anchor searches, the latent codes of all spots).
ENCODE_ROWS = 8192

#: Weight of each step's loss in the exponentially smoothed loss that early stopping watches (the past keeps 0.98).
LOSS_SMOOTHING = 0.02

#: Relative fall of the smoothed loss that counts as an improvement for early stopping.
EARLY_STOPPING_MIN_DELTA = 1e-3

#: Steps between updates of the progress bar's loss figures.
PROGRESS_EVERY = 20

#: The final fit of the count model learns at this multiple of the training's learning rate: with the latent codes
#: fixed it is a small, well-posed problem, and a program's logits must span several units (a gene 100 times more
#: used in one program than on average is 4.6 apart), which at 1e-3 per step takes thousands of steps.
REFIT_LR_FACTOR = 10.0


def refit_count_model(
    module: InspireModule,
    data: ModelData,
    latent: np.ndarray,
    *,
    n_steps: int,
    per_slice: int,
    lr: float,
    weights: LossWeights,
    rng: np.random.Generator,
    device: torch.device,
    world: World,
    show_progress_bar: bool = True,
) -> list[float]:
    """Fit the count model to convergence on fixed latent codes; return its deviance per step.

    The factor head, the gene programs and the slice effects are optimised (Adam at ``lr``) for the count
    likelihood and the slice-effect penalty with the codes ``latent`` (the trained encoder's, spots x latent) held
    fixed. During training these parameters move at the pace the encoder and the alignment need; here they converge
    without changing the latent space. The factor-usage prior is left out: while the codes form it keeps every
    factor in use, but on fixed codes it asks for equal usage of all factors and splits a cell type over several
    (the suite's simulations, five seeds: recovery of the true proportions 0.757 with it, 0.818 without).
    """
    from tqdm.auto import tqdm

    params = module.count_parameters()
    opt = torch.optim.Adam(params, lr=lr, fused=True)
    sampler = rank_sampler(data, per_slice, rng, world)
    mask = torch.as_tensor(data.mask, dtype=torch.float32, device=device)
    deviance: list[float] = []
    module.train()
    for step in tqdm(range(n_steps), disable=not (show_progress_bar and world.is_main), desc="fitting factors"):
        idx, counts = sampler.next_batch()
        b = count_batch(data, idx, counts, device)
        beta = module.factors(torch.as_tensor(latent[idx], device=device), b["s"])
        terms = module.count_terms(beta, b["counts"], b["library"], b["s"], mask, b["saturated"])
        loss = sum(getattr(weights, k) * v for k, v in terms.items() if k != "prior")
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"The final fit of the factors diverged at step {step + 1} of {n_steps}. Lower the learning rate "
                f"(`lr`, {lr / REFIT_LR_FACTOR:g}) or check the input for extreme values; no result was written."
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(params, world.size)
        opt.step()
        deviance.append(float(terms["poisson"].detach()))
    return mean_over_ranks(deviance, world.size, device)  # one reduction for the whole curve, not one per step


def rank_sampler(data: ModelData, per_slice: int, rng: np.random.Generator, world: World) -> StratifiedSampler:
    """The minibatches of the current rank: its share of ``per_slice`` spots per slice, from its own shard of each."""
    per_rank = max(1, -(-per_slice // world.size))
    return make_sampler(data.counts, data.slices, per_rank, rng, (world.rank, world.size), data.slice_names)


def count_batch(data: ModelData, idx: np.ndarray, counts: sparse.csr_matrix, device: torch.device) -> dict:
    """What the count model reads for spots ``idx``: slice codes ``s``, dense ``counts``, ``library``, ``saturated``."""
    return {
        "s": torch.as_tensor(data.slices[idx], device=device),
        # a copy in torch's own (aligned) memory: SIMD reductions then sum in the same order on every run
        "counts": torch.tensor(counts.toarray(), device=device),
        "library": torch.as_tensor(data.library[idx], device=device),
        "saturated": torch.as_tensor(data.saturated[idx], device=device),
    }


def _fresh_early_stop() -> dict:
    """Early-stopping state: best smoothed loss, steps since, the smoothed loss, whether training stopped."""
    return {"best": float("inf"), "since_best": 0, "smooth": None, "stopped": False}


def encoder_input(
    features: torch.Tensor,
    data: ModelData,
    idx: np.ndarray,
    device: torch.device,
    n_layers: int | None = None,
) -> torch.Tensor | tuple:
    """What the encoder reads for spots ``idx``.

    Their feature rows, or, for a graph encoder with ``n_layers`` layers, the base features and edges of their
    sampled subgraph and the number of seeds.
    """
    if n_layers is None:
        return features[torch.as_tensor(idx, device=device)]
    nodes, sub = sample_subgraph(data.graph, idx, n_layers)
    edge_index = torch.as_tensor(np.vstack([sub.col, sub.row]).astype(np.int64), device=device)
    return (features[torch.as_tensor(nodes, device=device), : data.n_base], edge_index, int(idx.size))


class Trainer:
    """Runs the optimisation of an :class:`InspireModule` on :class:`ModelData`."""

    def __init__(
        self,
        module: InspireModule,
        data: ModelData,
        config: TrainConfig,
        weights: LossWeights,
        *,
        rng: np.random.Generator,
        device: torch.device,
        graph_encoder: bool = False,
        world: World | None = None,
        geometry: tuple[np.ndarray, np.ndarray, int] | None = None,
    ) -> None:
        self.module, self.data, self.config, self.weights = module, data, config, weights
        self.device, self.rng, self.graph_encoder = device, rng, graph_encoder
        self.world = world or World()
        self.opt = torch.optim.Adam(module.generative_parameters(), lr=config.lr, fused=True)
        self.opt_disc = torch.optim.Adam(module.discriminator.parameters(), lr=config.lr, fused=True)
        self.sampler = rank_sampler(data, config.per_slice, rng, self.world)
        self.step = 0
        self.history: dict[str, list[float]] = {}
        self._mask = torch.as_tensor(data.mask, dtype=torch.float32, device=device)
        self._features = torch.as_tensor(data.features, device=device)
        # the geometry term keeps the similarities of a projection (centre, axes, first column) of the input, or
        # without one those of the most smoothed features, the last block Â^k Y
        self._geometry_columns = slice(data.features.shape[1] - (data.n_base or data.features.shape[1]), None)
        self._geometry_projection = None
        if geometry is not None:
            centre, axes, start = geometry
            self._geometry_columns = slice(start, None)
            self._geometry_projection = (
                torch.as_tensor(centre, device=device),
                torch.as_tensor(axes, device=device),
            )
        self.anchors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # both ends, reach
        self.early_stop = _fresh_early_stop()

    # -- batches
    def batch(self, idx: np.ndarray, counts: sparse.csr_matrix) -> dict:
        """Tensors of one minibatch (only its rows of the counts are densified)."""
        out = {
            "h_seed": self._features[torch.as_tensor(idx, device=self.device)],
            **count_batch(self.data, idx, counts, self.device),
            "mask": self._mask,
        }
        out["h_geometry"] = out["h_seed"][:, self._geometry_columns]
        if self._geometry_projection is not None:
            centre, axes = self._geometry_projection
            out["h_geometry"] = (out["h_geometry"] - centre) @ axes
        out["h"] = self.encoder_input(idx) if self.graph_encoder else out["h_seed"]
        return out

    def encoder_input(self, idx: np.ndarray) -> torch.Tensor | tuple:
        """What the encoder reads for spots ``idx`` (a sampled subgraph for a graph encoder)."""
        n_layers = self.module.encoder.n_layers if self.graph_encoder else None
        return encoder_input(self._features, self.data, idx, self.device, n_layers)

    # -- alignment anchors
    @property
    def uses_anchors(self) -> bool:
        return self.module.n_slices > 1 and self.config.alignment in ("mnn", "both") and self.weights.alignment > 0

    @property
    def uses_discriminator(self) -> bool:
        return self.module.n_slices > 1 and self.config.alignment in ("adversarial", "both")

    def anchor_steps(self) -> list[int]:
        """Steps at which the anchors are searched anew: the end of the warm-up, then evenly spaced."""
        start, n = self.warmup_steps, max(1, self.config.anchor_refreshes)
        return sorted({start + (self.config.n_steps - start) * i // n for i in range(n)})

    @torch.inference_mode()
    def refresh_anchors(self) -> None:
        """Mutual nearest neighbours across slices among the current latent codes of a subsample of spots."""
        rows = anchor_subsample(self.data.slices, self.rng)
        was_training = self.module.training
        self.module.eval()
        z = np.concatenate(
            [
                self.module.encode(self.encoder_input(rows[i : i + ENCODE_ROWS])).cpu().numpy()
                for i in range(0, rows.size, ENCODE_ROWS)
            ]
        )
        self.module.train(was_training)
        codes = self.data.slices[rows]
        a, b = mutual_neighbours(z, codes, self.config.anchor_neighbours)
        reach = neighbour_reach(z, codes, self.config.anchor_neighbours)
        self.anchors = (rows[a], rows[b], (0.5 * (reach[a] + reach[b])).astype(np.float32))
        logger.debug("Step %d: %d anchor pairs across slices", self.step, a.size)

    def anchor_batch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Anchor pairs drawn for one step (as many as spots in a minibatch): both ends and their reach."""
        assert self.anchors is not None
        pick = self.rng.integers(0, self.anchors[0].size, self.config.per_slice * self.module.n_slices)
        return tuple(part[pick] for part in self.anchors)

    # -- one step
    def margin(self) -> float | None:
        """Logit bound of the discriminator: none during warm-up, ``config.margin`` after."""
        return None if self.step < self.warmup_steps else self.config.margin

    @property
    def warmup_steps(self) -> int:
        return int(self.config.warmup_fraction * self.config.n_steps)

    def adversarial_weight(self) -> float:
        """Linear ramp of the adversarial weight over the warm-up."""
        if self.warmup_steps == 0:
            return self.weights.adversarial
        return self.weights.adversarial * min(1.0, self.step / self.warmup_steps)

    def train_step(self) -> dict[str, float]:
        """One step of the model, then one of the discriminator."""
        self.module.train()
        if self.uses_anchors and self.step in self.anchor_steps():
            self.refresh_anchors()
        b = self.batch(*self.sampler.next_batch())
        margin = self.margin()
        terms, z = self.module.losses(
            b["h"],
            b["counts"],
            b["library"],
            b["s"],
            b["mask"],
            h_seed=b["h_seed"],
            h_geometry=b["h_geometry"],
            saturated=b["saturated"],
            margin=margin,
            adversarial=self.uses_discriminator,
        )
        if self.anchors is not None and self.anchors[0].size:
            first, second, reach = self.anchor_batch()
            terms["alignment"] = self.module.alignment_loss(
                self.encoder_input(first), self.encoder_input(second), torch.as_tensor(reach, device=self.device)
            )
        w = asdict(self.weights)
        w["adversarial"] = self.adversarial_weight()
        loss = sum(w[k] * v for k, v in terms.items())
        if not torch.isfinite(loss):  # stop before the step writes NaN into the weights
            bad = [k for k, v in terms.items() if not torch.isfinite(v)] or ["loss"]
            raise FloatingPointError(
                f"Training diverged at step {self.step + 1} of {self.config.n_steps}: the loss term(s) {bad} are not "
                f"finite. Lower the learning rate (`lr`, now {self.config.lr:g}) or check the input for extreme "
                "values; no result was written."
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.opt.param_groups[0]["params"], self.world.size)
        self.opt.step()
        record = {k: float(v.detach()) for k, v in terms.items()}
        record["loss"] = float(loss.detach())
        if self.uses_discriminator:
            d_loss = self.module.discriminator_loss(z, b["s"], margin)
            self.opt_disc.zero_grad(set_to_none=True)
            d_loss.backward()
            average_gradients(self.opt_disc.param_groups[0]["params"], self.world.size)
            self.opt_disc.step()
            record["discriminator"] = float(d_loss.detach())
        self.step += 1
        return record

    # -- checkpoints
    def state(self) -> dict:
        """Everything needed to resume: weights, optimisers, step, history, sampler and random states."""
        # arrays as tensors (a weights-only checkpoint holds no numpy objects); positions ("*pos") are int lists
        sampler = {
            k: v if k.endswith("pos") else [torch.as_tensor(a) for a in v] for k, v in self.sampler.state().items()
        }
        return {
            "module": self.module.state_dict(),
            "opt": self.opt.state_dict(),
            "opt_disc": self.opt_disc.state_dict(),
            "step": self.step,
            "history": self.history,
            "sampler": sampler,
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "anchors": [] if self.anchors is None else [torch.as_tensor(a) for a in self.anchors],
            "early_stop": dict(self.early_stop),
        }

    def load_state(self, state: dict) -> None:
        """Resume from :meth:`state`."""
        self.module.load_state_dict(state["module"])
        self.opt.load_state_dict(state["opt"])
        self.opt_disc.load_state_dict(state["opt_disc"])
        self.step = int(state["step"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.sampler.load_state(
            {k: v if k.endswith("pos") else [np.asarray(a) for a in v] for k, v in state["sampler"].items()}
        )
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        anchors = state.get("anchors", [])
        self.anchors = tuple(np.asarray(a) for a in anchors) if anchors else None
        self.early_stop = {**_fresh_early_stop(), **state.get("early_stop", {})}

    def save_checkpoint(self, path: Path) -> None:
        """Write :meth:`state` to ``path`` atomically (write new, then replace)."""
        tmp = path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(path)

    # -- the loop
    def fit(self, *, show_progress_bar: bool = True, checkpoint_path: Path | None = None) -> dict[str, list[float]]:
        """Train until ``n_steps`` (or early stopping); return the loss history (one entry per step)."""
        from tqdm.auto import tqdm

        cfg = self.config
        stop = self.early_stop  # part of the checkpointed state: a resumed run stops where an uninterrupted one does
        start = time.perf_counter()
        bar = tqdm(
            total=cfg.n_steps,
            initial=self.step,
            disable=not (show_progress_bar and self.world.is_main),
            desc="training",
            unit="step",
        )
        while self.step < cfg.n_steps and not stop["stopped"]:
            record = self.train_step()
            for k, v in record.items():
                self.history.setdefault(k, []).append(v)
            value = record["loss"]
            if cfg.early_stopping and self.world.size > 1:  # every rank must stop at the same step
                value = mean_over_ranks(value, self.world.size, self.device)
            previous = stop["smooth"]
            smooth = stop["smooth"] = (
                value if previous is None else (1 - LOSS_SMOOTHING) * previous + LOSS_SMOOTHING * value
            )
            if self.step % PROGRESS_EVERY == 0:
                bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k in ("loss", "poisson", "adversarial")})
            bar.update(1)
            if cfg.early_stopping and self.step > self.warmup_steps:
                if smooth < stop["best"] - EARLY_STOPPING_MIN_DELTA * abs(stop["best"]):
                    stop["best"], stop["since_best"] = smooth, 0
                else:
                    stop["since_best"] += 1
                    if stop["since_best"] >= cfg.patience:
                        logger.info("Early stopping at step %d (no improvement in %d steps)", self.step, cfg.patience)
                        stop["stopped"] = True
            if checkpoint_path is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint(checkpoint_path)
        bar.close()
        if checkpoint_path is not None and cfg.checkpoint_every:
            self.save_checkpoint(checkpoint_path)
        elapsed = time.perf_counter() - start
        self.history.setdefault("_seconds", []).append(elapsed)
        return self.history
