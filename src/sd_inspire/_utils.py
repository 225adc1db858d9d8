"""Private helpers shared by the public functions: table lookup, validation and random state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from sd_inspire._constants import Key

if TYPE_CHECKING:
    from spatialdata import SpatialData


def is_spatialdata(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`~spatialdata.SpatialData`, without importing spatialdata for AnnData input."""
    return type(obj).__name__ == "SpatialData" and type(obj).__module__.startswith("spatialdata")


def table_name(sdata: SpatialData, table: AnnData, table_key: str | None = None) -> str:
    """The name of ``table`` in ``sdata``: ``table_key``, or the key under which ``sdata`` holds this very object."""
    return table_key or next(k for k, v in sdata.tables.items() if v is table)


def get_table(data: AnnData | SpatialData, table_key: str | None = None) -> AnnData:
    """Return the table to work on: ``data`` itself, or one table of a SpatialData.

    Raises
    ------
    KeyError
        If ``table_key`` names no table, or it is omitted and the SpatialData holds several tables, none of them
        called ``"table"``.
    TypeError
        If ``data`` is neither AnnData nor SpatialData.
    """
    if isinstance(data, AnnData):
        return data
    if not is_spatialdata(data):
        raise TypeError(f"Expected an AnnData or a SpatialData, got {type(data).__name__}.")
    tables = data.tables
    if table_key is not None:
        if table_key not in tables:
            raise KeyError(f"No table {table_key!r} in the SpatialData; its tables are {sorted(tables)}.")
        return tables[table_key]
    if Key.TABLE in tables:
        return tables[Key.TABLE]
    if len(tables) == 1:
        return next(iter(tables.values()))
    if not tables:
        raise KeyError("The SpatialData holds no table; read the data with `sd_inspire.io` or add one.")
    raise KeyError(f"The SpatialData holds several tables {sorted(tables)}; pass `table_key=` to pick one.")


def get_slices(adata: AnnData, slice_key: str | None) -> pd.Series:
    """The categorical slice label of each observation; one slice when ``slice_key`` is ``None``.

    Raises
    ------
    KeyError
        If ``slice_key`` is not a column of ``obs``.
    """
    if slice_key is None:
        return pd.Series(pd.Categorical(["0"] * adata.n_obs), index=adata.obs_names)
    if slice_key not in adata.obs:
        raise KeyError(
            f"No column {slice_key!r} in `adata.obs` (columns: {list(adata.obs.columns)}). Combine slices with "
            "`sd_inspire.pp.concat`, pass the right `slice_key=`, or `slice_key=None` for a single slice."
        )
    labels = adata.obs[slice_key]
    if labels.isna().any():
        raise ValueError(f"`adata.obs[{slice_key!r}]` has {int(labels.isna().sum())} missing slice labels.")
    if not isinstance(labels.dtype, pd.CategoricalDtype):
        labels = labels.astype(str).astype("category")
    return labels.cat.remove_unused_categories()


def measured_mask(adata: AnnData, slices: pd.Series) -> pd.DataFrame:
    """Genes x slices mask of the genes each slice measured, from ``varm["measured"]`` (all genes without it).

    The table's own ``varm`` is not modified. A table treated as a single slice whose mask has per-slice columns
    counts a gene as measured if any slice measured it.

    Raises
    ------
    KeyError
        If ``varm["measured"]`` has no column for one of the slices.
    """
    cats = [str(c) for c in slices.cat.categories]
    if Key.MEASURED not in adata.varm:
        return pd.DataFrame(True, index=adata.var_names, columns=cats)
    m = adata.varm[Key.MEASURED]
    m = m.copy() if isinstance(m, pd.DataFrame) else pd.DataFrame(np.asarray(m), index=adata.var_names)
    m.columns = m.columns.astype(str)
    if len(cats) == 1 and cats[0] not in m.columns:
        return pd.DataFrame({cats[0]: m.any(axis=1).to_numpy(dtype=bool)}, index=adata.var_names)
    missing = [c for c in cats if c not in m.columns]
    if missing:
        raise KeyError(f"`adata.varm['measured']` has no column for slices {missing}.")
    return m[cats].astype(bool)


