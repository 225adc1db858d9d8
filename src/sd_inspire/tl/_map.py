"""``tl.map_query``: put new slices on a trained reference's latent space and factor axes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sd_inspire._constants import Key
from sd_inspire._constants._constants import REFINE_PASSES
from sd_inspire._docs import d
from sd_inspire._logging import logger, timed
from sd_inspire._utils import get_slices, get_table, is_spatialdata, values_are_counts
from sd_inspire._validate import check_integer
from sd_inspire.io._write import add_factor_table, check_table_matches_store
from sd_inspire.tl._integrate import (
    _check_qc_keeps_rows,
    _check_writable,
    _outputs,
    _write_results,
    combine,
)

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData
    from spatialdata import SpatialData

    from sd_inspire.model import InspireModel


@d.dedent
def map_query(
    data: AnnData | SpatialData,
    model: InspireModel | str | Path,
    *,
    slice_key: str | None = Key.SLICE,
    table_key: str | None = None,
    max_steps: int | None = None,
    batch_size: int = 1024,
    uncertainty: bool = False,
    refine_factors: int = REFINE_PASSES,
    match_input_scale: bool = True,
    device: str = "auto",
    show_progress_bar: bool = True,
    random_state: int | None = 0,
    key_added: str = "inspire",
    copy: bool = False,
) -> AnnData | None:
    """Map new slices onto a trained reference: the same latent space, factor axes and gene programs.

    A lab that integrated its slices keeps the model (``tl.integrate(model_dir=...)``) and maps the slices it
    sequences later onto it, instead of integrating everything again. The reference's encoder, factor head and gene
    programs stay frozen; only what belongs to the new slices is learnt (their slice embeddings and gene effects,
    and for a slice-aware reference their factor offsets; see
    :meth:`sd_inspire.model.InspireModel.load_query_data`), which takes seconds to a minute. The query may come
    from another technology or have a smaller panel: genes of the reference it lacks are masked, genes the
    reference never saw are left out. Preprocessing and the spatial graph run as in :func:`sd_inspire.tl.integrate`
    when missing.

    The results are written under the same keys as :func:`sd_inspire.tl.integrate`, in the reference's axes, so a
    query can be compared with the reference (and other queries) directly, e.g. by
    :func:`sd_inspire.tl.domains` on both or by label transfer.

    Parameters
    ----------
    %(data)s Raw counts of one or more new slices.
    model
        The reference: a trained :class:`~sd_inspire.model.InspireModel`, or a folder written by
        ``tl.integrate(model_dir=...)`` or :meth:`~sd_inspire.model.InspireModel.save`.
    %(slice_key)s ``None`` for a single slice.
    %(table_key)s
    max_steps
        Training steps of the query's parameters; ``None``: from the query's size (100 to 1,000).
    batch_size
        Spots per minibatch.
    uncertainty
        Also write the per-spot standard deviation of the factor proportions (as :func:`sd_inspire.tl.integrate`).
    refine_factors
        EM passes that move each query spot's factor proportions towards its own counts, the reference's programs
        and the query's gene effects fixed (as :func:`sd_inspire.tl.integrate`); 0 keeps the factor head's output.
    match_input_scale
        Rescale each column of a query slice's input to the spread it had in the reference before the frozen
        encoder sees it (see :meth:`~sd_inspire.model.InspireModel.load_query_data`): needed when the query comes
        from another technology or panel.
    device
        ``"auto"`` uses a GPU when present.
    show_progress_bar
        Show a progress bar.
    %(random_state)s
    key_added
        Stem of the keys written.
    %(copy)s A SpatialData is then left untouched.

    Returns
    -------
    %(copy_returns)s, with the keys of :func:`sd_inspire.tl.integrate` (``obsm["X_{key_added}"]``,
    ``obsm["{key_added}_factors"]``, ``varm["{key_added}_loadings"]`` (the reference's programs), ...); in
    ``uns[key_added]``, ``reference_id`` is the reference's fingerprint
    (:attr:`~sd_inspire.model.InspireModel.reference_id`, the same as in the reference's own results) and
    ``reference_slices`` its slices. For a SpatialData, also the factor table, and the results are written into a
    backing store as :func:`sd_inspire.tl.integrate` writes them.

    Raises
    ------
    ValueError
        If the query shares too few genes with the reference, or the reference cannot serve as one (untrained,
        saved by an older version).

    Examples
    --------
    >>> import tempfile, sd_inspire as si
    >>> adata = si.datasets.simulate(3, n_spots=200, n_genes=120, output="anndata")
    >>> reference, query = adata[adata.obs["slice"] != "slice2"].copy(), adata[adata.obs["slice"] == "slice2"].copy()
    >>> folder = tempfile.mkdtemp()
    >>> si.tl.integrate(reference, n_factors=5, max_steps=20, model_dir=folder, show_progress_bar=False)
    >>> si.tl.map_query(query, folder, max_steps=20, show_progress_bar=False)
    >>> query.obsm["X_inspire"].shape, query.uns["inspire"]["reference_id"] == reference.uns["inspire"]["reference_id"]
    ((200, 32), True)
    """
    from sd_inspire.gr import spatial_neighbors
    from sd_inspire.model import InspireModel
    from sd_inspire.pp import preprocess

    table = get_table(data, table_key)
    _check_writable(data, table, key_added, table_key)
    refine_factors = check_integer(refine_factors, "refine_factors", minimum=0)
    if not isinstance(model, InspireModel):
        model = InspireModel.load(model, device=device)  # a bad folder fails here, before any work
    adata = table.copy() if copy else table
    get_slices(adata, slice_key)
    into_store = not copy and is_spatialdata(data) and data.path is not None
    if values_are_counts(adata) and Key.COUNTS not in adata.layers:
        if into_store:
            _check_qc_keeps_rows(data, adata, slice_key)
        logger.info("No preprocessing found: running `sd_inspire.pp.preprocess` with its defaults")
        preprocess(adata, slice_key=slice_key)
    if model.params["connectivity_key"] not in adata.obsp:
        logger.info("No spatial graph found: running `sd_inspire.gr.spatial_neighbors` with its defaults")
        spatial_neighbors(adata, slice_key=slice_key)
    if into_store:
        check_table_matches_store(data, adata, table_key)  # before the work, not after it
    with timed(f"Mapping {adata.n_obs} spots onto reference {model.reference_id}"):
        query = InspireModel.load_query_data(
            adata,
            model,
            slice_key=slice_key,
            random_state=random_state,
            device=device,
            match_input_scale=match_input_scale,
        )
        query.train(max_steps=max_steps, batch_size=batch_size, show_progress_bar=show_progress_bar)
        member = _outputs(query, uncertainty=uncertainty, refine=refine_factors)
        _write_results(adata, query, key_added, combine([member]), refine=refine_factors)
        if not copy and is_spatialdata(data):
            add_factor_table(data, adata, key_added, table_key)
    return adata if copy else None
