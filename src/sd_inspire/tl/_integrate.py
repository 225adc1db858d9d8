"""``tl.integrate``: train INSPIRE on a table and write the results where scverse tools find them."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from sd_inspire._constants import Key
from sd_inspire._docs import d
from sd_inspire._logging import log_added, logger, timed
from sd_inspire._utils import get_slices, get_table, is_spatialdata
from sd_inspire.io._zarr import check_rows_on_disk, has_lazy_matrices, write_table_parts

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData
    from spatialdata import SpatialData


@d.dedent
def integrate(
    data: AnnData | SpatialData,
    *,
    slice_key: str | None = Key.SLICE,
    table_key: str | None = None,
    n_factors: int = 20,
    n_latent: int = 32,
    encoder: Literal["lgcn", "gat"] = "lgcn",
    n_hops: int = 2,
    max_steps: int | None = None,
    batch_size: int = 1024,
    cross_technology: bool | None = None,
    loss_weights: dict[str, float] | None = None,
    device: str = "auto",
    checkpoint_dir: str | Path | None = None,
    show_progress_bar: bool = True,
    random_state: int | None = 0,
    key_added: str = "inspire",
    copy: bool = False,
) -> AnnData | None:
    """Integrate slices into one latent space and one non-negative factorisation with INSPIRE.

    A thin wrapper around :class:`sd_inspire.model.InspireModel`: it sets the model up, trains it and writes the
    results. Steps that have not been run are run with their defaults and logged: :func:`sd_inspire.pp.preprocess`
    when ``layers["counts"]`` or ``var["highly_variable"]`` is missing, :func:`sd_inspire.gr.spatial_neighbors` when
    the graph is missing. With a single slice the model trains without its adversarial term (with a warning).

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
        Propagation hops of the ``"lgcn"`` features.
    max_steps
        Training steps; by default from the size of the largest slice (600 to 3000).
    batch_size
        Spots per minibatch, drawn equally from every slice.
    cross_technology
        Slice-aware factors; by default when ``obs["technology"]`` holds several technologies.
    loss_weights
        Weights of the objective's terms, see :meth:`sd_inspire.model.InspireModel.train`.
    device
        ``"auto"`` uses a GPU when present. Launched with ``torchrun --nproc_per_node N script.py``, the same call
        trains data-parallel over the N processes (gloo on CPU, nccl on GPU): each rank draws its share of every
        minibatch from its own shard of each slice, gradients are averaged, every rank ends with the same model and
        only rank 0 writes into a backing store.
    checkpoint_dir
        Folder for training checkpoints; a run interrupted midway resumes from it (one file per rank when
        data-parallel).
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
      genes, multiplicative), ``history`` (loss terms per step), ``versions``, ``random_state``.

    For a SpatialData, also a new table ``"{key_added}_factors"`` (X = factor proportions, variables
    ``"factor_0"``, ...) annotating the same shapes, for spatialdata-plot's ``render_shapes`` with
    ``table_name="inspire_factors"``. If the SpatialData is backed by a zarr store, the updated table and the factor
    table are written into it element by element; the other elements are not touched.

    Raises
    ------
    ValueError
        For ``n_factors`` outside 2..n_genes, non-integer counts, spots without counts in the gene space.

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
    adata = table.copy() if copy else table
    slices = get_slices(adata, slice_key)
    if len(slices.cat.categories) == 1:
        warnings.warn(
            "A single slice: nothing to align, the model trains without its adversarial term.",
            UserWarning,
            stacklevel=2,
        )
    if Key.COUNTS not in adata.layers or Key.HIGHLY_VARIABLE not in adata.var:
        logger.info("No preprocessing found: running `sd_inspire.pp.preprocess` with its defaults")
        preprocess(adata, slice_key=slice_key)
    if "spatial_connectivities" not in adata.obsp:
        logger.info("No spatial graph found: running `sd_inspire.gr.spatial_neighbors` with its defaults")
        spatial_neighbors(adata, slice_key=slice_key)

    if not copy and is_spatialdata(data) and data.path is not None and has_lazy_matrices(adata):
        check_rows_on_disk(data, _table_name(data, adata, table_key))  # before training, not after it
    with timed(f"Integrating {adata.n_obs} spots in {len(slices.cat.categories)} slices"):
        model = InspireModel(
            adata,
            slice_key=slice_key,
            n_factors=n_factors,
            n_latent=n_latent,
            encoder=encoder,
            n_hops=n_hops,
            cross_technology=cross_technology,
            random_state=random_state,
            device=device,
        )
        model.train(
            max_steps=max_steps,
            batch_size=batch_size,
            loss_weights=loss_weights,
            checkpoint_dir=checkpoint_dir,
            show_progress_bar=show_progress_bar,
        )
        write_results(adata, model, key_added)
        if not copy and is_spatialdata(data):
            # under torchrun every rank holds the same results; only rank 0 writes into a backing store
            _add_factor_table(data, adata, key_added, table_key, write=model.world.is_main)
    return adata if copy else None


