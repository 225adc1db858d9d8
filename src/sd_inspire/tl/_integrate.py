"""``tl.integrate``: train INSPIRE on a table and write the results where scverse tools find them."""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from sd_inspire._constants import Key
from sd_inspire._constants._constants import ALIGNMENTS, ENCODERS, FEATURES, REFINE_PASSES, STRUCTURES
from sd_inspire._docs import d
from sd_inspire._logging import log_added, logger, timed
from sd_inspire._utils import SEED_BOUND, get_slices, get_table, is_spatialdata, table_name, values_are_counts
from sd_inspire._validate import check_choice, check_integer
from sd_inspire.io._write import add_factor_table, check_table_matches_store
from sd_inspire.tl._ensemble import Member, combine
from sd_inspire.tl.metrics import redundant_factors

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

    from sd_inspire.tl._ensemble import Ensemble


@d.dedent
def integrate(
    data: AnnData | SpatialData,
    *,
    slice_key: str | None = Key.SLICE,
    table_key: str | None = None,
    n_factors: int = 20,
    n_latent: int = 32,
    encoder: Literal["lgcn", "gat"] = "lgcn",
    n_hops: int = 3,
    features: Literal["pearson", "lognorm"] = "pearson",
    structure: Literal["smoothed", "multiscale"] = "smoothed",
    max_steps: int | None = None,
    batch_size: int = 1024,
    cross_technology: bool | None = None,
    loss_weights: dict[str, float] | None = None,
    alignment: Literal["mnn", "adversarial", "both"] = "both",
    n_models: int = 1,
    uncertainty: bool | None = None,
    refine_factors: int = REFINE_PASSES,
    device: str = "auto",
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 200,
    model_dir: str | Path | None = None,
    show_progress_bar: bool = True,
    random_state: int | None = 0,
    key_added: str = "inspire",
    copy: bool = False,
) -> AnnData | None:
    """Integrate slices into one latent space and one non-negative factorisation with INSPIRE.

    A thin wrapper around :class:`sd_inspire.model.InspireModel`: it sets the model up, trains it and writes the
    results. Steps that have not been run are run with their defaults and logged: :func:`sd_inspire.pp.preprocess`
    when ``layers["counts"]`` or ``var["highly_variable"]`` is missing, :func:`sd_inspire.gr.spatial_neighbors` when
    the graph is missing. With a single slice the model trains without its alignment terms (with a warning).

    Tables of normalised values instead of counts (some public MERFISH or seqFISH matrices ship only those;
    ``uns["preprocess"]["counts_are_integer"]`` is then false) are integrated too, with a warning: the count model
    becomes a KL-divergence non-negative factorisation of the values in ``X`` (the Poisson likelihood on their
    continuous scale) and the encoder reads principal components of ``X`` (``features="lognorm"``).

    Parameters
    ----------
    %(data)s
    %(slice_key)s ``None`` for a single slice.
    %(table_key)s
    n_factors
        Number of spatial factors and gene programs (2 to the number of genes in the gene space).
    n_latent
        Dimension of the latent space.
    encoder
        ``"lgcn"`` (precomputed sparse neighbour propagation) or ``"gat"`` (graph attention on sampled subgraphs).
    n_hops
        Propagation hops of the ``"lgcn"`` features (3; INSPIRE used 2), see :class:`sd_inspire.model.InspireModel`.
        Fewer hops keep small domains (islands a few spots across), more hops smooth broad layered domains.
    features
        Input of the encoder's linear reduction: ``"pearson"`` (analytic Pearson residuals of the counts, which carry
        little of the sequencing depth) or ``"lognorm"`` (the log-normalised ``X``), see
        :class:`sd_inspire.model.InspireModel`. ``"lognorm"`` may suit small imaging panels and does worse where
        sequencing depth varies between spots (the latent space then follows the depth): compare with the default.
    structure
        What the latent space keeps, see :class:`sd_inspire.model.InspireModel`: ``"smoothed"`` (the most smoothed
        hop of the input: tissue domains) or ``"multiscale"`` (every hop weighted equally: domains, and the cells' own
        identities where they are strong; for single-cell panels annotated with cell classes rather than domains).
    max_steps
        Training steps; by default from the size of the largest slice (600 to 3000). The count model's final fit
        on the trained latent space runs three times as many, at most 3000
        (:meth:`sd_inspire.model.InspireModel.train`).
    batch_size
        Spots per minibatch, drawn equally from every slice.
    cross_technology
        Slice-aware factors; by default when ``obs["technology"]`` holds several technologies.
    loss_weights
        Weights of the objective's terms, see :meth:`sd_inspire.model.InspireModel.train`.
    alignment
        How slices are brought together in the latent space: ``"adversarial"`` (INSPIRE's slice discriminator),
        ``"mnn"`` (mutual nearest neighbours across slices drawn together, which leaves alone a domain that only some
        slices hold) or ``"both"``, see :meth:`sd_inspire.model.InspireModel.train`.
    n_models
        Train an ensemble of this many models from different seeds (the first from ``random_state``) and report
        their average and, as per-spot uncertainty, their spread. Members are matched to the first one (gene
        programs by the assignment of best total correlation, latent spaces by an orthogonal Procrustes rotation).
        The run takes ``n_models`` times as long.
    uncertainty
        Estimate the per-spot standard deviation of the factor proportions: a Laplace approximation of each spot's
        count likelihood around its factors (gene programs fixed), scaled by each slice's overdispersion (Pearson,
        quasi-likelihood), plus the variance over ensemble members when ``n_models >= 2`` (law of total variance).
        One more pass over the counts per member. ``None``: when ``n_models >= 2``. A single model's intervals are
        too narrow (coverage in *Concepts* in the docs): prefer an ensemble when the intervals matter.
    refine_factors
        EM passes that move each spot's factor proportions towards its own counts after training, the gene
        programs and slice effects fixed (:func:`sd_inspire.model.refine_factors`): the factor head reads the
        latent codes, which summarise a spot's neighbourhood, so its proportions are as smooth over the graph as
        the codes; the passes add what the spot's own counts say of its composition (on the suite's simulations,
        recovery of the true cell-type proportions rose on every dataset, see *Concepts* in the docs). One more
        pass over the counts. 0 keeps the factor head's output (the setting before this option existed).
    device
        ``"auto"`` uses a GPU when present. Launched with ``torchrun --nproc_per_node N script.py``, the same call
        trains data-parallel over the N processes (gloo on CPU, nccl on GPU): each rank draws its share of every
        minibatch from its own shard of each slice, gradients are averaged, every rank ends with the same model and
        only rank 0 writes into a backing store.
    checkpoint_dir
        Folder for training checkpoints; a run interrupted midway resumes from it (one file per rank when
        data-parallel). A checkpoint of a run with other training settings is refused, not returned.
    checkpoint_every
        Steps between checkpoints (with ``checkpoint_dir``).
    model_dir
        Folder to keep the trained model in (:meth:`sd_inspire.model.InspireModel.save`; with ``n_models >= 2``,
        each member in ``member0``, ``member1``, ...). :meth:`~sd_inspire.model.InspireModel.load` reads it back,
        with or without the data. A folder that already holds a model is refused before training.
    show_progress_bar
        Show a progress bar with the loss terms.
    %(random_state)s On the CPU, equal seeds give equal results.
    key_added
        Stem of the keys written.
    %(copy)s A SpatialData is then left untouched.

    Returns
    -------
    %(copy_returns)s, with

    - ``obsm["X_{key_added}"]``: latent representation (n_obs x n_latent);
    - ``obsm["{key_added}_factors"]``: spatial factor proportions (n_obs x n_factors, rows sum to 1);
    - ``varm["{key_added}_loadings"]``: gene loadings (n_vars x n_factors, non-negative, each factor sums to 1
      over the model's genes; 0 for genes outside the model, flagged by ``var["{key_added}_gene"] == False``);
    - ``uns[key_added]``: ``params``, ``train_params``, ``genes``, ``slices``, ``slice_gene_effects`` (slices x
      genes, multiplicative), ``history`` (loss terms per step; ``factor_refit``: the count deviance per step of the
      final fit), ``versions``, ``random_state``, ``n_models``,
      ``values`` (``"counts"``, or ``"normalised"`` for tables without counts), ``refine_factors`` (the EM passes
      of the factors on the counts), ``reference_id`` (the trained
      model's fingerprint, :attr:`sd_inspire.model.InspireModel.reference_id`; the first member's for an
      ensemble), ``converged`` and ``loss_change`` (whether the training loss levelled off, and its relative change
      from the second-to-last to the last tenth of the steps: :attr:`sd_inspire.model.InspireModel.convergence`;
      with an ensemble, ``converged`` only if every member did), ``redundant_factors`` (pairs of factors whose programs and usage are near-duplicates, a table from
      :func:`sd_inspire.tl.metrics.redundant_factors`; shown by :func:`sd_inspire.pl.loadings`) and, with
      ``model_dir``, ``model_dir`` (its absolute path).

    With ``uncertainty``:

    - ``obsm["{key_added}_factors_sd"]``: per-spot standard deviation of each factor proportion;
    - ``obs["{key_added}_uncertainty"]``: per spot, the root mean square of those standard deviations;
    - ``uns[key_added]["uncertainty"]``: per slice (``"slices"``), the mean factor standard deviation and the count
      dispersion; with an ensemble also the mean latent standard deviation and each member's mean correlation of
      gene programs with the first (``"program_match"``).

    With ``n_models >= 2``, the latent space, factors, loadings and gene effects are the ensemble's averages, and
    ``obsm["X_{key_added}_sd"]`` holds the per-spot standard deviation over members of each latent coordinate.

    For a SpatialData, also a new table ``"{key_added}_factors"`` (X = factor proportions, variables
    ``"factor_0"``, ...) annotating the same shapes, for spatialdata-plot's ``render_shapes`` with
    ``table_name="inspire_factors"``. If the SpatialData is backed by a zarr store, the updated table and the factor
    table are written into it element by element; the other elements are not touched. Each element is written in
    full beside the store and then swapped in by one atomic rename, so a run killed at any point leaves the store
    readable with every element as it was before or after; the next run (or :func:`sd_inspire.io.read_zarr`) removes
    what it left. A table opened out of core keeps its matrices on disk (never rewritten). Rows are never removed
    from a store: if the default QC of :func:`sd_inspire.pp.preprocess` would drop spots, or the table lost rows
    after it was read, the function refuses before training and says what to do.

    Raises
    ------
    ValueError
        For ``n_factors`` outside 2..n_genes, spots without counts in the gene space.

    Examples
    --------
    >>> import sd_inspire as si
    >>> sdata = si.datasets.simulate(2, n_spots=200, n_genes=120)
    >>> si.tl.integrate(sdata, n_factors=5, max_steps=20, show_progress_bar=False)
    >>> sdata["table"].obsm["X_inspire"].shape
    (400, 32)
    """
    from sd_inspire.gr import spatial_neighbors
    from sd_inspire.model import InspireModel
    from sd_inspire.pp import preprocess

    table = get_table(data, table_key)
    _check_writable(data, table, key_added, table_key)  # before the work: a result that cannot be written is lost
    adata = table.copy() if copy else table
    slices = get_slices(adata, slice_key)
    n_models = check_integer(n_models, "n_models", minimum=1)
    refine_factors = check_integer(refine_factors, "refine_factors", minimum=0)
    for name, value, choices in (
        ("encoder", encoder, ENCODERS),
        ("features", features, FEATURES),
        ("structure", structure, STRUCTURES),
        ("alignment", alignment, ALIGNMENTS),
    ):
        check_choice(value, name, choices)  # before preprocessing and the graph, which can take minutes
    _check_model_dir(model_dir, n_models)
    if uncertainty is None:
        uncertainty = n_models > 1
    if len(slices.cat.categories) == 1:
        warnings.warn(
            "A single slice: nothing to align, the model trains without its alignment terms.",
            UserWarning,
            stacklevel=2,
        )
    into_store = not copy and is_spatialdata(data) and data.path is not None
    if (values_are_counts(adata) and Key.COUNTS not in adata.layers) or Key.HIGHLY_VARIABLE not in adata.var:
        if into_store:
            _check_qc_keeps_rows(data, adata, slice_key)
        logger.info("No preprocessing found: running `sd_inspire.pp.preprocess` with its defaults")
        preprocess(adata, slice_key=slice_key)
    if "spatial_connectivities" not in adata.obsp:
        logger.info("No spatial graph found: running `sd_inspire.gr.spatial_neighbors` with its defaults")
        spatial_neighbors(adata, slice_key=slice_key)

    if into_store:
        check_table_matches_store(data, adata, table_key)  # before training, not after it
    with timed(f"Integrating {adata.n_obs} spots in {len(slices.cat.categories)} slices"):
        members, first, converged = [], None, []
        for seed in _member_seeds(random_state, n_models):
            if n_models > 1:
                logger.info("Training ensemble member %d of %d", len(members) + 1, n_models)
            model = InspireModel(
                adata,
                slice_key=slice_key,
                n_factors=n_factors,
                n_latent=n_latent,
                encoder=encoder,
                n_hops=n_hops,
                features=features,
                structure=structure,
                cross_technology=cross_technology,
                random_state=seed,
                device=device,
            )
            model.train(
                max_steps=max_steps,
                batch_size=batch_size,
                loss_weights=loss_weights,
                alignment=alignment,
                checkpoint_dir=_member_folder(checkpoint_dir, len(members), n_models),
                checkpoint_every=checkpoint_every,
                show_progress_bar=show_progress_bar,
            )
            if model_dir is not None and model.world.is_main:
                model.save(_member_folder(model_dir, len(members), n_models))
            members.append(_outputs(model, uncertainty=uncertainty, refine=refine_factors))
            converged.append(model.convergence["converged"])
            first = first or model  # metadata, history and the process group come from the first member
        _write_results(adata, first, key_added, combine(members), refine=refine_factors)
        adata.uns[key_added]["converged"] = all(converged)
        if model_dir is not None:
            adata.uns[key_added]["model_dir"] = str(Path(model_dir).resolve())
        if not copy and is_spatialdata(data):
            # under torchrun every rank holds the same results; only rank 0 writes into a backing store
            add_factor_table(data, adata, key_added, table_key, write=first.world.is_main)
    return adata if copy else None


