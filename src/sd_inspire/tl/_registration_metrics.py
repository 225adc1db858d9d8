"""Scores of slice registration: error against a known transform and agreement of aligned neighbouring slices.

All functions take plain arrays (numpy arrays, lists, sparse matrices for expression) and return Python floats.
Transforms are 3 x 3 homogeneous matrices acting on column vectors ``(x, y, 1)``, as written by
:func:`sd_inspire.tl.align` into ``uns["spatial_aligned"]["transforms"]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
from scipy import sparse

from sd_inspire._validate import check_integer

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

#: Dense entries (float64) of one chunk of gathered neighbour rows in :func:`neighbour_correlation`.
_CHUNK_ENTRIES = 2**22


class RegistrationError(NamedTuple):
    """Error of a fitted 2D transform against the true one (see :func:`registration_error`)."""

    rotation: float
    """Absolute difference of the rotation angles, in degrees (0 to 180)."""
    translation: float
    """Distance between the images of the centre point under the two transforms, in coordinate units."""


def registration_error(
    fitted: ArrayLike,
    true: ArrayLike,
    *,
    center: ArrayLike | None = None,
) -> RegistrationError:
    """Rotation and translation error of a fitted 2D transform against the true one.

    The rotation of a transform is the angle of the rotation closest to its linear part (the orthogonal factor of
    its polar decomposition), so the error is defined for rigid, similarity and affine transforms alike. The
    translation error is the distance between the points to which the two transforms map ``center``; with the
    default centre (the origin) it is the distance between the two translation vectors. A centre inside the slice
    (e.g. the mean of its coordinates) measures how far the slice lands from where it should, independently of
    where the origin of its frame is.

    Parameters
    ----------
    fitted
        Fitted transform, a 3 x 3 homogeneous matrix (last row ``0, 0, 1``).
    true
        True transform, a 3 x 3 homogeneous matrix.
    center
        Point ``(x, y)`` at which the translation error is measured; the origin by default.

    Returns
    -------
    A :class:`RegistrationError` named tuple ``(rotation, translation)``: rotation error in degrees, translation
    error in the units of the coordinates.

    Raises
    ------
    ValueError
        If a matrix is not a finite 3 x 3 homogeneous matrix with an invertible linear part, or ``center`` is not a
        pair of finite numbers.

    Examples
    --------
    >>> import numpy as np
    >>> from sd_inspire.tl.metrics import registration_error
    >>> def rotation(degrees, tx, ty):
    ...     a = np.deg2rad(degrees)
    ...     return np.array([[np.cos(a), -np.sin(a), tx], [np.sin(a), np.cos(a), ty], [0, 0, 1]])
    >>> err = registration_error(rotation(31, 100, 0), rotation(30, 103, 4))
    >>> round(err.rotation, 6), round(err.translation, 6)
    (1.0, 5.0)
    """
    a, b = _homogeneous(fitted, "fitted"), _homogeneous(true, "true")
    c = np.zeros(2) if center is None else np.asarray(center, dtype=np.float64).ravel()
    if c.shape != (2,) or not np.isfinite(c).all():
        raise ValueError(f"`center` must be a finite point (x, y), got {center!r}.")
    diff = np.rad2deg(rotation_angle(a[:2, :2]) - rotation_angle(b[:2, :2]))
    rotation = abs((diff + 180.0) % 360.0 - 180.0)
    point = np.append(c, 1.0)
    translation = float(np.linalg.norm((a @ point)[:2] - (b @ point)[:2]))
    return RegistrationError(float(rotation), translation)


def target_registration_error(fitted: ArrayLike, true: ArrayLike, points: ArrayLike) -> float:
    """Root mean square distance between where the fitted and the true transform put the same points.

    Unlike :func:`registration_error`, which looks at rotation and translation, this also counts errors of scale
    and shear, weighted by where the spots of the slice are: the natural summary of how far the spots of a slice
    land from where they should.

    Parameters
    ----------
    fitted
        Fitted transform, a 3 x 3 homogeneous matrix.
    true
        True transform, a 3 x 3 homogeneous matrix.
    points
        Points ``(x, y)`` (n x 2), e.g. the spot coordinates of the slice in its own frame.

    Returns
    -------
    The root mean square distance, in coordinate units.

    Raises
    ------
    ValueError
        If a matrix is not a finite 3 x 3 homogeneous matrix with an invertible linear part, or ``points`` are not
        finite n x 2 coordinates.

    Examples
    --------
    >>> import numpy as np
    >>> from sd_inspire.tl.metrics import target_registration_error
    >>> stretch = np.diag([1.1, 1.0, 1.0])
    >>> round(target_registration_error(stretch, np.eye(3), [[0, 0], [10, 0], [-10, 0]]), 4)
    0.8165
    """
    a, b = _homogeneous(fitted, "fitted"), _homogeneous(true, "true")
    p = _coordinates(points, "points")
    if p.shape[1] != 2:
        raise ValueError(f"`points` must be n x 2, got shape {p.shape}.")
    moved = p @ (a[:2, :2] - b[:2, :2]).T + (a[:2, 2] - b[:2, 2])
    return float(np.sqrt((moved**2).sum(axis=1).mean()))


def neighbour_correlation(
    features: ArrayLike,
    coords: ArrayLike,
    features_other: ArrayLike,
    coords_other: ArrayLike,
    *,
    n_neighbors: int = 6,
) -> float:
    """INSPIRE's neighbour correlation score of two registered slices.

    For every spot of the first slice, the ``n_neighbors`` spatially nearest spots of the other slice are found
    (Euclidean distance between the aligned coordinates); the score of the spot is the largest Pearson correlation
    between its features and those of these neighbours, and the score of the pair of slices is the mean over the
    spots of the first slice. This is the "Pearson correlation score" with which INSPIRE (Zhao et al., *Nature
    Genetics* 2026) evaluates 3D alignment (6 neighbours, on expression). Well-registered serial sections score
    higher, since a spot then sits over the same tissue in the other section. The score is not symmetric: swap the
    slices to score the other direction.

    Features are usually log-normalised expression over a common gene set, or a latent representation. A spot with
    constant features has no correlation: spots for which every correlation is undefined are left out of the mean.

    Parameters
    ----------
    features
        Features of the spots of the first slice (spots x features, dense or sparse).
    coords
        Aligned coordinates of the spots of the first slice (spots x 2 or 3).
    features_other
        Features of the spots of the other slice, over the same features in the same order.
    coords_other
        Aligned coordinates of the spots of the other slice, in the same frame as ``coords``.
    n_neighbors
        Number of spatial neighbours in the other slice over which the best correlation is taken.

    Returns
    -------
    The mean best correlation, between -1 and 1.

    Raises
    ------
    ValueError
        If the shapes do not match, values are not finite, ``n_neighbors`` is not a positive integer, or no spot
        has a defined correlation (constant features everywhere).

    Examples
    --------
    >>> import numpy as np
    >>> from sd_inspire.tl.metrics import neighbour_correlation
    >>> rng = np.random.default_rng(0)
    >>> xy = rng.uniform(0, 100, (200, 2))
    >>> expr = np.column_stack([np.sin(xy[:, 0] / 10 + k) + np.cos(xy[:, 1] / 10 - k) for k in range(20)])
    >>> neighbour_correlation(expr, xy, expr, xy + 0.1, n_neighbors=1) > 0.99
    True
    >>> neighbour_correlation(expr, xy, expr, xy[::-1], n_neighbors=1) < 0.5
    True
    """
    from sklearn.neighbors import NearestNeighbors

    k = check_integer(n_neighbors, "n_neighbors", minimum=1)
    xa, xb = _features(features, "features"), _features(features_other, "features_other")
    ca, cb = _coordinates(coords, "coords"), _coordinates(coords_other, "coords_other")
    _check_rows(xa, ca, "features", "coords")
    _check_rows(xb, cb, "features_other", "coords_other")
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"`features` has {xa.shape[1]} columns but `features_other` has {xb.shape[1]}.")
    if ca.shape[1] != cb.shape[1]:
        raise ValueError(f"`coords` has {ca.shape[1]} columns but `coords_other` has {cb.shape[1]}.")
    k = min(k, cb.shape[0])
    neighbours = NearestNeighbors(n_neighbors=k).fit(cb).kneighbors(ca, return_distance=False)

    za, zb = _standardized_rows(xa), _standardized_rows(xb)
    best = np.full(ca.shape[0], np.nan)
    step = max(1, _CHUNK_ENTRIES // max(1, k * xa.shape[1]))
    for start in range(0, ca.shape[0], step):
        stop = min(ca.shape[0], start + step)
        rows_a = _dense_rows(za, np.arange(start, stop))  # (chunk, genes)
        rows_b = _dense_rows(zb, neighbours[start:stop].ravel()).reshape(stop - start, k, -1)
        corr = np.einsum("ig,ikg->ik", rows_a, rows_b)
        with np.errstate(invalid="ignore"):
            corr = np.where(np.isfinite(corr), corr, -np.inf).max(axis=1)
        best[start:stop] = np.where(np.isfinite(corr), corr, np.nan)
    valid = np.isfinite(best)
    if not valid.any():
        raise ValueError(
            "No spot has a defined correlation: the features of every spot of the first slice, or of all its "
            f"{k} nearest spots of the other slice, are constant."
        )
    return float(np.clip(best[valid], -1.0, 1.0).mean())


def neighbour_agreement(
    labels: ArrayLike,
    coords: ArrayLike,
    labels_other: ArrayLike,
    coords_other: ArrayLike,
    *,
    n_neighbors: int = 6,
) -> float:
    """Fraction of spots whose label occurs among their spatial nearest neighbours in the other, registered slice.

    INSPIRE's "cell type accuracy score" of 3D alignment: for every spot of the first slice with a label, the
    ``n_neighbors`` spatially nearest spots of the other slice are found, and the spot counts as a match when at
    least one of them has the same label (a cell type, or a manual layer annotation). Spots of the first slice
    without a label (``NaN``, ``None``) are left out; neighbours without a label never match. Labels are compared as
    strings.

    Parameters
    ----------
    labels
        Label of each spot of the first slice.
    coords
        Aligned coordinates of the spots of the first slice (spots x 2 or 3).
    labels_other
        Label of each spot of the other slice.
    coords_other
        Aligned coordinates of the spots of the other slice, in the same frame as ``coords``.
    n_neighbors
        Number of spatial neighbours in the other slice to look at.

    Returns
    -------
    The fraction of labelled spots of the first slice with a match, from 0 to 1.

    Raises
    ------
    ValueError
        If the lengths do not match, coordinates are not finite, ``n_neighbors`` is not a positive integer, or no
        spot of the first slice has a label.

    Examples
    --------
    >>> from sd_inspire.tl.metrics import neighbour_agreement
    >>> xy = [[0, 0], [10, 0], [20, 0]]
    >>> neighbour_agreement(["a", "b", None], xy, ["a", "b", "b"], xy, n_neighbors=1)
    1.0
    >>> neighbour_agreement(["a", "b", "c"], xy, ["b", "c", "a"], xy, n_neighbors=1)
    0.0
    """
    from sklearn.neighbors import NearestNeighbors

    k = check_integer(n_neighbors, "n_neighbors", minimum=1)
    la, lb = _labels(labels), _labels(labels_other)
    ca, cb = _coordinates(coords, "coords"), _coordinates(coords_other, "coords_other")
    _check_rows(la[:, None], ca, "labels", "coords")
    _check_rows(lb[:, None], cb, "labels_other", "coords_other")
    if ca.shape[1] != cb.shape[1]:
        raise ValueError(f"`coords` has {ca.shape[1]} columns but `coords_other` has {cb.shape[1]}.")
    labelled = pd.notna(la)
    if not labelled.any():
        raise ValueError("No spot of the first slice has a label.")
    k = min(k, cb.shape[0])
    neighbours = NearestNeighbors(n_neighbors=k).fit(cb).kneighbors(ca[labelled], return_distance=False)
    query = la[labelled].astype(str)
    other = np.where(pd.notna(lb), lb.astype(str), None)
    match = (other[neighbours] == query[:, None]).any(axis=1)
    return float(match.mean())


def _homogeneous(matrix: ArrayLike, name: str) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 3) or not np.isfinite(m).all():
        raise ValueError(f"`{name}` must be a finite 3 x 3 homogeneous matrix, got shape {m.shape}.")
    if not np.allclose(m[2], [0.0, 0.0, 1.0]):
        raise ValueError(f"`{name}` is not homogeneous: its last row is {m[2].tolist()}, expected [0, 0, 1].")
    if abs(np.linalg.det(m[:2, :2])) <= 1e-12 * max(1.0, np.abs(m[:2, :2]).max() ** 2):
        raise ValueError(f"The linear part of `{name}` is singular.")
    return m


def rotation_angle(linear: np.ndarray) -> float:
    """Angle (radians) of the rotation closest to ``linear`` (orthogonal polar factor; a reflection is removed)."""
    u, _, vt = np.linalg.svd(linear)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    r = u @ np.diag([1.0, d]) @ vt
    return float(np.arctan2(r[1, 0], r[0, 0]))


def _features(values: ArrayLike, name: str) -> np.ndarray | sparse.csr_matrix:
    if sparse.issparse(values):
        x = sparse.csr_matrix(values, dtype=np.float64)
        data = x.data
    else:
        x = np.asarray(values.to_numpy() if isinstance(values, pd.DataFrame) else values, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        data = x
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"`{name}` must be spots x features, got shape {x.shape}.")
    if not np.isfinite(data).all():
        raise ValueError(f"`{name}` has NaN or infinite values.")
    return x


def _coordinates(values: ArrayLike, name: str) -> np.ndarray:
    c = np.asarray(values.to_numpy() if isinstance(values, pd.DataFrame) else values, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] not in (2, 3) or c.shape[0] == 0:
        raise ValueError(f"`{name}` must be n x 2 or n x 3 coordinates with n >= 1, got shape {c.shape}.")
    if not np.isfinite(c).all():
        raise ValueError(f"`{name}` has NaN or infinite values.")
    return c


def _labels(values: ArrayLike) -> np.ndarray:
    out = np.asarray(values.to_numpy() if isinstance(values, pd.Series) else values, dtype=object)
    return out.ravel()


def _check_rows(x: np.ndarray | sparse.spmatrix, c: np.ndarray, name_x: str, name_c: str) -> None:
    if x.shape[0] != c.shape[0]:
        raise ValueError(f"`{name_x}` has {x.shape[0]} rows but `{name_c}` has {c.shape[0]}.")


def _standardized_rows(x: np.ndarray | sparse.csr_matrix) -> np.ndarray | _CentredSparse:
    """Rows scaled so that the dot product of two rows is their Pearson correlation (sparse rows stay sparse).

    Sparse input is centred lazily, a chunk of rows at a time (:func:`_dense_rows`); rows with zero variance become
    NaN.
    """
    n = x.shape[1]
    if sparse.issparse(x):
        mean = np.asarray(x.mean(axis=1)).ravel()
        sq = np.asarray(x.multiply(x).sum(axis=1)).ravel()
        var = np.maximum(sq / n - mean**2, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(var > 0, 1.0 / np.sqrt(var * n), np.nan)
        return _CentredSparse(x, mean, scale)
    centred = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt((centred**2).sum(axis=1, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norm > 0, centred / norm, np.nan)


class _CentredSparse:
    """A sparse matrix with per-row mean and scale, densified (centred, scaled) a few rows at a time."""

    def __init__(self, x: sparse.csr_matrix, mean: np.ndarray, scale: np.ndarray) -> None:
        self.x, self.mean, self.scale = x, mean, scale

    def rows(self, index: np.ndarray) -> np.ndarray:
        dense = self.x[index].toarray()
        return (dense - self.mean[index, None]) * self.scale[index, None]


def _dense_rows(z: np.ndarray | _CentredSparse, index: np.ndarray) -> np.ndarray:
    return z.rows(index) if isinstance(z, _CentredSparse) else z[index]
