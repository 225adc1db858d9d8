"""``tl.transfer_labels``: annotations of a reference carried to a query through the shared latent space."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sd_inspire._chunks import DEFAULT_CHUNK_SIZE
from sd_inspire._docs import d
from sd_inspire._logging import log_added, logger
from sd_inspire._utils import get_representation, get_table, is_spatialdata, maybe_copy
from sd_inspire._validate import check_integer, check_number
from sd_inspire.io._write import check_table_matches_store, write_table_into_store
from sd_inspire.tl._impute import latent_weights
from sd_inspire.tl.metrics import _missing

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

#: Category of spots whose confidence is below ``min_confidence``.
UNASSIGNED = "unassigned"


@d.dedent
def transfer_labels(
    data: AnnData | SpatialData,
    reference: AnnData | SpatialData,
    *,
    key: str,
    key_added: str | None = None,
    use_rep: str = "X_inspire",
    n_neighbors: int = 15,
    min_confidence: float | None = None,
    results_key: str = "inspire",
    table_key: str | None = None,
    reference_table_key: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    copy: bool = False,
) -> AnnData | None:
    """Transfer a reference's annotation (domains, cell types) to a query through the shared latent space.

    Each query spot takes the label that its ``n_neighbors`` nearest annotated reference spots in ``use_rep`` vote
    for, each vote weighted by a Gaussian kernel of the distance (its width the spot's median distance to those
    neighbours). The confidence of a spot is the weighted share of the winning label, between ``1 /
    n_labels`` and 1. The query must be in the reference's latent space: mapped onto the reference's model with
    :func:`sd_inspire.tl.map_query`, or integrated together with it; when both carry a model fingerprint
    (``uns[results_key]["reference_id"]``), the fingerprints must agree.

    Parameters
    ----------
    %(data)s The query.
    reference
        The annotated reference (AnnData, or a SpatialData and ``reference_table_key``).
    key
        Column of the reference's ``obs`` with the annotation. Spots without a label (``NaN``) do not vote.
    key_added
        Column of the query's ``obs`` written; ``None``: ``f"{key}_transferred"``.
    use_rep
        The shared latent space, in both ``obsm``.
    n_neighbors
        Reference spots voting for each query spot.
    min_confidence
        Below this confidence a spot is ``"unassigned"`` (a category of its own). ``None`` (default): every spot
        gets a label.
    results_key
        Stem of the keys of :func:`sd_inspire.tl.integrate` / :func:`sd_inspire.tl.map_query` whose
        ``reference_id`` is compared.
    %(table_key)s
    reference_table_key
        Table of a SpatialData reference.
    chunk_size
        Query spots searched at once.
    %(copy)s

    Returns
    -------
    %(copy_returns)s, with

    - ``obs[key_added]``: the transferred labels (categorical, the reference's categories, and ``"unassigned"``
      with ``min_confidence``);
    - ``obs[f"{key_added}_confidence"]``: the weighted share of the winning label;
    - ``uns[key_added]``: the parameters and the number of spots per label.

    Raises
    ------
    KeyError
        If ``key`` is not a column of the reference's ``obs`` or ``use_rep`` is missing.
    ValueError
        If the reference has no labelled spot, the two were mapped onto different models, the latent spaces differ
        in width, or a parameter is out of range.

    Examples
    --------
    >>> import sd_inspire as si
    >>> adata = si.datasets.simulate(3, n_spots=200, n_genes=120, output="anndata")
    >>> si.tl.integrate(adata, n_factors=5, max_steps=20, show_progress_bar=False)
    >>> reference, query = adata[adata.obs["slice"] != "slice2"].copy(), adata[adata.obs["slice"] == "slice2"].copy()
    >>> si.tl.transfer_labels(query, reference, key="domain")
    >>> query.obs["domain_transferred"].dtype.name
    'category'
    """
    n_neighbors = check_integer(n_neighbors, "n_neighbors", minimum=1)
    chunk_size = check_integer(chunk_size, "chunk_size", minimum=1)
    if min_confidence is not None:
        min_confidence = check_number(min_confidence, "min_confidence", minimum=0.0)
        if min_confidence > 1:
            raise ValueError(f"`min_confidence` must be at most 1, got {min_confidence}.")
    ref = get_table(reference, reference_table_key)
    adata = maybe_copy(get_table(data, table_key), copy)
    if not copy:
        check_table_matches_store(data, adata, table_key)  # before the work, not after it
    key_added = key_added or f"{key}_transferred"
    if key not in ref.obs:
        raise KeyError(f"No column {key!r} in the reference's `obs` (columns: {list(ref.obs.columns)}).")
    ids = [(t.uns.get(results_key) or {}).get("reference_id") for t in (adata, ref)]
    if ids[0] is not None and ids[1] is not None and ids[0] != ids[1]:
        raise ValueError(
            f"The query was mapped onto model {ids[0]} but the reference's results come from model {ids[1]} "
            f"(`uns[{results_key!r}]['reference_id']`): their latent spaces are not the same. Map the query onto "
            "the reference's model with `sd_inspire.tl.map_query`."
        )
    query_rep, ref_rep = get_representation(adata, use_rep), get_representation(ref, use_rep)
    if query_rep.shape[1] != ref_rep.shape[1]:
        raise ValueError(
            f"`obsm[{use_rep!r}]` has {query_rep.shape[1]} columns in the query but {ref_rep.shape[1]} in the "
            "reference: not the same latent space."
        )
    labels = ref.obs[key]
    labelled = ~_missing(labels.to_numpy(dtype=object))
    if not labelled.any():
        raise ValueError(f"No spot of the reference has a label in `obs[{key!r}]`.")
    values = labels[labelled].astype(str) if not isinstance(labels.dtype, pd.CategoricalDtype) else labels[labelled]
    categories = pd.Categorical(values)
    names = [str(c) for c in categories.categories]
    onehot = np.zeros((int(labelled.sum()), len(names)), dtype=np.float64)
    onehot[np.arange(onehot.shape[0]), categories.codes] = 1.0

    weights = latent_weights(query_rep, ref_rep[labelled], n_neighbors, chunk_size)
    votes = np.asarray(weights @ onehot)
    best = votes.argmax(axis=1)
    confidence = votes[np.arange(votes.shape[0]), best]
    predicted = np.asarray(names, dtype=object)[best]
    all_names = names
    if min_confidence is not None:
        predicted[confidence < min_confidence] = UNASSIGNED
        all_names = [*names, UNASSIGNED] if UNASSIGNED not in names else names
    adata.obs[key_added] = pd.Categorical(predicted, categories=all_names)
    adata.obs[f"{key_added}_confidence"] = confidence.astype(np.float32)
    counts = adata.obs[key_added].value_counts(sort=False)
    adata.uns[key_added] = {
        "key": key,
        "use_rep": use_rep,
        "n_neighbors": n_neighbors,
        "min_confidence": "None" if min_confidence is None else float(min_confidence),
        "n_spots": {str(k): int(v) for k, v in counts.items()},
    }
    logger.info("Transferred %r to %d spots: %s", key, adata.n_obs, dict(counts))
    log_added("obs", key_added)
    log_added("obs", f"{key_added}_confidence")
    log_added("uns", key_added)
    if not copy and is_spatialdata(data):
        write_table_into_store(data, adata, table_key)  # a store-backed SpatialData keeps the result
    return adata if copy else None