def _write_results(adata: AnnData, model: Any, key_added: str, ensemble: Ensemble, *, refine: int = 0) -> None:
    """Write the outputs of a trained model (``ensemble``: one member or several) and its metadata into ``adata``."""
    genes = pd.Index(model.genes)
    in_model = adata.var_names.isin(genes)
    loadings = np.zeros((adata.n_vars, ensemble.factors.shape[1]), dtype=np.float32)
    loadings[adata.var_names.get_indexer(genes)] = ensemble.loadings
    adata.obsm[f"X_{key_added}"] = ensemble.latent
    adata.obsm[f"{key_added}_factors"] = ensemble.factors
    adata.varm[f"{key_added}_loadings"] = loadings
    adata.var[f"{key_added}_gene"] = in_model
    meta, check = model.metadata, model.convergence
    adata.uns[key_added] = {
        "params": _plain(model.params),
        "train_params": _plain(model.train_params),
        "genes": np.asarray(model.genes, dtype=object),
        "slices": np.asarray(model.slice_names, dtype=object),
        "slice_gene_effects": ensemble.slice_effects,
        "history": {k: np.asarray(v, dtype=np.float32) for k, v in model.history.items()},
        "versions": meta["versions"],
        "random_state": meta["random_state"] if meta["random_state"] is not None else -1,
        "seed": meta["seed"],
        "n_models": len(ensemble.match) + 1,
        # the loss's relative change over the last tenth of the steps, and whether it levelled off (< 1% fall)
        "converged": bool(check["converged"]),
        "loss_change": check["loss_change"],
        "values": "counts" if model.values_are_counts else "normalised",
        "refine_factors": int(refine),
        # a query mapped onto a reference carries the reference's identity: results in the same space share it
        "reference_id": model.mapped_onto["reference_id"] if model.mapped_onto else model.reference_id,
    }
    if model.mapped_onto:
        adata.uns[key_added]["reference_slices"] = np.asarray(model.mapped_onto["slices"], dtype=object)
    # near-duplicate programs (one program split over two factors): flagged for the reader, see pl.loadings
    adata.uns[key_added]["redundant_factors"] = redundant_factors(ensemble.loadings, ensemble.factors)
    written = [
        ("obsm", f"X_{key_added}"),
        ("obsm", f"{key_added}_factors"),
        ("varm", f"{key_added}_loadings"),
        ("var", f"{key_added}_gene"),
        ("uns", key_added),
    ]
    # results of an earlier run under the same key that this run does not produce would no longer match
    adata.obsm.pop(f"{key_added}_factors_sd", None)
    adata.obsm.pop(f"X_{key_added}_sd", None)
    adata.obs.drop(columns=f"{key_added}_uncertainty", errors="ignore", inplace=True)
    names = model.slice_names
    codes = get_slices(adata, model.params["slice_key"]).cat.codes.to_numpy()
    summary: dict[str, Any] = {"slices": np.asarray(names, dtype=object)}
    if ensemble.factors_sd is not None:
        adata.obsm[f"{key_added}_factors_sd"] = ensemble.factors_sd
        spot = np.sqrt((ensemble.factors_sd.astype(np.float64) ** 2).mean(axis=1))
        adata.obs[f"{key_added}_uncertainty"] = spot.astype(np.float32)
        summary["mean_factor_sd"] = _per_slice_mean(spot, codes, len(names))
        if ensemble.dispersion is not None:
            summary["dispersion"] = np.asarray(ensemble.dispersion, dtype=np.float64)
        written += [("obsm", f"{key_added}_factors_sd"), ("obs", f"{key_added}_uncertainty")]
    if ensemble.latent_sd is not None:
        adata.obsm[f"X_{key_added}_sd"] = ensemble.latent_sd
        latent_spot = np.sqrt((ensemble.latent_sd.astype(np.float64) ** 2).mean(axis=1))
        summary["mean_latent_sd"] = _per_slice_mean(latent_spot, codes, len(names))
        summary["program_match"] = np.asarray(ensemble.match, dtype=np.float64)
        written.append(("obsm", f"X_{key_added}_sd"))
    if len(summary) > 1:
        adata.uns[key_added]["uncertainty"] = summary
    for where, key in written:
        log_added(where, key)