def check_unique_obs_names(adata: AnnData, slice_key: str | None = None) -> None:
    """Raise a ValueError naming duplicated observation names (and the slices holding them)."""
    names = adata.obs_names
    if names.is_unique:
        return
    dup = names[names.duplicated(keep=False)]
    example = dup[0]
    where = ""
    if slice_key is not None and slice_key in adata.obs:
        slices = sorted(adata.obs.loc[names == example, slice_key].astype(str).unique())
        where = f" (found in slices {slices})"
    raise ValueError(
        f"{dup.unique().size} observation names occur more than once, e.g. {example!r}{where}. "
        "Make them unique, e.g. `sd_inspire.pp.concat(..., index_unique='-')` or `adata.obs_names_make_unique()`."
    )


def get_spatial(adata: AnnData, spatial_key: str = Key.SPATIAL, slices: pd.Series | None = None) -> np.ndarray:
    """Return finite 2D/3D coordinates from ``obsm[spatial_key]`` as float64, or raise naming the culprit."""
    if spatial_key not in adata.obsm:
        raise KeyError(
            f"No coordinates: `adata.obsm[{spatial_key!r}]` is missing (obsm keys: {list(adata.obsm.keys())}). "
            "Read the data with `sd_inspire.io` or store spot coordinates there."
        )
    coords = adata.obsm[spatial_key]
    coords = np.asarray(coords.to_numpy() if isinstance(coords, pd.DataFrame) else coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] not in (2, 3):
        raise ValueError(f"`adata.obsm[{spatial_key!r}]` must be n_obs x 2 (or 3), got shape {coords.shape}.")
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        first = adata.obs_names[np.flatnonzero(bad)[0]]
        where = f" in slice {slices.iloc[np.flatnonzero(bad)[0]]!r}" if slices is not None else ""
        raise ValueError(
            f"`adata.obsm[{spatial_key!r}]` has NaN or infinite coordinates for {int(bad.sum())} observations"
            f"{where}, e.g. {first!r}. Drop or fix them first."
        )
    return coords


def get_representation(adata: AnnData, use_rep: str) -> np.ndarray:
    """``obsm[use_rep]`` as a finite float64 2D array, or raise naming the key.

    Raises
    ------
    KeyError
        If ``obsm[use_rep]`` is missing.
    ValueError
        If it is empty or has NaN or infinite values (the first such observation is named).
    """
    if use_rep not in adata.obsm:
        raise KeyError(
            f"No `adata.obsm[{use_rep!r}]` (obsm keys: {list(adata.obsm.keys())}): run `sd_inspire.tl.integrate` "
            "first, or pass another representation as `use_rep=`."
        )
    rep = adata.obsm[use_rep]
    if isinstance(rep, pd.DataFrame):
        rep = rep.to_numpy()
    elif sparse.issparse(rep):
        rep = rep.toarray()
    x = np.asarray(rep, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"`adata.obsm[{use_rep!r}]` must be n_obs x n_dims with n_dims >= 1, got shape {x.shape}.")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        first = adata.obs_names[np.flatnonzero(bad)[0]]
        raise ValueError(
            f"`adata.obsm[{use_rep!r}]` has NaN or infinite values in {int(bad.sum())} rows, e.g. {first!r}."
        )
    return x


def values_are_counts(adata: AnnData) -> bool:
    """Whether :func:`sd_inspire.pp.preprocess` found integer counts (else the table holds normalised values in ``X``).

    True for tables not preprocessed yet.
    """
    return bool(adata.uns.get(Key.PREPROCESS, {}).get("counts_are_integer", True))


def check_counts(x: Any, name: str) -> bool:
    """Validate a count matrix; return whether all values are integers.

    Raises
    ------
    ValueError
        If ``x`` has negative, NaN or infinite values; the message names ``name``.
    """
    values = x.data if sparse.issparse(x) else np.asarray(x)
    if values.size == 0:
        return True
    if not np.isfinite(values).all():
        raise ValueError(f"{name} has NaN or infinite values; expected raw counts.")
    n_neg = int((values < 0).sum())
    if n_neg:
        raise ValueError(f"{name} has {n_neg} negative values (minimum {values.min():g}); expected raw counts.")
    return bool(np.all(np.mod(values, 1) == 0))


