"""Training curves of the loss terms recorded by ``tl.integrate``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sd_inspire._docs import d
from sd_inspire._utils import REFIT_KEY, convergence, get_table, judged_curve
from sd_inspire.pl._base import finish, panel_grid, require

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


#: Panel order of the loss terms: the total, the likelihood, then the other terms of the objective.
_ORDER = ("loss", "poisson", "reconstruction", "geometry", "adversarial", "alignment", "discriminator", "prior")
_ORDER += ("slice_effect", REFIT_KEY)  # then the count model's final fit on the trained latent space


@d.dedent
def history(
    data: AnnData | SpatialData,
    *,
    key: str = "inspire",
    terms: str | Sequence[str] | None = None,
    table_key: str | None = None,
    smooth: int | None = None,
    log: bool = False,
    ncols: int = 4,
    panel_size: float = 3.0,
    ax: Axes | None = None,
    save: str | Path | None = None,
    dpi: int = 100,
    show: bool | None = None,
) -> Figure | None:
    """Plot the training curves of the loss terms: one panel per term, raw and smoothed.

    Each panel shows a term of ``uns[key]["history"]`` (one value per training step) as a thin, light line, and its
    centred moving average as a solid line of the same colour. ``factor_refit`` is the count model's final fit on
    the trained latent space (factors, programs and slice effects; its deviance per step); its panel (or the total
    ``loss`` panel of a run without it, such as a mapped query) says whether that converged: the relative change of
    the mean over the last tenth of the steps against the tenth before, "converged" when it fell by less than 1%%
    (the check :func:`sd_inspire.tl.integrate` writes to ``uns[key]["converged"]``).

    Parameters
    ----------
    %(data)s
    key
        Key of :attr:`~anndata.AnnData.uns` written by :func:`sd_inspire.tl.integrate` (its ``key_added``).
    terms
        Term or terms to draw, in this order; ``None`` draws every term recorded per step (entries whose names
        start with ``_``, such as the training time ``"_seconds"``, are left out) in a fixed order: the total
        ``loss``, ``poisson`` (the count likelihood), the other terms of the objective, then any other.
    %(table_key)s
    smooth
        Width in steps of the moving average (shrunk at both ends of the curve); ``None`` takes about 5%% of the
        steps; ``0`` or ``1`` draws the raw curves only.
    log
        Logarithmic y axes for the terms whose values are all positive (others keep a linear axis).
    ncols
        Panels per row.
    panel_size
        Width and height of a panel in inches.
    %(ax)s
    %(save)s

    Returns
    -------
    ``None`` when the figure is shown (see ``show``); else the matplotlib figure, one axis per term titled with its
    name. Its lines are the raw curve (x: steps from 1) and, when smoothing, the moving average.

    Raises
    ------
    KeyError
        If ``uns[key]`` or its ``"history"`` is missing, or a term is not in it.

    Examples
    --------
    >>> import numpy as np
    >>> from anndata import AnnData
    >>> import sd_inspire as si
    >>> adata = AnnData(np.zeros((2, 2), dtype=np.float32))
    >>> steps = np.arange(100)
    >>> adata.uns["inspire"] = {"history": {"poisson": 5 * np.exp(-steps / 20), "prior": 1 / (1 + steps)}}
    >>> fig = si.pl.history(adata, smooth=9, show=False)
    >>> [ax.get_title() for ax in fig.axes], len(fig.axes[0].lines)
    (['poisson', 'prior'], 2)
    """
    given = ax  # the panels' loops below reuse the name `ax`
    adata = get_table(data, table_key)
    record = require(adata.uns, key, "uns", "history", "tl.integrate")
    if not hasattr(record, "keys") or "history" not in record:
        raise KeyError(
            f"`adata.uns[{key!r}]` holds no training history (`'history'`): run `sd_inspire.tl.integrate` first."
        )
    curves = {str(k): np.asarray(v, dtype=np.float64).ravel() for k, v in record["history"].items()}
    if terms is None:  # the same order in every run (a store read back may list them alphabetically)
        recorded = [k for k in curves if not k.startswith("_")]
        names = [k for k in _ORDER if k in recorded] + sorted(k for k in recorded if k not in _ORDER)
    else:
        names = [terms] if isinstance(terms, str) else list(terms)
        unknown = [t for t in names if t not in curves]
        if unknown:
            raise KeyError(f"Terms {unknown} are not in `adata.uns[{key!r}]['history']`; it holds {list(curves)}.")
    if not names:
        raise ValueError(f"`adata.uns[{key!r}]['history']` holds no loss terms to plot.")
    fig, axes = panel_grid(
        len(names), ncols, (panel_size, panel_size * 0.8), ax=given, what="terms (`terms=`)", layout="constrained"
    )
    for i, (ax, name) in enumerate(zip(axes, names, strict=True)):
        y = curves[name]
        steps = np.arange(1, len(y) + 1)
        window = max(1, round(len(y) / 20)) if smooth is None else smooth
        colour = f"C{i % 10}"
        if window > 1:
            ax.plot(steps, y, color=colour, lw=0.6, alpha=0.35, label="raw")
            ax.plot(steps, moving_average(y, window), color=colour, lw=1.5, label=f"smoothed ({window} steps)")
        else:
            ax.plot(steps, y, color=colour, lw=1.0, label="raw")
        finite = y[np.isfinite(y)]
        if log and finite.size and (finite > 0).all():
            ax.set_yscale("log")
        judged = name == judged_curve(curves)  # the curve the convergence check reads
        ax.set_title(f"{name}\n{_verdict(y)}" if judged else name, fontsize="medium" if judged else None)
        ax.set_xlabel("step of the final fit" if name == REFIT_KEY else "training step")
        ax.set_ylabel({"loss": "total loss", REFIT_KEY: "count deviance"}.get(name, "loss term"))
    axes[0].legend(fontsize="small", frameon=False)
    return finish(fig, save, dpi, show, given)


def _verdict(loss: np.ndarray) -> str:
    """The convergence check of training (:func:`sd_inspire._utils.convergence`) in words, for the loss panel."""
    check = convergence(loss)
    if np.isnan(check["loss_change"]):
        return "too few steps to judge"
    change = f"{100 * check['loss_change']:+.1f}% in last tenth"
    return f"converged ({change})" if check["converged"] else f"still falling ({change})"


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of ``window`` values, shrunk at the ends; NaN and infinite values are skipped."""
    ok = np.isfinite(y)
    sums = np.concatenate([[0.0], np.cumsum(np.where(ok, y, 0.0))])
    counts = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(len(y))
    lo = np.clip(i - (window - 1) // 2, 0, len(y))
    hi = np.clip(i + window // 2 + 1, 0, len(y))
    n = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), np.nan)
