"""``tl.align``: register slices to each other from the integrated latent space and stack them in 3D."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from sd_inspire._constants import Key
from sd_inspire._docs import d
from sd_inspire._logging import log_added, logger, timed
from sd_inspire._utils import (
    get_representation,
    get_slices,
    get_spatial,
    get_table,
    is_spatialdata,
    maybe_copy,
    median_neighbour_distance,
    random_generator,
)
from sd_inspire._validate import check_choice, check_integer
from sd_inspire.io._write import write_table_into_store
from sd_inspire.tl._registration_metrics import rotation_angle

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

_MODELS = ("rigid", "similarity", "affine")
#: Pairs of points that determine a transform of each model.
_MIN_SAMPLE = {"rigid": 2, "similarity": 2, "affine": 3}
#: Fewest matched pairs (and inliers) with which a pair of slices is registered.
_MIN_MATCHES = 10
#: Minimal-sample hypotheses drawn by the robust estimator, and matched pairs each hypothesis is scored on.
_N_TRIALS = 1000
_N_SCORE = 2000
#: Hypotheses scored at once (memory: this many x ``_N_SCORE`` mapped points).
_HYPOTHESIS_BLOCK = 128
#: Inliers lie within this many noise scales of their match (2D Gaussian noise: 98.9% of true matches).
_INLIER_SCALES = 3.0
#: Median of the length of 2D standard Gaussian noise (Rayleigh distribution): robust scale = median / this.
_RAYLEIGH_MEDIAN = float(np.sqrt(2.0 * np.log(2.0)))
_MAX_REWEIGHT = 50
#: Refinement stops when no spot moves by more than this fraction of the spot spacing.
_REFINE_TOL = 0.01
#: A shapes element is in the frame of ``obsm["spatial"]`` when its centroids land within this fraction of the
#: spot spacing (median) of the coordinates stored for it.
_FRAME_TOL = 0.5
#: Registration fails when matches stay as far apart after the fit as this fraction of the spread of the slice.
_MAX_RELATIVE_RESIDUAL = 0.9


@d.dedent
def align(
    data: AnnData | SpatialData,
    *,
    slice_key: str = Key.SLICE,
    table_key: str | None = None,
    use_rep: str = "X_inspire",
    spatial_key: str = Key.SPATIAL,
    model: Literal["rigid", "similarity", "affine"] = "rigid",
    reference: str | None = None,
    order: Sequence[str] | None = None,
    n_neighbors: int = 10,
    refine: int = 10,
    spacing: float | Sequence[float] | None = None,
    random_state: int | np.random.Generator | None = 0,
    key_added: str = "spatial_aligned",
    coordinate_system: str = "aligned",
    show_progress_bar: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Register the slices to each other through the integrated latent space and stack them in 3D.

    Slices are chained in ``order``: each slice is registered to its neighbour in the order on the side of the
    ``reference`` slice, and the pairwise transforms are composed so that every slice lands in the reference
    slice's frame. For each pair of consecutive slices (moving -> fixed):

    1. **Matches.** Spots are matched by mutual nearest neighbours in ``obsm[use_rep]`` (a spot of one slice and a
       spot of the other are matched when each is among the other's ``n_neighbors`` nearest neighbours), with
       sparse k-nearest-neighbour queries: memory grows linearly with the number of spots.
    2. **Robust fit.** Rigid hypotheses through random pairs of matches are scored by the median of their squared
       residuals (least median of squares, robust to up to half of the matches being wrong); the model is then
       refitted on the inliers (matches within three robust noise scales of their partner) until the inliers no
       longer change. Rigid fits are least squares (Kabsch, no reflection). Similarity and affine fits take the
       rotation from Kabsch and the scale (similarity) or linear map (affine) that matches the spread (second
       moments) of the matched coordinates of one slice to the other's: least squares would shrink the slice,
       since a spot matched to an alike spot elsewhere in the same layer says nothing about its position along the
       layer. For exact matches both agree. Wrong matches (alike but distant places) become outliers that do not
       bias the fit.
    3. **Refinement** (up to ``refine`` rounds, ICP-like). Spots are re-matched one to one, by mutual nearest
       neighbours in a joint space of the aligned coordinates (scaled by the current residual scale, never below the spot
       spacing) and the latent representation (scaled by the typical latent distance of the inlier matches), and
       the model is refitted robustly from the current transform; rounds stop early once no spot moves by more
       than 1%% of the spot spacing. Proximity after the first fit resolves matches that the latent space alone
       leaves ambiguous (spots anywhere along the same layer), which sharpens rotations and translations. One-to-one
       matches keep spots at the edge of the overlap of two slices from pulling them towards each other's edges.

    The reference slice keeps its coordinates. Slices are then stacked along z at ``spacing`` intervals in
    ``order``. For a SpatialData, every slice's shapes element (the element its table rows annotate) gets a
    transformation to the new coordinate system ``coordinate_system``, composed with its transformation to the
    frame of ``obsm[spatial_key]``; the other elements in that frame (such as the slice's tissue images) get it
    too, so that spatialdata-plot shows all slices registered in ``coordinate_system``.

    Parameters
    ----------
    %(data)s
    %(slice_key)s
    %(table_key)s
    use_rep
        Key of :attr:`~anndata.AnnData.obsm` with the integrated representation, as written by
        :func:`sd_inspire.tl.integrate`.
    spatial_key
        Key of :attr:`~anndata.AnnData.obsm` with each slice's coordinates in its own frame (the first two
        columns are used).
    model
        Transform of one slice onto its neighbour: ``"rigid"`` (rotation and translation), ``"similarity"``
        (rigid with one scale factor, for sections imaged at different magnifications) or ``"affine"`` (any 2D
        affine map: also shear and anisotropic scaling, e.g. tissue stretched while sectioning).
    reference
        Slice whose frame all slices are registered to. By default the middle slice of ``order`` (the
        ``(n - 1) // 2``-th, 0-based), which keeps chains of pairwise transforms, and the errors they accumulate,
        short on both sides.
    order
        Order of the slices in the stack (e.g. along the sectioning axis); consecutive slices are registered to
        each other. Every slice exactly once. By default the order of the categories of ``obs[slice_key]``.
    n_neighbors
        Neighbours searched in the latent space for mutual nearest neighbours. More give more (and noisier)
        matches; the robust fit discards the wrong ones.
    refine
        Maximal rounds of the refinement; ``0`` keeps the robust fit of the latent matches alone.
    spacing
        Distance between consecutive slices along z, in the units of the coordinates: one number, or one per
        consecutive pair of ``order`` (``n_slices - 1`` numbers). By default the median distance between
        neighbouring spots of the reference slice, so that the stack has about the same resolution along z as
        within a slice.
    %(random_state)s
    key_added
        Aligned coordinates go to ``obsm[key_added]``, transforms and statistics to ``uns[key_added]``.
    coordinate_system
        Name of the coordinate system added to a SpatialData.
    show_progress_bar
        Show a progress bar over the slices registered.
    %(copy)s A SpatialData is then left untouched.

    Returns
    -------
    %(copy_returns)s, with

    - ``obsm[key_added]``: n_obs x 3 array of aligned coordinates: x and y in the reference slice's frame, z the
      position of the slice in the stack (the first slice of ``order`` at 0);
    - ``uns[key_added]``:

      - ``"transforms"``: slice -> 3 x 3 homogeneous matrix mapping the slice's ``obsm[spatial_key]`` coordinates
        ``(x, y, 1)`` into the reference frame (identity for the reference);
      - ``"pair_transforms"``: slice -> 3 x 3 matrix onto its neighbour towards the reference (reference left out);
      - ``"pairs"``: DataFrame, one row per registered pair: ``moving``, ``fixed``, ``n_mutual`` (latent mutual
        nearest neighbours), ``n_inliers_latent`` and ``residual_latent`` (inliers of the robust fit of the latent
        matches and the root mean square distance between their aligned coordinates), ``relative_residual``
        (``residual_latent`` over the distance expected between unrelated spots of the two slices: about 1 when
        the matches carry no spatial information, well below 1 for a good registration), ``n_matches``,
        ``n_inliers`` and ``residual`` (the same for the final fit, after refinement), ``refine_rounds``,
        ``rotation`` (degrees) and ``scale`` (square root of the determinant) of the pairwise transform;
      - ``"z"``: slice -> z coordinate;
      - ``"params"``: ``model``, ``reference``, ``order``, ``n_neighbors``, ``refine``, ``spacing`` (the gaps
        used), ``use_rep``, ``spatial_key``, ``slice_key``, ``coordinate_system``, ``random_state`` (``-1`` for
        ``None``).

    For a SpatialData (without ``copy``), a transformation to ``coordinate_system`` on each slice's shapes element
    and on the other elements in the same frame. If the SpatialData is backed by a zarr store, the table and the
    new transformations are written into it.

    Raises
    ------
    KeyError
        If ``obsm[use_rep]`` (run :func:`sd_inspire.tl.integrate` first), ``obsm[spatial_key]`` or
        ``obs[slice_key]`` is missing.
    ValueError
        If there are fewer than two slices; ``model``, ``reference`` or ``order`` names something unknown;
        ``n_neighbors``, ``refine`` or ``spacing`` are out of range; or two consecutive slices cannot be registered
        (the message names both): fewer than 10 mutual neighbours or inliers, or matches that do not agree on a
        transform (``relative_residual`` of 0.9 or more, as for unrelated slices).

    Examples
    --------
    Two simulated slices with a latent representation that varies smoothly over the tissue; the second slice is
    then turned by 30 degrees and shifted:

    >>> import numpy as np
    >>> import sd_inspire as si
    >>> from sd_inspire.tl import align
    >>> adata = si.datasets.simulate(2, n_spots=400, n_genes=100, output="anndata")
    >>> x, y = adata.obsm["spatial"].T
    >>> adata.obsm["X_inspire"] = np.column_stack([np.sin(x / 400), np.cos(y / 300), np.sin((x + y) / 500)])
    >>> angle = np.deg2rad(30)
    >>> turned = np.column_stack([np.cos(angle) * x - np.sin(angle) * y + 500, np.sin(angle) * x + np.cos(angle) * y])
    >>> second = (adata.obs["slice"] == "slice1").to_numpy()
    >>> adata.obsm["spatial"][second] = turned[second]
    >>> align(adata, reference="slice0", spacing=10)
    >>> adata.uns["spatial_aligned"]["pairs"][["moving", "fixed"]].values.tolist()
    [['slice1', 'slice0']]
    >>> round(float(adata.uns["spatial_aligned"]["pairs"]["rotation"].iloc[0]))
    -30
    >>> adata.obsm["spatial_aligned"].shape
    (800, 3)
    """
    check_choice(model, "model", _MODELS)
    n_neighbors = check_integer(n_neighbors, "n_neighbors", minimum=1)
    refine = check_integer(refine, "refine", minimum=0)
    rng = random_generator(random_state)
    adata = maybe_copy(get_table(data, table_key), copy)
    slices = get_slices(adata, slice_key)
    order, reference = _order_and_reference(slices, slice_key, order, reference)
    latent = get_representation(adata, use_rep)
    coords = get_spatial(adata, spatial_key, slices)[:, :2]
    labels = slices.astype(str).to_numpy()
    rows = {s: np.flatnonzero(labels == s) for s in order}
    gaps = _gaps(spacing, order, coords[rows[reference]])

    with timed(f"Aligning {len(order)} slices to {reference!r} ({model}) from `obsm[{use_rep!r}]`"):
        pair_transforms, records = _register_chain(
            order,
            reference,
            coords,
            latent,
            rows,
            model=model,
            n_neighbors=n_neighbors,
            refine=refine,
            rng=rng,
            show_progress_bar=show_progress_bar,
        )
        transforms = _to_reference(order, reference, pair_transforms)
        z = dict(zip(order, np.concatenate([[0.0], np.cumsum(gaps)]).tolist(), strict=True))
        aligned = np.empty((adata.n_obs, 3), dtype=np.float64)
        for s in order:
            aligned[rows[s], :2] = _apply(transforms[s], coords[rows[s]])
            aligned[rows[s], 2] = z[s]
        adata.obsm[key_added] = aligned
        adata.uns[key_added] = {
            "transforms": transforms,
            "pair_transforms": {s: pair_transforms[s] for s in order if s in pair_transforms},
            "pairs": pd.DataFrame(records),
            "z": z,
            "params": {
                "model": model,
                "reference": reference,
                "order": np.asarray(order, dtype=object),
                "n_neighbors": n_neighbors,
                "refine": refine,
                "spacing": np.asarray(gaps, dtype=np.float64),
                "use_rep": use_rep,
                "spatial_key": spatial_key,
                "slice_key": slice_key,
                "coordinate_system": coordinate_system,
                "random_state": int(random_state) if isinstance(random_state, int | np.integer) else -1,
            },
        }
        log_added("obsm", key_added)
        log_added("uns", key_added)
        if not copy and is_spatialdata(data):
            updated = _set_transformations(data, adata, labels, transforms, coords, coordinate_system)
            if updated:
                logger.info("Adding coordinate system %r to elements %s", coordinate_system, updated)
            write_table_into_store(data, adata, table_key, transformations=updated)
    return adata if copy else None