#: Exclusive upper bound of the integer seeds derived from a ``random_state`` and handed on (to scikit-learn,
#: leidenalg, torch, NumPy): ``2**31 - 1`` keeps every seed int32-safe for all of them.
SEED_BOUND = 2**31 - 1


def derive_seed(rng: np.random.Generator) -> int:
    """One integer seed in ``[0, SEED_BOUND)`` drawn from ``rng``, for a library that takes an integer seed."""
    return int(rng.integers(SEED_BOUND))


def random_generator(random_state: int | np.random.Generator | None) -> np.random.Generator:
    """Turn ``random_state`` into a :class:`numpy.random.Generator` (never touches global state)."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is not None and (isinstance(random_state, bool) or not isinstance(random_state, int | np.integer)):
        raise TypeError(f"`random_state` must be an int, a numpy Generator or None, got {random_state!r}.")
    if random_state is not None and random_state < 0:
        raise ValueError(f"`random_state` must be a non-negative integer, got {random_state}.")
    return np.random.default_rng(random_state)


def maybe_copy(adata: AnnData, copy: bool) -> AnnData:
    """The table to modify: a copy if ``copy`` else ``adata`` itself."""
    return adata.copy() if copy else adata


def median_neighbour_distance(coords: np.ndarray) -> float | None:
    """Median distance of each point to its nearest other point (ignoring coincident points), or ``None``."""
    from scipy.spatial import cKDTree

    if coords.shape[0] < 2:
        return None
    dist, _ = cKDTree(coords[:, :2]).query(coords[:, :2], k=2)
    nn = dist[:, 1][dist[:, 1] > 0]
    return float(np.median(nn)) if nn.size else None


def factor_label(k: int) -> str:
    """Name of factor ``k`` wherever factors are named: the SpatialData factor table, plots, result tables."""
    return f"factor_{k}"


def category_colors(n: int) -> list[tuple[float, ...]]:
    """``n`` distinct colours (tab10, tab20, repeated beyond 20): the default of every labelling's colours."""
    import matplotlib as mpl

    cmap = mpl.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


#: History key of the count model's final fit on the trained latent space (its deviance per step)
REFIT_KEY = "factor_refit"
CONVERGENCE_FRACTION = 0.1  # the loss of the last tenth of the steps is compared with the tenth before it
CONVERGENCE_TOLERANCE = 0.01  # relative fall of that mean loss above which training is said not to have converged


def convergence(loss, *, fraction: float = CONVERGENCE_FRACTION, tolerance: float = CONVERGENCE_TOLERANCE) -> dict:
    """Whether the training loss has levelled off.

    Compares the mean loss over the last ``fraction`` of the steps with its mean over the ``fraction`` before that:
    ``loss_change`` is their relative difference (negative: the loss still falls), ``converged`` whether it fell by
    less than ``tolerance``. Window means, not single steps, so minibatch noise does not decide. A run of fewer than
    20 steps has windows too short to judge: ``loss_change`` is NaN and ``converged`` False.
    """
    loss = np.asarray(loss, dtype=np.float64)
    window = int(loss.size * fraction)
    if loss.size < 20 or window < 2:
        return {"converged": False, "loss_change": float("nan"), "window": window, "tolerance": tolerance}
    last, before = loss[-window:].mean(), loss[-2 * window : -window].mean()
    change = float((last - before) / max(abs(before), 1e-12))
    return {"converged": bool(change > -tolerance), "loss_change": change, "window": window, "tolerance": tolerance}


def judged_curve(history) -> str:
    """The history key whose curve the convergence check reads: the final fit's when there is one, else ``"loss"``.

    A mapped query has no final fit (its encoder and programs are the reference's): its training loss is judged.
    """
    return REFIT_KEY if REFIT_KEY in history else "loss"


def fit_name(curve: str) -> str:
    """What a history curve (a key of ``uns["inspire"]["history"]``, see :func:`judged_curve`) is the loss of."""
    return "the final fit of the factors" if curve == REFIT_KEY else "training"
