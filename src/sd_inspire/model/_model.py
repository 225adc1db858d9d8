"""The user-facing model: set up from a table, train, query, save and load."""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from sd_inspire._constants._constants import ALIGNMENTS, ENCODERS, FEATURES, STRUCTURES, Key
from sd_inspire._logging import logger
from sd_inspire._utils import REFIT_KEY, convergence, derive_seed, fit_name, judged_curve, random_generator
from sd_inspire._validate import check_choice, check_integer, check_number
from sd_inspire.model._counts import expected_shares, slice_programs
from sd_inspire.model._distributed import World, local_cuda_device, world
from sd_inspire.model._features import multiscale_axes, principal_axes, within_slice_sd
from sd_inspire.model._module import GATEncoder, InspireModule, LossWeights
from sd_inspire.model._setup import holds_counts, n_technologies, prepare
from sd_inspire.model._trainer import (
    ENCODE_ROWS,
    REFIT_LR_FACTOR,
    TrainConfig,
    Trainer,
    encoder_input,
    refit_count_model,
)

if TYPE_CHECKING:
    from anndata import AnnData

    from sd_inspire.model._setup import ModelData

_WEIGHTS_FILE = "model.pt"
_META_FILE = "model.json"
_CHECKPOINT_FILE = "checkpoint.pt"
_REFIT_STREAM = 7  # random stream of the final fit's minibatches, apart from the training's
_REDUCTION_FILE = "reduction.npy"

#: Default training length: passes over the largest slice, and the bounds of the steps that gives.
DEFAULT_PASSES, DEFAULT_STEPS = 40, (600, 3000)
#: The same for a query mapped onto a reference (only its slices' few parameters are learnt).
QUERY_PASSES, QUERY_STEPS = 10, (100, 1000)
#: The count model's final fit runs this many times the training's steps (no more than the longest default training,
#: no fewer than the training): its factors keep sharpening into cell types after its deviance has levelled off.
REFIT_STEPS_FACTOR = 3


#: ``structure`` of model folders saved before it was recorded: they were trained on the most smoothed block.
LEGACY_STRUCTURE = "smoothed"


def refit_steps(n_steps: int) -> int:
    """Steps of the count model's final fit after ``n_steps`` of training."""
    return max(n_steps, min(REFIT_STEPS_FACTOR * n_steps, DEFAULT_STEPS[1]))