def _order_and_reference(
    slices: pd.Series, slice_key: str, order: Sequence[str] | None, reference: str | None
) -> tuple[list[str], str]:
    """The slices in stacking order and the reference slice (by default the middle one), checked."""
    names = [str(c) for c in slices.cat.categories]
    if len(names) < 2:
        raise ValueError(
            f"Alignment needs at least two slices; `adata.obs[{slice_key!r}]` holds only {names}. Combine slices "
            "with `sd_inspire.pp.concat`, or pass the `slice_key=` of the column that tells them apart."
        )
    order = _check_order(order, names)
    if reference is None:
        reference = order[(len(order) - 1) // 2]
    elif str(reference) not in order:
        raise ValueError(f"`reference` {reference!r} is not a slice; the slices are {order}.")
    return order, str(reference)


def _register_chain(
    order: list[str],
    reference: str,
    coords: np.ndarray,
    latent: np.ndarray,
    rows: dict[str, np.ndarray],
    *,
    model: str,
    n_neighbors: int,
    refine: int,
    rng: np.random.Generator,
    show_progress_bar: bool,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Register every slice but the reference onto its neighbour in ``order`` on the side of the reference.

    ``rows`` are each slice's rows of ``coords`` and ``latent``. Returns the transform of each slice onto its
    neighbour and one record of statistics per pair, in ``order``.
    """
    from tqdm.auto import tqdm

    ref_pos = order.index(reference)
    pair_transforms: dict[str, np.ndarray] = {}
    records = []
    bar = tqdm(total=len(order) - 1, desc="Registering slices", unit="slice", disable=not show_progress_bar)
    for i, moving in enumerate(order):
        if i == ref_pos:
            continue
        bar.update()
        fixed = order[i - 1] if i > ref_pos else order[i + 1]
        m, f = rows[moving], rows[fixed]
        pair_transforms[moving], stats = _register_pair(
            coords[m], latent[m], coords[f], latent[f], model, n_neighbors, refine, rng, (moving, fixed)
        )
        records.append({"moving": moving, "fixed": fixed, **stats})
        logger.info(
            "%s -> %s: %d mutual neighbours, %d/%d inliers after refinement, residual %.3g",
            moving,
            fixed,
            stats["n_mutual"],
            stats["n_inliers"],
            stats["n_matches"],
            stats["residual"],
        )
    bar.close()
    return pair_transforms, records


def _to_reference(order: list[str], reference: str, pair_transforms: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each slice's transform into the reference frame: its pairwise transforms composed along ``order``."""
    ref_pos = order.index(reference)
    transforms = {reference: np.eye(3)}
    for i in range(ref_pos + 1, len(order)):
        transforms[order[i]] = transforms[order[i - 1]] @ pair_transforms[order[i]]
    for i in range(ref_pos - 1, -1, -1):
        transforms[order[i]] = transforms[order[i + 1]] @ pair_transforms[order[i]]
    return {s: transforms[s] for s in order}


# --- matching and fitting -------------------------------------------------------------------------------------


def _register_pair(
    xm: np.ndarray,
    lm: np.ndarray,
    xf: np.ndarray,
    lf: np.ndarray,
    model: str,
    n_neighbors: int,
    refine: int,
    rng: np.random.Generator,
    names: tuple[str, str],
) -> tuple[np.ndarray, dict[str, Any]]:
    """Transform of the moving slice (coordinates ``xm``, latent ``lm``) onto the fixed one, and statistics."""
    moving, fixed = names
    k = min(n_neighbors, xm.shape[0], xf.shape[0])
    im, jf = _mutual_pairs(lm, lf, k)
    if im.size < _MIN_MATCHES:
        raise ValueError(
            f"Slices {moving!r} and {fixed!r} share only {im.size} mutual nearest neighbours in the latent space "
            f"(at least {_MIN_MATCHES} are needed to register them). Check that they were integrated together, "
            "increase `n_neighbors`, or subset the table to leave one of them out."
        )
    fit = _robust_fit(xm[im], xf[jf], model, rng)
    if fit is None or fit[1].sum() < _MIN_MATCHES:
        n_in = 0 if fit is None else int(fit[1].sum())
        raise ValueError(
            f"Slices {moving!r} and {fixed!r}: only {n_in} of their {im.size} mutual neighbours agree on one "
            f"{model} transform (at least {_MIN_MATCHES} are needed). The slices may not overlap, or their latent "
            "representations may not be integrated."
        )
    t, inliers, sigma = fit
    stats: dict[str, Any] = {
        "n_mutual": int(im.size),
        "n_inliers_latent": int(inliers.sum()),
        "residual_latent": _rms(t, xm[im][inliers], xf[jf][inliers]),
    }
    # unrelated matches stay about sqrt(spread_m^2 + spread_f^2) apart whatever the transform
    chance = float(np.hypot(_spread(_apply(t, xm[im][inliers])), _spread(xf[jf][inliers])))
    stats["relative_residual"] = stats["residual_latent"] / chance if chance > 0 else float("nan")
    if not stats["relative_residual"] < _MAX_RELATIVE_RESIDUAL:
        raise ValueError(
            f"Slices {moving!r} and {fixed!r}: their {im.size} mutual neighbours do not agree on a {model} "
            f"transform; after the fit, matched spots are about as far apart as unrelated spots would be "
            f"(relative residual {stats['relative_residual']:.2f}, at most {_MAX_RELATIVE_RESIDUAL} accepted). "
            "The slices may not overlap, or their latent representations may not be integrated."
        )
    n_matches, n_inliers, residual, rounds = int(im.size), int(inliers.sum()), stats["residual_latent"], 0
    floor = median_neighbour_distance(xf) or median_neighbour_distance(xm) or max(sigma, 1e-12)
    latent_scale = float(np.median(np.linalg.norm(lm[im[inliers]] - lf[jf[inliers]], axis=1)))
    if not latent_scale > 0:
        latent_scale = float(np.median(np.linalg.norm(lm[im] - lf[jf], axis=1))) or 1.0
    for _ in range(refine):
        scale = max(sigma, floor)
        a = np.hstack([_apply(t, xm) / scale, lm / latent_scale])
        b = np.hstack([xf / scale, lf / latent_scale])
        im2, jf2 = _mutual_pairs(a, b, 1)
        if im2.size < _MIN_MATCHES:
            break
        refit = _reweighted_fit(xm[im2], xf[jf2], model, t)
        if refit is None or refit[1].sum() < _MIN_MATCHES:
            break
        t_new, inliers2, sigma = refit
        moved = float(np.abs(_apply(t_new, xm) - _apply(t, xm)).max())
        t, rounds = t_new, rounds + 1
        n_matches, n_inliers = int(im2.size), int(inliers2.sum())
        residual = _rms(t, xm[im2][inliers2], xf[jf2][inliers2])
        if moved < _REFINE_TOL * floor:
            break
    stats.update(
        n_matches=n_matches,
        n_inliers=n_inliers,
        residual=residual,
        refine_rounds=rounds,
        rotation=float(np.rad2deg(rotation_angle(t[:2, :2]))),
        scale=float(np.sqrt(abs(np.linalg.det(t[:2, :2])))),
    )
    return t, stats


def _mutual_pairs(a: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``i`` of ``a`` and ``j`` of ``b`` that are among each other's ``k`` nearest neighbours (sparse)."""
    from sklearn.neighbors import NearestNeighbors

    na, nb = a.shape[0], b.shape[0]
    ab = NearestNeighbors(n_neighbors=k).fit(b).kneighbors(a, return_distance=False)
    ba = NearestNeighbors(n_neighbors=k).fit(a).kneighbors(b, return_distance=False)
    ones = np.ones(na * k, dtype=np.float32)
    forward = sparse.csr_matrix((ones, (np.repeat(np.arange(na), k), ab.ravel())), shape=(na, nb))
    ones = np.ones(nb * k, dtype=np.float32)
    backward = sparse.csr_matrix((ones, (ba.ravel(), np.repeat(np.arange(nb), k))), shape=(na, nb))
    mutual = forward.multiply(backward).tocsr()
    mutual.eliminate_zeros()
    mutual.sort_indices()
    coo = mutual.tocoo()
    return coo.row.astype(np.int64), coo.col.astype(np.int64)


def _robust_fit(
    src: np.ndarray, dst: np.ndarray, model: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Least median of squares over rigid minimal samples, then refits of ``model`` on the inliers until they settle.

    Hypotheses are rigid whatever the model: a scale or shear fitted to a few matches between alike but distant
    places could shrink the slice onto the middle of the other and win on residuals. Scale and shear come from the
    refits on the inliers (see :func:`_fit`).
    """
    n = src.shape[0]
    # centre and scale both point sets for conditioning; the transform is mapped back at the end
    ns, nd = _normalizer(src), _normalizer(dst)
    scale = nd[0, 0] / ns[0, 0]  # keep the relative scale of the two slices in the normalised frames
    ns[:2] *= scale
    s, q = _apply(ns, src), _apply(nd, dst)
    score = rng.choice(n, size=_N_SCORE, replace=False) if n > _N_SCORE else np.arange(n)
    samples = rng.integers(0, n, size=(_N_TRIALS, 2))
    samples = samples[samples[:, 0] != samples[:, 1]]
    hypotheses = _rigid_from_two(s[samples], q[samples])
    full = _fit(s, q, "rigid")
    if full is not None:
        hypotheses = np.concatenate([hypotheses, full[None]], axis=0)
    if hypotheses.shape[0] == 0:
        return None
    ss, qs = s[score], q[score]
    medians = np.empty(hypotheses.shape[0])
    for start in range(0, hypotheses.shape[0], _HYPOTHESIS_BLOCK):
        h = hypotheses[start : start + _HYPOTHESIS_BLOCK]
        mapped = np.einsum("tij,nj->tni", h[:, :2, :2], ss) + h[:, None, :2, 2]
        medians[start : start + _HYPOTHESIS_BLOCK] = np.median(((mapped - qs[None]) ** 2).sum(axis=2), axis=1)
    best = hypotheses[int(np.argmin(medians))]
    fit = _reweighted_fit(s, q, model, best, first_scale=_lmeds_scale(float(medians.min()), n, 2))
    if fit is None:
        return None
    t, inliers, sigma = fit
    back = np.linalg.inv(nd) @ t @ ns
    return back, inliers, sigma / nd[0, 0]


def _lmeds_scale(median_sq: float, n: int, m: int) -> float:
    """Robust noise scale from the least median of squares (with its small-sample correction)."""
    return (1.0 + 5.0 / max(n - m, 1)) * np.sqrt(median_sq) / _RAYLEIGH_MEDIAN


def _reweighted_fit(
    src: np.ndarray, dst: np.ndarray, model: str, t: np.ndarray, first_scale: float | None = None
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Refit on the inliers of ``t`` (within 3 robust scales) until the inliers settle; ``None`` if degenerate."""
    inliers = None
    sigma = float("nan")
    for _ in range(_MAX_REWEIGHT):
        r = np.linalg.norm(_apply(t, src) - dst, axis=1)
        if inliers is None:
            sigma = first_scale if first_scale is not None else float(np.median(r)) / _RAYLEIGH_MEDIAN
        elif inliers.any():
            sigma = float(np.median(r[inliers])) / _RAYLEIGH_MEDIAN
        sigma = max(sigma, 1e-12 * (1.0 + float(np.abs(dst).max())))
        new = r <= _INLIER_SCALES * sigma
        if new.sum() < _MIN_SAMPLE[model] + 1:
            return None
        if inliers is not None and np.array_equal(new, inliers):
            break
        inliers = new
        refit = _fit(src[inliers], dst[inliers], model)
        if refit is None:
            return None
        t = refit
    assert inliers is not None
    return t, inliers, sigma


def _fit(src: np.ndarray, dst: np.ndarray, model: str) -> np.ndarray | None:
    """Transform of ``model`` mapping matched points ``src`` onto ``dst``; ``None`` if the points are degenerate.

    Rigid: least squares (Kabsch, no reflection). Similarity and affine: the rotation of the whitened point sets by
    Kabsch, and the scale (similarity) or linear map (affine) that matches the second moments of ``src`` to those
    of ``dst`` (reduced major axis rather than least squares). Least squares shrinks the slice when the matches
    along a structure are only approximate (a spot matched to an alike spot elsewhere in the same layer carries no
    information about its position along the layer, which pulls the least-squares slope towards zero); matching the
    spread of the two matched sets does not, and equals least squares for exact matches.
    """
    ms, md = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - ms, dst - md
    if model == "affine":
        cov_a, cov_b = a.T @ a / a.shape[0], b.T @ b / b.shape[0]
        root_a, inv_root_a = _sqrtm(cov_a)
        root_b, inv_root_b = _sqrtm(cov_b)
        if inv_root_a is None or inv_root_b is None:
            return None
        rotation = _kabsch(a @ inv_root_a, b @ inv_root_b)
        linear = root_b @ rotation @ inv_root_a
    else:
        if not np.any(a) or not np.any(b):
            return None
        linear = _kabsch(a, b)
        if model == "similarity":
            linear = linear * np.sqrt(float((b**2).sum()) / float((a**2).sum()))
    out = np.eye(3)
    out[:2, :2] = linear
    out[:2, 2] = md - linear @ ms
    return out


def _kabsch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation ``r`` (no reflection) minimising ``sum |r a_i - b_i|^2`` for centred point sets."""
    u, _, vt = np.linalg.svd(a.T @ b)
    flip = np.diag([1.0, np.sign(np.linalg.det(vt.T @ u.T)) or 1.0])
    return vt.T @ flip @ u.T


def _sqrtm(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Symmetric square root of a 2 x 2 covariance and its inverse (``None`` if singular)."""
    values, vectors = np.linalg.eigh(cov)
    if values.min() <= 1e-12 * max(values.max(), 1e-300):
        return cov, None
    root = (vectors * np.sqrt(values)) @ vectors.T
    inv_root = (vectors / np.sqrt(values)) @ vectors.T
    return root, inv_root


def _rigid_from_two(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Rigid transforms (T x 3 x 3) through pairs of matches ``p -> q`` (T x 2 x 2); coincident points dropped."""
    dp, dq = p[:, 1] - p[:, 0], q[:, 1] - q[:, 0]
    keep = (np.linalg.norm(dp, axis=1) > 1e-9) & (np.linalg.norm(dq, axis=1) > 1e-9)
    dp, dq, p, q = dp[keep], dq[keep], p[keep], q[keep]
    angle = np.arctan2(dp[:, 0] * dq[:, 1] - dp[:, 1] * dq[:, 0], (dp * dq).sum(axis=1))
    cos, sin = np.cos(angle), np.sin(angle)
    out = np.zeros((angle.size, 3, 3))
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = cos, -sin, sin, cos
    out[:, :2, 2] = q.mean(axis=1) - np.einsum("tij,tj->ti", out[:, :2, :2], p.mean(axis=1))
    out[:, 2, 2] = 1.0
    return out


def _normalizer(x: np.ndarray) -> np.ndarray:
    """Similarity that centres ``x`` and scales it to unit root mean square distance from the centre."""
    centre = x.mean(axis=0)
    rms = float(np.sqrt(((x - centre) ** 2).sum(axis=1).mean())) or 1.0
    out = np.eye(3)
    out[:2, :2] /= rms
    out[:2, 2] = -centre / rms
    return out


def _spread(x: np.ndarray) -> float:
    """Root mean square distance of points from their centroid."""
    return float(np.sqrt(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean())) if x.shape[0] else 0.0


def _apply(t: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x @ t[:2, :2].T + t[:2, 2]


def _rms(t: np.ndarray, src: np.ndarray, dst: np.ndarray) -> float:
    return float(np.sqrt(((_apply(t, src) - dst) ** 2).sum(axis=1).mean())) if src.shape[0] else float("nan")


# --- validation ---------------------------------------------------------------------------------------------------


def _check_order(order: Sequence[str] | None, names: list[str]) -> list[str]:
    if order is None:
        return list(names)
    if isinstance(order, str) or not isinstance(order, Sequence | np.ndarray | pd.Index):
        raise ValueError(f"`order` must be a sequence of slice names, got {order!r}.")
    given = [str(s) for s in order]
    unknown = [s for s in given if s not in names]
    if unknown:
        raise ValueError(f"`order` names unknown slices {unknown}; the slices are {names}.")
    repeated = sorted({s for s in given if given.count(s) > 1})
    if repeated:
        raise ValueError(f"`order` repeats slices {repeated}.")
    missing = [s for s in names if s not in given]
    if missing:
        raise ValueError(f"`order` leaves out slices {missing}; list every slice once (subset the table to drop some).")
    return given


def _gaps(spacing: float | Sequence[float] | None, order: list[str], reference_xy: np.ndarray) -> np.ndarray:
    n = len(order) - 1
    if spacing is None:
        return np.full(n, median_neighbour_distance(reference_xy) or 1.0)
    values = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if values.ndim != 1 or values.size not in (1, n) or not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(
            f"`spacing` must be one non-negative number or {n} (one per consecutive pair of slices), got {spacing!r}."
        )
    return np.broadcast_to(values, (n,)).copy()


# --- SpatialData --------------------------------------------------------------------------------------------------


def _set_transformations(
    sdata: SpatialData,
    adata: AnnData,
    labels: np.ndarray,
    transforms: dict[str, np.ndarray],
    coords: np.ndarray,
    coordinate_system: str,
) -> list[str]:
    """Give each slice's shapes (and the other elements in their frame) a transformation to ``coordinate_system``."""
    from spatialdata.models import TableModel
    from spatialdata.transformations import Affine, get_transformation, set_transformation

    attrs = adata.uns.get(TableModel.ATTRS_KEY) or {}
    region_key, instance_key = attrs.get("region_key"), attrs.get("instance_key")
    if region_key not in adata.obs or instance_key not in adata.obs:
        warnings.warn(
            "The table annotates no spatial element (no region/instance keys): only `obsm` and `uns` are written, "
            f"no coordinate system {coordinate_system!r}.",
            UserWarning,
            stacklevel=3,
        )
        return []
    regions = adata.obs[region_key].astype(str).to_numpy()
    instances = adata.obs[instance_key].to_numpy()
    updated: list[str] = []
    frames: dict[str, set[str]] = {}  # coordinate system of obsm["spatial"] -> slices whose shapes are in it
    for s, t in transforms.items():
        in_slice = labels == s
        affine = Affine(t, input_axes=("x", "y"), output_axes=("x", "y"))
        for region in pd.unique(regions[in_slice]):
            rows = in_slice & (regions == region)
            if (regions[~in_slice] == region).any():
                warnings.warn(
                    f"Element {region!r} holds spots of several slices: it gets no transformation to "
                    f"{coordinate_system!r}.",
                    UserWarning,
                    stacklevel=3,
                )
                continue
            element = sdata.shapes.get(region)
            if element is None:
                logger.info("Region %r of slice %r is not a shapes element; not transformed", region, s)
                continue
            pos = element.index.get_indexer(instances[rows])
            if (pos < 0).any():
                warnings.warn(
                    f"{int((pos < 0).sum())} rows of slice {s!r} annotate shapes missing from {region!r}: it gets "
                    f"no transformation to {coordinate_system!r}.",
                    UserWarning,
                    stacklevel=3,
                )
                continue
            centroids = element.geometry.centroid
            xy = np.column_stack([centroids.x.to_numpy()[pos], centroids.y.to_numpy()[pos]])
            frame = _frame_of(element, xy, coords[rows])
            if frame is None:
                warnings.warn(
                    f"The shapes of {region!r} (slice {s!r}) match `obsm` coordinates under none of their "
                    f"transformations, nor under an affine map: they get no transformation to {coordinate_system!r}.",
                    UserWarning,
                    stacklevel=3,
                )
                continue
            cs, to_frame = frame
            set_transformation(element, _compose(to_frame, affine), to_coordinate_system=coordinate_system)
            updated.append(region)
            if cs is not None:
                frames.setdefault(cs, set()).add(s)
    # the other elements in a slice's own frame (its images, points, unannotated shapes) follow their slice
    for cs, owners in frames.items():
        if len(owners) != 1:
            continue
        affine = Affine(transforms[next(iter(owners))], input_axes=("x", "y"), output_axes=("x", "y"))
        for _, name, element in sdata.gen_spatial_elements():
            to_cs = get_transformation(element, get_all=True).get(cs)
            if name in updated or to_cs is None:
                continue
            set_transformation(element, _compose(to_cs, affine), to_coordinate_system=coordinate_system)
            updated.append(name)
    return updated


def _frame_of(element: Any, xy: np.ndarray, target: np.ndarray) -> tuple[str | None, Any] | None:
    """The transformation from ``element``'s intrinsic frame to the frame of ``target`` (``obsm`` coordinates).

    An existing transformation whose image of the centroids ``xy`` matches ``target`` is preferred (its coordinate
    system is returned with it); otherwise an affine map is fitted. ``None`` when nothing matches.
    """
    from spatialdata.transformations import Affine, Identity, get_transformation

    tol = _FRAME_TOL * (median_neighbour_distance(target) or 0.0) + 1e-9 * (1.0 + float(np.abs(target).max()))
    candidates = []
    for cs, t in get_transformation(element, get_all=True).items():
        m = t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
        err = float(np.median(np.linalg.norm(_apply(m, xy) - target, axis=1)))
        candidates.append((err, not isinstance(t, Identity), cs, t))
    if candidates:
        err, _, cs, t = min(candidates, key=lambda c: (c[0], c[1]))
        if err <= tol:
            return cs, t
    m = _fit(xy, target, "affine")
    if m is not None and float(np.median(np.linalg.norm(_apply(m, xy) - target, axis=1))) <= tol:
        return None, Affine(m, input_axes=("x", "y"), output_axes=("x", "y"))
    return None


def _compose(first: Any, then: Any) -> Any:
    """``then`` after ``first`` (spatialdata transformations)."""
    from spatialdata.transformations import Identity
    from spatialdata.transformations import Sequence as TransformSequence

    return then if isinstance(first, Identity) else TransformSequence([first, then])