def _outputs(model: Any, *, uncertainty: bool = False, refine: int = 0) -> Member:
    """A trained model's outputs, its factors after ``refine`` EM passes on the counts.

    With ``uncertainty``, the posterior variance of its factors too.
    """
    with timed(f"Refining the factors: {refine} EM passes on each spot's counts") if refine else nullcontext():
        factors = model.get_factors(refine=refine)
    member = Member(model.get_latent(), factors, model.get_loadings(), model.get_slice_effects())
    if uncertainty:
        with timed("Estimating the uncertainty of the factors"):
            sd, member.dispersion = model.get_factor_sd(factors=member.factors)
        member.factors_var = sd.astype(np.float64) ** 2
    return member


def _per_slice_mean(values: np.ndarray, codes: np.ndarray, n_slices: int) -> np.ndarray:
    return np.array([values[codes == k].mean() if (codes == k).any() else np.nan for k in range(n_slices)])


def _check_model_dir(model_dir: str | Path | None, n_models: int) -> None:
    """Refuse a ``model_dir`` that is a file or already holds a model, before any training."""
    if model_dir is None:
        return
    if Path(model_dir).exists() and not Path(model_dir).is_dir():
        raise ValueError(f"`model_dir={str(model_dir)!r}` is a file, not a folder.")
    for member in range(n_models):
        folder = _member_folder(model_dir, member, n_models)
        if (folder / "model.pt").exists() or (folder / "model.json").exists():
            raise ValueError(
                f"`model_dir`: {str(folder)!r} already holds a model; choose another folder (or remove that one)."
            )