def write_results(adata: AnnData, model: Any, key_added: str) -> None:
    """Write a trained model's latent space, factors, loadings and metadata into ``adata``."""
    latent, factors = model.get_latent(), model.get_factors()
    genes = pd.Index(model.data.genes)
    in_model = adata.var_names.isin(genes)
    loadings = np.zeros((adata.n_vars, factors.shape[1]), dtype=np.float32)
    loadings[adata.var_names.get_indexer(genes)] = model.get_loadings()
    adata.obsm[f"X_{key_added}"] = latent
    adata.obsm[f"{key_added}_factors"] = factors
    adata.varm[f"{key_added}_loadings"] = loadings
    adata.var[f"{key_added}_gene"] = in_model
    meta = model._metadata()
    adata.uns[key_added] = {
        "params": _plain(model.params),
        "train_params": _plain(model.train_params),
        "genes": np.asarray(model.data.genes, dtype=object),
        "slices": np.asarray(model.data.slice_names, dtype=object),
        "slice_gene_effects": model.get_slice_effects(),
        "history": {k: np.asarray(v, dtype=np.float32) for k, v in model.history.items()},
        "versions": meta["versions"],
        "random_state": meta["random_state"] if meta["random_state"] is not None else -1,
        "seed": meta["seed"],
    }
    for where, key in (
        ("obsm", f"X_{key_added}"),
        ("obsm", f"{key_added}_factors"),
        ("varm", f"{key_added}_loadings"),
        ("var", f"{key_added}_gene"),
        ("uns", key_added),
    ):
        log_added(where, key)


def _table_name(sdata: SpatialData, table: AnnData, table_key: str | None) -> str:
    return table_key or next(k for k, v in sdata.tables.items() if v is table)


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters with None replaced by the string 'None' (zarr/h5ad cannot store None in uns)."""
    return {k: (_plain(v) if isinstance(v, dict) else ("None" if v is None else v)) for k, v in params.items()}


def _add_factor_table(
    sdata: SpatialData, adata: AnnData, key_added: str, table_key: str | None, *, write: bool = True
) -> None:
    """Add table ``"{key_added}_factors"`` annotating the same shapes; write it (and the table) into a backing store."""
    from anndata import AnnData
    from spatialdata.models import TableModel

    attrs = adata.uns.get(TableModel.ATTRS_KEY)
    factors = adata.obsm[f"{key_added}_factors"]
    name = f"{key_added}_factors"
    obs_cols = [c for c in ((attrs or {}).get("region_key"), (attrs or {}).get("instance_key")) if c]
    obs = adata.obs[[c for c in [*obs_cols, Key.SLICE] if c in adata.obs]].copy()
    table = AnnData(X=factors.copy(), obs=obs, var=pd.DataFrame(index=[f"factor_{k}" for k in range(factors.shape[1])]))
    if attrs is not None:
        table = TableModel.parse(
            table, region=attrs["region"], region_key=attrs["region_key"], instance_key=attrs["instance_key"]
        )
    else:
        table = TableModel.parse(table)
    if name in sdata.tables:
        del sdata.tables[name]
    sdata.tables[name] = table
    log_added("tables", name)
    if sdata.path is not None and write:
        main = _table_name(sdata, adata, table_key)
        _write_into_store(sdata, [name, main])


def _write_into_store(sdata: SpatialData, names: list[str]) -> None:
    """Write elements into the backing zarr store; an element already on disk is replaced via a backup copy.

    A table opened out of core (:func:`sd_inspire.io.read_zarr`) reads its matrices from the store: only its
    in-memory parts are replaced there, and the matrices on disk are left as they are.
    """
    on_disk = {p.split("/", 1)[1] for p in sdata.elements_paths_on_disk()}
    for name in names:
        if name not in on_disk:
            sdata.write_element(name)
            continue
        if has_lazy_matrices(sdata.tables[name]):
            write_table_parts(sdata, name)
            continue
        backup = f"{name}_sd_inspire_backup"
        sdata.tables[backup] = sdata.tables[name]
        sdata.write_element(backup)  # a complete copy exists before the old element is removed
        sdata.delete_element_from_disk(name)
        sdata.write_element(name)
        sdata.delete_element_from_disk(backup)
        del sdata.tables[backup]
    logger.info("Wrote %s into %s", names, sdata.path)