class InspireModel:
    """INSPIRE: a spatial graph encoder, adversarial alignment of slices and a Poisson non-negative factorisation.

    Spots are encoded from their expression and its spatial neighbourhood into a latent space shared by all slices
    (a discriminator that tries to tell the slice from the latent code is fooled by the encoder). From the latent
    code, spatial factors ``β_i`` (proportions over ``n_factors``) mix gene programs ``B`` shared by all slices, with
    slice-specific gene effects ``γ_s``, to explain the raw counts: ``x_ig ~ Poisson(l_i q_ig)``,
    ``q_ig ∝ (β_i B)_g exp(γ_sg)`` over the genes slice ``s`` measured.

    Parameters
    ----------
    adata
        Table preprocessed by :func:`sd_inspire.pp.preprocess` (raw counts in ``layers["counts"]``, gene space in
        ``var["highly_variable"]``) with a spatial graph from :func:`sd_inspire.gr.spatial_neighbors`.
    slice_key
        Column of ``obs`` with the slices; ``None`` for a single slice.
    n_factors
        Number of spatial factors and gene programs (at least 2, at most the number of genes).
    n_latent
        Dimension of the latent space.
    n_hidden
        Width of the hidden layers.
    encoder
        ``"lgcn"``: a multilayer perceptron on ``[Y, ÂY, ..., Â^k Y]``, ``Y`` a fixed linear reduction (PCA) of the
        expression (see ``features``), ``Â`` the normalised graph (precomputed, sparse). ``"gat"``: two
        graph-attention layers over 2-hop subgraphs sampled from the graph.
    n_hops
        Propagation hops ``k`` of the ``"lgcn"`` features (INSPIRE used two). Fewer hops keep small domains, more
        smooth broad ones; *Concepts* in the docs says how the default was chosen.
    n_pcs
        Width of the linear reduction ``Y``.
    features
        What ``Y`` reduces, for the genes every slice measured: ``"pearson"``, analytic Pearson residuals of the raw
        counts (``θ = 100``, clipped, each gene standardised within each slice; see *Concepts* in the docs), or
        ``"lognorm"``, the log-normalised expression in ``X`` centred within each slice (INSPIRE's input).
        Log-normalised values keep the sequencing depth, which then shapes the latent space where depth varies
        between spots; they may suit small imaging panels. A table of normalised values (no counts) always uses
        ``"lognorm"``.
    structure
        Which structure of the input the latent space keeps: the anchor's principal components (below) and the
        similarities that the geometry term preserves within each slice. ``"smoothed"``: the most smoothed block
        ``Â^k Y`` alone, tissue domains (and nothing of the cells' own identities). ``"multiscale"``: the principal
        components of ``[Y, ÂY, ..., Â^k Y]`` with every hop weighted equally, so structure shared by a spot and its
        neighbourhood (domains) leads, and cell identities that neighbours do not share are kept where they are
        strong: for single-cell panels whose question is cell classes (the MERFISH hypothalamus' cell classes, five
        seeds: 0.142 -> 0.362 of probe ARI), at a cost to domains at single-cell resolution (simulated single-cell
        islands with missing domains: 0.751 -> 0.622). *Concepts* in the docs gives the measurements. Model folders saved before this option
        existed load as ``"smoothed"``.
    anchored
        Anchor the ``"lgcn"`` encoder at the principal components of ``structure``: the codes are those components
        plus a learned correction that starts at zero, so training starts from the structure of the expression and
        its neighbourhood and moves away from it only as far as the objective asks. Unanchored, training starts
        from random codes. Ignored by the ``"gat"`` encoder.
    cross_technology
        Make the factors slice-aware (a per-slice offset of the factor logits). ``None`` switches it on when
        ``obs["technology"]`` holds more than one technology.
    connectivity_key
        Key of the graph in ``obsp``.
    dropout
        Dropout rate.
    random_state
        Seed of every random choice (weights, minibatches, reduction). No global random state is used or changed.
    device
        ``"auto"`` (a GPU when present), ``"cpu"``, ``"cuda"`` or a :class:`torch.device`.

    Examples
    --------
    >>> import sd_inspire as si
    >>> from sd_inspire.model import InspireModel
    >>> adata = si.datasets.simulate(2, n_spots=200, n_genes=120, output="anndata")
    >>> si.pp.preprocess(adata, n_top_genes=100)
    >>> si.gr.spatial_neighbors(adata)
    >>> model = InspireModel(adata, n_factors=5)
    >>> model.train(max_steps=20, show_progress_bar=False)
    >>> model.get_latent().shape
    (400, 32)
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        slice_key: str | None = Key.SLICE,
        n_factors: int = 20,
        n_latent: int = 32,
        n_hidden: int = 256,
        encoder: Literal["lgcn", "gat"] = "lgcn",
        n_hops: int = 3,
        n_pcs: int = 50,
        features: Literal["pearson", "lognorm"] = "pearson",
        structure: Literal["smoothed", "multiscale"] = "smoothed",
        anchored: bool = True,
        cross_technology: bool | None = None,
        connectivity_key: str = "spatial_connectivities",
        dropout: float = 0.1,
        random_state: int | None = 0,
        device: str | torch.device = "auto",
    ) -> None:
        check_choice(encoder, "encoder", ENCODERS)
        check_choice(structure, "structure", STRUCTURES)
        n_latent, n_hidden = (
            check_integer(n_latent, "n_latent", minimum=1),
            check_integer(n_hidden, "n_hidden", minimum=1),
        )
        n_hops, n_pcs = check_integer(n_hops, "n_hops", minimum=0), check_integer(n_pcs, "n_pcs", minimum=2)
        n_factors = check_integer(n_factors, "n_factors", minimum=2)
        check_choice(features, "features", FEATURES)
        if not holds_counts(adata):
            warnings.warn(
                "The table holds normalised values, not counts (`uns['preprocess']['counts_are_integer']` is "
                "False): the gene programs are fitted by a KL-divergence non-negative factorisation of the values "
                "in `X` (the Poisson likelihood on their continuous scale), and the encoder reads principal "
                "components of `X` (features='lognorm').",
                UserWarning,
                stacklevel=2,
            )
            features = "lognorm"
        self.seed = derive_seed(random_generator(random_state))
        self.random_state = random_state
        self.device = _device(device)
        self.data: ModelData = prepare(
            adata,
            slice_key=slice_key,
            n_pcs=n_pcs,
            n_hops=n_hops,
            connectivity_key=connectivity_key,
            seed=self.seed,
            features=features,
        )
        n_genes = len(self.data.genes)
        if not 2 <= n_factors <= n_genes:
            raise ValueError(
                f"`n_factors` must be between 2 and the number of genes in the model ({n_genes}), got {n_factors}."
            )
        if cross_technology is None:
            cross_technology = n_technologies(adata) > 1
        self.params: dict[str, Any] = {
            "slice_key": slice_key,
            "n_factors": n_factors,
            "n_latent": n_latent,
            "n_hidden": n_hidden,
            "encoder": encoder,
            "n_hops": n_hops,
            "n_pcs": n_pcs,
            "features": features,
            "structure": structure,
            "anchored": bool(anchored) and encoder == "lgcn",
            "cross_technology": bool(cross_technology),
            "connectivity_key": connectivity_key,
            "dropout": dropout,
        }
        if len(self.data.slice_names) == 1:
            logger.warning("A single slice: training without the alignment terms.")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.module = self._initial_module().to(self.device)
        self.history: dict[str, list[float]] = {}
        self.is_trained = False
        self.world = World()
        self.mapped_onto: dict[str, Any] | None = None  # the reference of a query model (load_query_data)

    def _initial_module(self) -> InspireModule:
        """The untrained network for :attr:`data`: anchored encoder, programs and slice effects at the data's own."""
        data, anchor = self.data, None
        if self.params["anchored"]:
            centre, axes, start = self._structure_axes()
            anchor = (torch.as_tensor(axes), torch.as_tensor(centre), start)
        n_input, n_genes, n_slices = data.features.shape[1], len(data.genes), len(data.slice_names)
        module = _build_module(self.params, n_input, data.n_base, n_genes, n_slices, anchor)
        if data.gene_fraction is not None:
            # gene programs start at the data's mean profile: counts span orders of magnitude across genes,
            # which logits starting near 0 take thousands of steps to reach, leaving the programs near uniform
            with torch.no_grad():
                mean_profile = torch.as_tensor(np.log(data.gene_fraction + 1e-8), dtype=torch.float32)
                module.loading_logits += mean_profile - mean_profile.mean()
                if data.slice_log_ratio is not None:  # and slice effects at each slice's own profile
                    module.slice_gene_effect.copy_(torch.as_tensor(data.slice_log_ratio, dtype=torch.float32))
        return module

    def _structure_axes(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Centre, axes and first input column of the projection whose structure the latent space keeps.

        The anchored encoder starts at it and the geometry term keeps its similarities (``structure``); computed
        once per model.
        """
        if getattr(self, "_structure_cache", None) is None:
            data, width = self.data, self.params["n_latent"]
            if self.params["structure"] == "smoothed":
                start = data.features.shape[1] - data.n_base
                centre, axes = principal_axes(data.features[:, start:], width)
            else:
                start = 0
                centre, axes = multiscale_axes(data.features, data.n_base, width)
            self._structure_cache = (centre, axes, start)
        return self._structure_cache

    # ------------------------------------------------------------------ training
    def train(
        self,
        *,
        max_steps: int | None = None,
        batch_size: int = 1024,
        lr: float = 1e-3,
        loss_weights: dict[str, float] | None = None,
        alignment: Literal["mnn", "adversarial", "both"] = "both",
        warmup_fraction: float = 0.2,
        margin: float = 5.0,
        early_stopping: bool = False,
        patience: int = 200,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 200,
        show_progress_bar: bool = True,
    ) -> None:
        """Train the model.

        Parameters
        ----------
        max_steps
            Optimisation steps. By default about 40 passes over the largest slice, between 600 and 3000 steps.
            Afterwards (not for a query) the factor head, gene programs and slice effects are fitted again on the
            trained latent space, for three times as many steps (at most 3000, at least as many), with the latent
            codes fixed and a learning rate ten times ``lr`` (``history["factor_refit"]``): the count model
            converges there, while the latent space is taken as trained (more training trades its domain structure
            for mixing; docs: Concepts).
            :attr:`convergence` judges that fit.
        batch_size
            Spots per minibatch, drawn equally from every slice.
        lr
            Learning rate (Adam) of the model and the discriminator.
        loss_weights
            Weights of the terms ``poisson``, ``reconstruction``, ``geometry``, ``prior``, ``adversarial``,
            ``slice_effect``, ``alignment`` (defaults: 0.1, 1, 0.02, 4, 1, 0.01, 1). The count model weighs 0.1: at
            1 its gradient dominates the encoder and the latent space keeps less of the spatial domains.
        alignment
            How the latent codes of different slices are brought together; the geometry term keeps each slice's own
            structure (the similarities of the anchor's principal components, see ``structure``, between spots of
            the same slice).
            ``"adversarial"``: INSPIRE's slice discriminator, which the encoder learns to fool (mixes slices well,
            but asks every slice for the same mixture of codes, so slices whose domain compositions differ, such as
            a partial section, can be pulled onto the wrong domains). ``"mnn"``: pairs of spots that are mutual
            nearest neighbours across two slices in the latent space (searched at the end of the warm-up and three
            times after, on at most 4,096 spots per slice) are drawn together until they are as close as neighbours
            within a slice; a domain one slice lacks finds no partner there and is left alone. ``"both"`` (default):
            the discriminator for mixing, the anchors to keep matching domains matched.
        warmup_fraction
            Fraction of the steps over which the adversarial weight ramps up from 0 (the anchors are first searched
            at its end); afterwards the discriminator logits are bounded by ``margin``.
        margin
            Bound of the discriminator logits after the warm-up.
        early_stopping
            Stop when the smoothed loss has not improved for ``patience`` steps after the warm-up.
        patience
            See ``early_stopping``.
        checkpoint_dir
            Folder for a checkpoint written every ``checkpoint_every`` steps. If it holds a checkpoint of this model
            (same genes, slices and parameters), training resumes from it and ends as an uninterrupted run would
            (early stopping included). A checkpoint of a run with other training settings (seed, steps, learning
            rate, loss weights, batch size, alignment, early stopping) is refused: it would return that run.
        checkpoint_every
            Steps between checkpoints.
        show_progress_bar
            Show a progress bar with the loss terms.
        """
        self._require_data("train on")
        if checkpoint_dir is not None:
            checkpoint_every = check_integer(checkpoint_every, "checkpoint_every", minimum=1)
        config, weights = self._train_settings(
            max_steps=max_steps,
            batch_size=batch_size,
            lr=lr,
            loss_weights=loss_weights,
            alignment=alignment,
            warmup_fraction=warmup_fraction,
            margin=margin,
            early_stopping=early_stopping,
            patience=patience,
            checkpoint_every=checkpoint_every if checkpoint_dir is not None else 0,
        )
        self.world = world(self.device)
        # one stream of minibatches per rank; a single process keeps the seed's own stream
        rng = np.random.default_rng(self.seed if self.world.rank == 0 else [self.seed, self.world.rank])
        graph_encoder = self.params["encoder"] == "gat"
        # "smoothed" keeps the similarities of the most smoothed block itself, as before `structure` existed
        geometry = None if self.params["structure"] == "smoothed" or weights.geometry == 0 else self._structure_axes()
        trainer = Trainer(
            self.module, self.data, config, weights, rng=rng, device=self.device, graph_encoder=graph_encoder,
            world=self.world, geometry=geometry,
        )  # fmt: skip
        run = {**asdict(config), "loss_weights": asdict(weights)}  # everything that decides the result
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 1)
            checkpoint = None if checkpoint_dir is None else self._resume(trainer, Path(checkpoint_dir), run)
            self.history = trainer.fit(show_progress_bar=show_progress_bar, checkpoint_path=checkpoint)
        # the thread count is recorded, not matched: float sums, and so the last digits of the result, depend on it
        self.train_params = {**run, "batch_size": batch_size, "torch_threads": torch.get_num_threads()}
        self.is_trained = True
        del trainer  # its minibatch buffers (counts read from disk) are not needed by the final fit
        if self.mapped_onto is None and weights.poisson > 0:
            self._fit_count_model(config, weights, show_progress_bar=show_progress_bar)
        self._warn_unless_converged()

    def _train_settings(
        self, *, max_steps: int | None, batch_size: int, lr: float, loss_weights: dict[str, float] | None,
        alignment: str, **config: Any,
    ) -> tuple[TrainConfig, LossWeights]:  # fmt: skip
        """The checked settings of a training run (see :meth:`train`), with its default length filled in."""
        batch_size, lr = check_integer(batch_size, "batch_size", minimum=1), check_number(lr, "lr", positive=True)
        check_choice(alignment, "alignment", ALIGNMENTS)
        if max_steps is not None:
            max_steps = check_integer(max_steps, "max_steps", minimum=1)
        per_slice = max(1, batch_size // len(self.data.slice_names))
        if max_steps is None:
            largest = int(np.bincount(self.data.slices).max())
            query = self.mapped_onto is not None  # a query: only its slices' parameters are learnt
            passes, (low, high) = (QUERY_PASSES, QUERY_STEPS) if query else (DEFAULT_PASSES, DEFAULT_STEPS)
            max_steps = int(np.clip(math.ceil(passes * largest / per_slice), low, high))
        weights = LossWeights()
        for k, v in (loss_weights or {}).items():
            if k not in {f.name for f in fields(LossWeights)}:
                raise KeyError(f"Unknown loss weight {k!r}; known: {[f.name for f in fields(LossWeights)]}.")
            setattr(weights, k, check_number(v, f"loss_weights[{k!r}]", minimum=0.0))
        if self.mapped_onto is not None:
            # the encoder is frozen: the terms that only shape the latent space (and the anchors and discriminator
            # they need) would cost time and change nothing
            weights.geometry = weights.adversarial = weights.alignment = 0.0
            alignment = "mnn"
        return TrainConfig(n_steps=max_steps, per_slice=per_slice, lr=lr, alignment=alignment, **config), weights

    def _resume(self, trainer: Trainer, folder: Path, run: dict[str, Any]) -> Path:
        """The checkpoint file of this rank in ``folder``; a checkpoint of the same run there is loaded first.

        ``run`` holds the settings that decide the result; a checkpoint of a run with other settings is refused.
        """
        folder.mkdir(parents=True, exist_ok=True)
        # each rank keeps its own sampler position; the weights are the same on every rank
        checkpoint = folder / (_CHECKPOINT_FILE if self.world.size == 1 else f"checkpoint-rank{self.world.rank}.pt")
        meta = folder / _META_FILE
        # how often the run is checkpointed does not decide its result
        settings = json.loads(json.dumps({**run, "seed": self.seed}))
        settings.pop("checkpoint_every")
        if checkpoint.exists() and meta.exists():
            saved = _read_metadata(meta)
            self._check_metadata(saved, str(folder))
            _check_same_run(saved.get("train"), settings, folder)
            hint = "delete it to train from the start, or pass another `checkpoint_dir`"
            trainer.load_state(_torch_load(checkpoint, self.device, "checkpoint", hint))
            logger.info("Resuming training from step %d of %s", trainer.step, checkpoint)
        if self.world.is_main:
            meta.write_text(json.dumps({**self.metadata, "train": settings}, indent=1))
        return checkpoint

    def _fit_count_model(self, config: TrainConfig, weights: LossWeights, *, show_progress_bar: bool) -> None:
        """The count model's final fit on the trained latent space (which itself is left as trained)."""
        start = time.perf_counter()
        refit_rng = np.random.default_rng([self.seed, _REFIT_STREAM, self.world.rank])
        n_steps = refit_steps(config.n_steps)
        self.history[REFIT_KEY] = refit_count_model(
            self.module,
            self.data,
            self.get_latent_representation(),
            n_steps=n_steps,
            per_slice=config.per_slice,
            lr=config.lr * REFIT_LR_FACTOR,
            weights=weights,
            rng=refit_rng,
            device=self.device,
            world=self.world,
            show_progress_bar=show_progress_bar,
        )
        self.history["_refit_seconds"] = [time.perf_counter() - start]
        self.train_params["refit_steps"] = n_steps

    def _warn_unless_converged(self) -> None:
        """Warn (first process only) when the judged loss curve has not levelled off, or is too short to tell."""
        check, training_steps = self.convergence, len(self.history.get("loss", []))
        judged = judged_curve(self.history)
        what, steps = fit_name(judged).capitalize(), len(self.history.get(judged, []))
        if self.world.is_main and np.isnan(check["loss_change"]):
            logger.warning("%s ran %d steps, too few to tell whether it converged.", what, steps)
        elif self.world.is_main and not check["converged"]:
            logger.warning(
                "%s may not have converged: its mean loss changed by %.1f%% from the second-to-last to the last "
                "tenth of the %d steps (tolerance: a fall of %.0f%%). More steps (`max_steps=%d`) may change the "
                "results; `si.pl.history` shows the loss curves.",
                what,
                100 * check["loss_change"],
                steps,
                100 * check["tolerance"],
                2 * training_steps,
            )

    @property
    def convergence(self) -> dict[str, Any]:
        """Whether the loss levelled off: ``converged``, ``loss_change``, ``window``, ``tolerance``.

        ``loss_change`` is the relative change of the mean loss from the second-to-last to the last tenth of the
        steps (negative: still falling); converged means it fell by less than 1% there. The loss is that of the
        count model's final fit on the trained latent space (``history["factor_refit"]``: the factors, programs
        and slice effects converge there, the latent space is taken as trained), or of training for a query
        model. Computed from :attr:`history`, so a saved and reloaded model gives the same answer.
        """
        return convergence(self.history.get(judged_curve(self.history), []))

    # ------------------------------------------------------------------ queries
    def _require_trained(self) -> None:
        if not self.is_trained:
            raise RuntimeError(
                "The model is not trained: call `.train()` first (or `InspireModel.load` a trained one)."
            )

    def _require_data(self, what: str) -> None:
        if self.data is None:
            raise RuntimeError(
                f"This model was loaded without data, so it has no spots to {what}: pass the table it was trained on "
                "to `InspireModel.load(path, adata)`."
            )

    @torch.inference_mode()
    def _forward_all(self, what: Literal["latent", "factors"], chunk_size: int = ENCODE_ROWS) -> np.ndarray:
        self._require_trained()
        self._require_data(f"compute the {what} of")
        self.module.eval()
        features = torch.as_tensor(self.data.features, device=self.device)
        n_layers = self.module.encoder.n_layers if self.params["encoder"] == "gat" else None
        out = []
        for start in range(0, self.data.n_obs, chunk_size):
            idx = np.arange(start, min(start + chunk_size, self.data.n_obs))
            h = encoder_input(features, self.data, idx, self.device, n_layers)
            z = self.module.encode(h)
            if what == "factors":
                z = self.module.factors(z, torch.as_tensor(self.data.slices[idx], device=self.device))
            out.append(z.cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def get_latent_representation(self) -> np.ndarray:
        """Latent representation, n_obs x n_latent (scvi-tools' name)."""
        return self._forward_all("latent")

    def get_latent(self) -> np.ndarray:
        """Latent representation, n_obs x n_latent: an alias of :meth:`get_latent_representation`."""
        return self.get_latent_representation()

    def get_factors(self, *, refine: int = 0) -> np.ndarray:
        """Spatial factor proportions, n_obs x n_factors (rows sum to 1).

        Parameters
        ----------
        refine
            EM passes that move each spot's proportions towards its own counts, the gene programs and slice effects
            fixed (:func:`sd_inspire.model.refine_factors`); 0 returns the factor head's output, a function of the
            latent codes and therefore as smooth over the graph as they are.

        Returns
        -------
        Spots x factors, float32.
        """
        refine = check_integer(refine, "refine", minimum=0)
        factors = self._forward_all("factors")
        if refine == 0:
            return factors
        from sd_inspire.model._posterior import refine_factors

        d = self.data
        loadings, effects = self.get_loadings().T, self.get_slice_effects()
        return refine_factors(factors, loadings, effects, d.mask, d.counts, d.slices, n_passes=refine)

    @torch.inference_mode()
    def get_loadings(self) -> np.ndarray:
        """Gene loadings, genes of the model x n_factors (non-negative; each factor's column sums to 1)."""
        self._require_trained()
        return self.module.loadings().T.cpu().numpy().astype(np.float32)

    @torch.inference_mode()
    def get_slice_effects(self) -> np.ndarray:
        """Multiplicative slice gene effects ``exp(γ)``, slices x genes of the model."""
        self._require_trained()
        return torch.exp(self.module.slice_gene_effect).cpu().numpy().astype(np.float32)

    def get_factor_sd(self, *, factors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior standard deviation of each spot's factor proportions, and each slice's dispersion.

        A Laplace approximation of the count likelihood with the gene programs and slice effects fixed (see
        *Concepts* in the docs), read over the model's counts in blocks of spots.

        Parameters
        ----------
        factors
            The model's factors (:meth:`get_factors`), if already computed; computed here otherwise.

        Returns
        -------
        ``sd`` (spots x factors, float32; scaled by the square root of the spot's slice dispersion and at most 1/2)
        and ``dispersion`` (one Pearson dispersion per slice, at least 1).
        """
        from sd_inspire.model._posterior import factor_sd

        self._require_trained()
        self._require_data("estimate the uncertainty of")
        beta = self.get_factors() if factors is None else factors
        d = self.data
        return factor_sd(beta, self.get_loadings().T, self.get_slice_effects(), d.mask, d.counts, d.slices)

    @property
    def values_are_counts(self) -> bool:
        """Whether the model was trained on counts (``False``: normalised values, fitted by a KL factorisation)."""
        if self.data is not None:
            return bool(self.data.values_are_counts)
        return bool(self._reference.get("values_are_counts", True))

    # ------------------------------------------------------------------ persistence
    @property
    def metadata(self) -> dict[str, Any]:
        """What :meth:`save` records besides the weights: genes, slices, parameters, seeds, versions, reference.

        ``reference`` holds what the model needs without its training data (input sizes, genes each slice measured,
        the input reduction's scale and spread); ``mapped_onto`` names the reference of a query model.
        """
        from sd_inspire._versions import versions

        return {
            "genes": self.genes,
            "slices": self.slice_names,
            "params": self.params,
            "random_state": self.random_state if isinstance(self.random_state, int) else None,
            "seed": self.seed,
            "is_trained": self.is_trained,
            "versions": versions(),
            "reference": self._reference_info(),
            "mapped_onto": self.mapped_onto,
        }

    def _reference_info(self) -> dict[str, Any]:
        """What the model needs to work without its training data: sizes, genes measured, the input reduction."""
        if self.data is None:
            return self._reference
        reduction = self.data.reduction
        return {
            "n_input": int(self.data.features.shape[1]),
            "n_base": int(self.data.n_base),
            "feature_genes": list(self.data.feature_genes),
            "mask": self.data.mask.astype(int).tolist(),
            "values_are_counts": bool(self.data.values_are_counts),
            "reduction_scale": None if reduction is None else float(reduction.scale),
            # the input's spread, matched by new slices (load_query_data)
            "input_sd": within_slice_sd(self.data.features, self.data.slices, len(self.data.slice_names)).tolist(),
        }

    @property
    def genes(self) -> list[str]:
        """Genes of the count model (the gene space it was trained on)."""
        return list(self.data.genes) if self.data is not None else list(self._genes)

    @property
    def slice_names(self) -> list[str]:
        """Slices the model was trained on."""
        return list(self.data.slice_names) if self.data is not None else list(self._slice_names)

    @property
    def reference_id(self) -> str:
        """A fingerprint of the trained model: SHA-256 (first 16 hex digits) of its weights and genes.

        Two models with the same identifier have the same weights for the same genes; results mapped onto a
        reference record it (``uns[key]["reference_id"]``), so they can be traced back to the model that made them.
        """
        import hashlib

        digest = hashlib.sha256(json.dumps(self.genes).encode())
        for name, tensor in sorted(self.module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def _check_metadata(self, meta: dict[str, Any], where: str) -> None:
        for key, mine in (("genes", self.genes), ("slices", self.slice_names), ("params", self.params)):
            if meta.get(key) != mine:
                raise ValueError(f"{where}: the saved model's {key} do not match this data and these settings.")

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the weights (``model.pt``), metadata (``model.json``) and input reduction into folder ``path``.

        The folder is all :meth:`load` needs: the model can be loaded, inspected and used as a reference for new
        slices without its training data.

        Raises
        ------
        FileExistsError
            If ``path`` already holds a model and ``overwrite`` is false.
        """
        self._require_trained()
        folder = Path(path)
        if (folder / _WEIGHTS_FILE).exists() and not overwrite:
            raise FileExistsError(f"{str(folder)!r} already holds a model; pass `overwrite=True` to replace it.")
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (_WEIGHTS_FILE + ".tmp")
        torch.save({k: v.detach().cpu() for k, v in self.module.state_dict().items()}, tmp)
        tmp.replace(folder / _WEIGHTS_FILE)
        axes = self._reduction_axes()
        if axes is not None:
            with open(folder / (_REDUCTION_FILE + ".tmp"), "wb") as f:
                np.save(f, axes, allow_pickle=False)
            (folder / (_REDUCTION_FILE + ".tmp")).replace(folder / _REDUCTION_FILE)
        meta = {**self.metadata, "history": self.history}
        tmp = folder / (_META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(folder / _META_FILE)

    def _reduction_axes(self) -> np.ndarray | None:
        if self.data is None:
            return self._axes
        return None if self.data.reduction is None else self.data.reduction.axes

    @classmethod
    def load(
        cls, path: str | Path, adata: AnnData | None = None, *, device: str | torch.device = "auto"
    ) -> InspireModel:
        """Load a model saved with :meth:`save`, for ``adata`` or on its own.

        Only tensors and arrays are read (``torch.load(weights_only=True)``, ``numpy.load(allow_pickle=False)``), so
        a model file cannot run code.

        Parameters
        ----------
        path
            Folder written by :meth:`save` (or by :func:`sd_inspire.tl.integrate` with ``model_dir``).
        adata
            The table the model was trained on (same genes, slices and parameters): the model is then set up on it
            as after training, and every ``get_*`` method works. ``None``: the model alone, without data: its gene
            programs (:meth:`get_loadings`), slice effects, genes, slices, parameters, training history and
            :attr:`reference_id` can be read, and it can be saved again.
        device
            Where the weights go.

        Raises
        ------
        FileNotFoundError
            If ``path`` holds no model.
        ValueError
            If a file is truncated, not written by :meth:`save` or damaged (non-finite weights), the model does not
            match the data, or (``adata=None``) the model was saved by a version that did not record what it needs
            to work without data.
        """
        folder = Path(path)
        if not (folder / _WEIGHTS_FILE).exists() or not (folder / _META_FILE).exists():
            raise FileNotFoundError(f"{str(folder)!r} holds no model ({_WEIGHTS_FILE} and {_META_FILE} expected).")
        meta = _read_metadata(folder / _META_FILE)
        try:
            params, random_state, seed, is_trained = (
                meta["params"],
                meta["random_state"],
                int(meta["seed"]),
                bool(meta["is_trained"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{folder / _META_FILE}: not the metadata of a saved model ({type(e).__name__}: {e})."
            ) from None
        if adata is None:
            model = cls._detached(folder, meta, device)
        elif meta.get("mapped_onto"):
            raise ValueError(
                f"{str(folder)!r} holds a query model mapped onto reference {meta['mapped_onto'].get('reference_id')}: "
                "load it without data, or map the slices again with `InspireModel.load_query_data`."
            )
        else:
            model = cls(adata, **params, random_state=random_state, device=device)
            model.seed = seed
            model._check_metadata(meta, str(folder))
        model.module.load_state_dict(_load_weights(folder / _WEIGHTS_FILE, model.module, model.device))
        model.history = meta.get("history", {})
        model.is_trained = is_trained
        return model

    @classmethod
    def load_query_data(
        cls,
        adata: AnnData,
        reference: InspireModel | str | Path,
        *,
        slice_key: str | None = Key.SLICE,
        random_state: int | None = 0,
        device: str | torch.device = "auto",
        match_input_scale: bool = True,
    ) -> InspireModel:
        """A model of new slices ``adata`` on a trained reference: its encoder, factor head and gene programs frozen.

        Following scvi-tools' ``load_query_data``: the query's spots are put in the reference's input space (its
        expression over the reference's input genes, made comparable within each query slice as in training,
        projected on the reference's axes, propagated over the query's graph, each input column rescaled within
        each query slice to the spread it had in the reference), so the frozen encoder places them in the
        reference's latent space and the frozen factor head and gene programs give factors on the
        reference's axes. Only what belongs to the new slices is then learnt by :meth:`train`: their slice
        embeddings, their gene effects and (for a slice-aware reference, ``cross_technology``) their factor
        offsets, starting from the reference slices' mean. Genes of the reference that the query lacks are masked;
        genes the reference never saw are left out (both counts are logged).

        Parameters
        ----------
        adata
            The query: new slices, preprocessed (``layers["counts"]``) with a spatial graph.
        reference
            A trained :class:`InspireModel`, or a folder written by :meth:`save` (or ``tl.integrate(model_dir=)``).
        slice_key
            Column of ``obs`` with the query's slices.
        random_state
            Seed of the minibatches and of anything else random.
        device
            Where the model runs.
        match_input_scale
            Rescale each column of a query slice's input to the spread (within-slice standard deviation) it had in
            the reference (adaptive input normalisation, as AdaBN does for normalisation layers). A
            query from another technology or panel (more noise per spot, less of the signal kept) otherwise feeds
            the frozen encoder inputs of another scale than it was trained on, and its latent loses domains that
            its input held. Switch off to feed the projections unchanged.

        Returns
        -------
        The query model (train it with :meth:`train`), whose ``get_*`` methods give the query's results.

        Raises
        ------
        ValueError
            If the reference is not trained or lacks its input reduction (saved by an older version), or the query
            shares too few genes with it.
        """
        ref = reference if isinstance(reference, InspireModel) else cls.load(reference, device=device)
        ref._require_trained()
        data = ref._query_data(adata, slice_key=slice_key, match_input_scale=match_input_scale)
        model = cls._bare(
            data=data,
            params={**ref.params, "slice_key": slice_key},
            random_state=random_state,
            seed=derive_seed(random_generator(random_state)),
            device=device,
            mapped_onto={"reference_id": ref.reference_id, "slices": ref.slice_names},
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(model.seed)
            model.module = ref._query_module(model.params, data)
        model.module = model.module.to(model.device)
        model._match_query_effects()
        return model

    def _query_data(self, adata: AnnData, *, slice_key: str | None, match_input_scale: bool) -> ModelData:
        """New slices in this (reference) model's gene and input space; see :meth:`load_query_data`."""
        from sd_inspire.model._features import match_input_scale as match_input_scale_
        from sd_inspire.model._setup import Reduction, prepare_query

        axes, info = self._reduction_axes(), self._reference_info()
        if axes is None or info.get("reduction_scale") is None:
            raise ValueError(
                "The reference model has no record of its input reduction (saved by an older sd-inspire version): "
                "load it with its training data and save it again."
            )
        if self.params["encoder"] != "lgcn":
            raise ValueError("Only models with the 'lgcn' encoder can serve as a reference for now.")
        data = prepare_query(
            adata,
            genes=self.genes,
            feature_genes=list(info["feature_genes"]),
            reduction=Reduction(self.params["features"], np.asarray(axes, dtype=np.float32), info["reduction_scale"]),
            slice_key=slice_key,
            n_hops=self.params["n_hops"],
            connectivity_key=self.params["connectivity_key"],
            values_are_counts_=bool(info.get("values_are_counts", True)),
        )
        if match_input_scale:
            if info.get("input_sd") is None:
                warnings.warn(
                    "The reference model has no record of its input's spread (saved by an older sd-inspire version): "
                    "the query's input is not rescaled to it. Load the reference with its training data and save it "
                    "again to record it.",
                    UserWarning,
                    stacklevel=2,
                )
            else:
                target = np.asarray(info["input_sd"], dtype=np.float64)
                if target.shape != (data.features.shape[1],):
                    raise ValueError(
                        f"The reference records the spread of {target.size} input columns; its input has "
                        f"{data.features.shape[1]}: a damaged model folder."
                    )
                match_input_scale_(data.features, data.slices, len(data.slice_names), target)
        logger.info(
            "Query: %d of the reference's %d genes measured (the others masked), %d of its %d input genes; %d genes "
            "of the query are not in the reference and left out",
            data.n_genes_present,
            len(self.genes),
            data.n_feature_genes_present,
            len(info["feature_genes"]),
            data.n_genes_left_out,
        )
        return data

    def _query_module(self, params: dict[str, Any], data: ModelData) -> InspireModule:
        """The network of a query: this model's weights, with the new slices' own parameters trainable.

        The new slices' embeddings, gene effects and factor offsets start at the mean of this model's slices.
        """
        n_query, n_input = len(data.slice_names), data.features.shape[1]
        anchor = _placeholder_anchor(params, n_input, data.n_base)
        module = _build_module(params, n_input, data.n_base, len(self.genes), n_query, anchor)
        state, mine = self.module.state_dict(), module.state_dict()
        for name in ("slice_embedding.weight", "factor_slice_bias", "slice_gene_effect"):
            state[name] = state[name].mean(dim=0, keepdim=True).expand(n_query, -1).clone()
        for name, tensor in mine.items():  # the discriminator's output layer: one output per query slice
            if state[name].shape != tensor.shape:
                state[name] = tensor
        module.load_state_dict(state)
        trainable = {"slice_embedding.weight", "slice_gene_effect"} | (
            {"factor_slice_bias"} if params["cross_technology"] else set()
        )
        for name, parameter in module.named_parameters():
            parameter.requires_grad_(name in trainable)
        return module

    @torch.inference_mode()
    def _match_query_effects(self, n_iter: int = 20, chunk_size: int = ENCODE_ROWS, pseudo: float = 0.5) -> None:
        """Start a query's gene effects where its expected counts per gene match the observed ones.

        With the encoder, factor head and programs frozen, each query slice's factors are fixed, and its gene
        effects ``γ_s`` only rescale genes: a few multiplicative updates ``γ_sg += log((x_sg + c) / (μ_sg + c))``
        (``x_sg`` the slice's counts on gene ``g``, ``μ_sg`` those the model expects, ``c = 0.5``) bring them
        close to their optimum, where gradient steps from the reference slices' mean would need thousands of steps
        (a new technology's effects span orders of magnitude).
        """
        data, module = self.data, self.module
        was_training = module.training
        module.eval()
        observed = data.gene_totals  # slices x genes, counted by prepare_query
        features = torch.as_tensor(data.features, device=self.device)
        betas = []
        for start in range(0, data.n_obs, chunk_size):
            idx = torch.as_tensor(np.arange(start, min(start + chunk_size, data.n_obs)), device=self.device)
            beta = module.factors(module.encode(features[idx]), torch.as_tensor(data.slices, device=self.device)[idx])
            betas.append(beta.cpu().numpy().astype(np.float64))
        beta = np.vstack(betas)  # spots x factors
        programs = module.loadings().cpu().numpy().astype(np.float64)
        gamma = module.slice_gene_effect.detach().cpu().numpy().astype(np.float64)
        mask = data.mask.astype(np.float64)
        for _ in range(n_iter):
            expected = np.zeros_like(observed)
            weighted = slice_programs(programs, np.exp(gamma), mask)
            for start in range(0, data.n_obs, chunk_size):
                codes = data.slices[start : start + chunk_size]
                for s in np.unique(codes):
                    rows = start + np.flatnonzero(codes == s)
                    expected[s] += data.library[rows].astype(np.float64) @ expected_shares(beta[rows], weighted[s])
            gamma += np.where(mask > 0, np.log((observed + pseudo) / (expected + pseudo)), 0.0)
        module.slice_gene_effect.copy_(torch.as_tensor(gamma, dtype=torch.float32))
        module.train(was_training)

    @classmethod
    def _bare(
        cls,
        *,
        data: ModelData | None,
        params: dict[str, Any],
        random_state: int | None,
        seed: int,
        device: str | torch.device,
        mapped_onto: dict[str, Any] | None,
    ) -> InspireModel:
        """A model's state without its network (the caller builds ``module``): untrained, one process."""
        model = cls.__new__(cls)
        model.data, model.params = data, params
        model.random_state, model.seed = random_state, seed
        model.device, model.world = _device(device), World()
        model.history, model.is_trained = {}, False
        model.mapped_onto = mapped_onto
        return model

    @classmethod
    def _detached(cls, folder: Path, meta: dict[str, Any], device: str | torch.device) -> InspireModel:
        """A model set up from its saved metadata alone (no data); the weights are loaded by the caller."""
        reference = meta.get("reference")
        needed = ("n_input", "n_base", "feature_genes", "mask")
        if not isinstance(reference, dict) or any(k not in reference for k in needed):
            raise ValueError(
                f"{folder / _META_FILE}: saved by an sd-inspire version that did not record what the model needs "
                "without its training data; load it with that data (`InspireModel.load(path, adata)`) and save it "
                "again."
            )
        try:
            genes, slices = [str(g) for g in meta["genes"]], [str(s) for s in meta["slices"]]
            mask = np.asarray(reference["mask"], dtype=bool)
            if mask.shape != (len(slices), len(genes)):
                raise ValueError(f"mask of shape {mask.shape} for {len(slices)} slices x {len(genes)} genes")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{folder / _META_FILE}: not the metadata of a saved model ({e}).") from None
        axes = None
        if (folder / _REDUCTION_FILE).exists():
            try:
                axes = np.load(folder / _REDUCTION_FILE, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise ValueError(f"{folder / _REDUCTION_FILE}: not a readable input reduction ({e}).") from None
        model = cls._bare(
            data=None,
            params=dict(meta["params"]),
            random_state=meta["random_state"],
            seed=int(meta["seed"]),
            device=device,
            mapped_onto=meta.get("mapped_onto"),
        )
        model._genes, model._slice_names, model._axes = genes, slices, axes
        model._reference = {**reference, "mask": mask.astype(int).tolist()}
        anchor = _placeholder_anchor(model.params, int(reference["n_input"]), int(reference["n_base"]))
        model.module = _build_module(
            model.params, int(reference["n_input"]), int(reference["n_base"]), len(genes), len(slices), anchor
        ).to(model.device)
        return model


def _build_module(
    params: dict[str, Any],
    n_input: int,
    n_base: int,
    n_genes: int,
    n_slices: int,
    anchor: tuple[torch.Tensor, torch.Tensor, int] | None,
) -> InspireModule:
    """The network of a model with ``params`` (as in :attr:`InspireModel.params`) for data of these sizes."""
    graph_encoder = None
    if params["encoder"] == "gat":
        graph_encoder = GATEncoder(n_base, params["n_hidden"], params["n_latent"], dropout=params["dropout"])
    return InspireModule(
        n_input,
        n_genes,
        n_slices,
        n_latent=params["n_latent"],
        n_factors=params["n_factors"],
        n_hidden=params["n_hidden"],
        slice_aware_factors=params["cross_technology"],
        dropout=params["dropout"],
        encoder=graph_encoder,
        anchor=anchor,
    )


def _placeholder_anchor(
    params: dict[str, Any], n_input: int, n_base: int
) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """An anchor of the right shapes for a module whose weights (anchor included) are loaded afterwards.

    ``"multiscale"`` anchors read the whole input; ``"smoothed"`` ones the most smoothed block, its last ``n_base``
    columns.
    """
    if not params["anchored"]:
        return None
    start = n_input - n_base if params["structure"] == "smoothed" else 0
    return torch.zeros(n_input - start, params["n_latent"]), torch.zeros(n_input - start), start


def _check_same_run(saved: dict[str, Any] | None, settings: dict[str, Any], folder: Path) -> None:
    """Refuse to resume a checkpoint of a run with other training settings (it would return that run's result)."""
    if saved is None:  # written before the settings were recorded: nothing to compare
        return
    diffs = [f"{k}: {saved.get(k)!r} there, {v!r} here" for k, v in settings.items() if saved.get(k) != v]
    if diffs:
        raise ValueError(
            f"{str(folder)!r} holds a checkpoint of a run with other training settings ({'; '.join(diffs)}): "
            "resume with the same settings, or pass another `checkpoint_dir`."
        )


def _read_metadata(path: Path) -> dict[str, Any]:
    """Metadata of a saved model or checkpoint (``model.json``); a file that is not one gives a message naming it."""
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict) or not isinstance(meta["params"], dict):
            raise TypeError("no parameters")
        meta["params"].setdefault("structure", LEGACY_STRUCTURE)  # saved before it was recorded
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path}: not the metadata of a saved model (truncated or edited? {type(e).__name__}: {e})."
        ) from None
    return meta


def _torch_load(path: Path, device: torch.device, what: str, hint: str) -> Any:
    """Tensors only (``weights_only``: no code runs); a file torch cannot read gives a message naming it."""
    try:
        return torch.load(path, weights_only=True, map_location=device)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file; its text may advise unsafe loading
        raise ValueError(f"{path}: not a readable {what} ({type(e).__name__}); {hint}.") from None


def _load_weights(path: Path, module: torch.nn.Module, device: torch.device) -> dict[str, torch.Tensor]:
    """The weights in ``path``, checked against ``module`` (names, shapes) and for non-finite values."""
    state = _torch_load(
        path, device, "model weights file", "it was not written by `InspireModel.save`, or is truncated"
    )
    expected = module.state_dict()
    if not isinstance(state, dict) or set(state) != set(expected):
        names = sorted(set(state) ^ set(expected)) if isinstance(state, dict) else []
        raise ValueError(f"{path}: the weights do not belong to this model (differing entries: {names[:5]}).")
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[name].shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(
                f"{path}: weight {name!r} has shape {got}, the model expects {tuple(expected[name].shape)}."
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: weight {name!r} holds NaN or infinite values; the file is damaged.")
    return state


def _device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"`device={device!r}` but no CUDA device is available; use 'cpu' or 'auto'.")
    return local_cuda_device(device)