def _member_folder(checkpoint_dir: str | Path | None, member: int, n_models: int) -> Path | None:
    """Checkpoint folder of an ensemble member (the folder itself for a single model)."""
    if checkpoint_dir is None:
        return None
    return Path(checkpoint_dir) if n_models == 1 else Path(checkpoint_dir) / f"member{member}"


def _member_seeds(random_state: int | None, n_models: int) -> list[int | None]:
    """Seeds of the ensemble's members: ``random_state`` first, then seeds derived from it (fresh with ``None``)."""
    if random_state is None:
        return [None] * n_models
    extra = np.random.SeedSequence(int(random_state)).spawn(n_models - 1)
    return [random_state, *(int(c.generate_state(1)[0] % SEED_BOUND) for c in extra)]


def _check_writable(data: AnnData | SpatialData, table: AnnData, key_added: Any, table_key: str | None) -> None:
    """Refuse, before any training, what would make writing the results fail after it."""
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"`key_added` must be a non-empty string, got {key_added!r}.")
    if not table.var_names.is_unique:
        dup = table.var_names[table.var_names.duplicated()]
        raise ValueError(
            f"The table has {dup.size} duplicated gene names (e.g. {str(dup[0])!r}); results are written per gene. "
            "Make them unique first, e.g. `table.var_names_make_unique()`."
        )
    if is_spatialdata(data):
        from spatialdata._core.validation import check_valid_name

        name = f"{key_added}_factors"
        try:
            check_valid_name(name)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"`key_added={key_added!r}` gives the table name {name!r}, which spatialdata refuses: {e}"
            ) from None
        if name == table_name(data, table, table_key):
            raise ValueError(
                f"`key_added={key_added!r}` would write the factor table {name!r} over the table being integrated; "
                "choose another `key_added`."
            )


def _check_qc_keeps_rows(sdata: SpatialData, adata: AnnData, slice_key: str | None) -> None:
    """Refuse to preprocess a table of a zarr store when QC would remove spots: writing it back would delete them."""
    from sd_inspire.pp._preprocess import spots_failing_qc

    if n := spots_failing_qc(adata, slice_key):
        raise ValueError(
            f"Preprocessing with the default QC would remove {n} of {adata.n_obs} spots, and writing the results "
            f"into the store {str(sdata.path)!r} would delete their rows (raw counts included). Keep the store "
            "whole: preprocess first and write to a new store (`sd_inspire.pp.preprocess(sdata)`, then "
            "`sdata.write(new_path)`), or pass `copy=True` to get the integrated table without writing."
        )


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters with None replaced by the string 'None' (zarr/h5ad cannot store None in uns)."""
    return {k: (_plain(v) if isinstance(v, dict) else ("None" if v is None else v)) for k, v in params.items()}
