"""``tl.differential_factors``: differences in factor usage between conditions, with samples as the replicates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from sd_inspire._docs import d
from sd_inspire._logging import log_added, logger
from sd_inspire._utils import factor_label, get_table, is_spatialdata, maybe_copy
from sd_inspire._validate import check_choice
from sd_inspire.io._write import check_table_matches_store, write_table_into_store
from sd_inspire.tl.metrics import _missing

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

#: Smallest usage on the logit scale: a sample mean below it is taken as this (a factor a sample hardly uses).
_MIN_USAGE = 1e-6
_TRANSFORMS = ("logit", "arcsine", "none")


@d.dedent
def differential_factors(
    data: AnnData | SpatialData,
    *,
    condition_key: str,
    sample_key: str,
    reference: str | None = None,
    key: str = "inspire",
    transform: Literal["logit", "arcsine", "none"] = "logit",
    moderated: bool = False,
    table_key: str | None = None,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Which factors are used more, or less, in one condition than in another, with samples as the replicates.

    A factor's usage by a sample is the mean of its proportion (``obsm[f"{key}_factors"]``) over the sample's
    spots. Spots of one sample are not independent replicates (a slice, or a donor's slices, share a tissue, a run
    and a batch), so the samples are: for each factor, a linear model of the samples' transformed usage on the
    condition (one mean per condition, the residual variance pooled over all conditions, as limma and propeller
    do), and each condition is compared with ``reference`` by a two-sided t-test. P-values are adjusted by
    Benjamini-Hochberg over every factor and comparison. Each condition needs at least two samples; three or more
    per condition give the test useful power.

    With ``moderated=True``, each factor's variance is drawn towards the variance common to all factors by limma's
    empirical Bayes (Smyth 2004: a scaled inverse chi-square prior whose degrees of freedom are estimated from the
    spread of the factors' variances), and the moderated t-statistic has the prior's degrees of freedom added. It
    is more powerful, but a prior estimated from some twenty factors is rough: on null simulations (six simulated
    sections, every 3 + 3 split, ``benchmarks/differential.py``) 9% of the splits had a factor called against 6%
    for the ordinary t-test (whose raw p-values were below 0.05 for 5.4% of the tests), so it is not the default.

    Parameters
    ----------
    %(data)s
    condition_key
        Column of ``obs`` with the condition of each spot (e.g. disease, control). Every spot of a sample must have
        the same condition.
    sample_key
        Column of ``obs`` with the sample (replicate) of each spot: a slice, or a donor with several slices. Spots
        whose sample or condition is missing (``NaN``) are left out.
    reference
        The condition the others are compared with; ``None``: the first of ``obs[condition_key]``'s categories
        (sorted values for a column that is not categorical).
    key
        Stem of the keys written by :func:`sd_inspire.tl.integrate` or :func:`sd_inspire.tl.map_query`.
    transform
        Scale of the test: ``"logit"`` (default) of the usage, ``"arcsine"`` of its square root, or ``"none"``.
        Usage is a proportion whose variance depends on its mean; both transforms make it more nearly constant.
        Usages below ``1e-6`` are taken as ``1e-6`` on the logit scale.
    moderated
        Moderate the factors' variances by empirical Bayes (limma's moderated t, see above); ``False``: an ordinary
        t-test per factor, the residual variance pooled over the conditions.
    %(table_key)s
    key_added
        Key of ``uns`` written; ``None``: ``f"{key}_differential"``.
    %(copy)s

    Returns
    -------
    %(copy_returns)s, with ``uns[key_added]``:

    - ``"results"``: a tidy table, one row per factor and condition (other than ``reference``): ``factor``
      (``"factor_k"``), ``condition``, ``reference``, ``usage`` and ``usage_reference`` (mean usage of the
      condition's samples and of the reference's), ``log2_fold_change`` (of those means), ``difference`` (of the
      transformed usage), ``statistic`` (t), ``pvalue``, ``pvalue_adj`` (Benjamini-Hochberg); sorted by
      ``pvalue``;
    - ``"usage"``: the samples' usage (samples x factors) with their condition (column ``condition``);
    - ``"params"``: the keys, ``reference``, ``transform``, ``moderated``, the number of samples per condition, the
      residual degrees of freedom (``dof``) and the prior's (``prior_dof``; 0 without moderation, ``inf`` when every
      factor takes the common variance).

    Raises
    ------
    KeyError
        If ``condition_key``, ``sample_key`` or ``obsm[f"{key}_factors"]`` is missing.
    ValueError
        If a sample has spots of two conditions, a condition has fewer than two samples, there are fewer than two
        conditions, ``reference`` is not one of them, or ``transform`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> import sd_inspire as si
    >>> adata = si.datasets.simulate(6, n_spots=150, n_genes=120, output="anndata")
    >>> adata.obsm["inspire_factors"] = np.random.default_rng(0).dirichlet(np.ones(4), adata.n_obs)
    >>> adata.obs["condition"] = np.where(adata.obs["slice"].isin(["slice0", "slice1", "slice2"]), "control", "case")
    >>> si.tl.differential_factors(adata, condition_key="condition", sample_key="slice", reference="control")
    >>> adata.uns["inspire_differential"]["results"].shape
    (4, 10)
    """
    adata = maybe_copy(get_table(data, table_key), copy)
    if not copy:
        check_table_matches_store(data, adata, table_key)  # before the work, not after it
    key_added = key_added or f"{key}_differential"
    beta = _factor_proportions(adata, condition_key, sample_key, key, transform)
    usage, condition_of = _sample_usage(beta, adata.obs[condition_key], adata.obs[sample_key], condition_key)
    order, per_condition, reference = _conditions(
        adata.obs[condition_key], condition_of, condition_key, sample_key, reference
    )
    values = _transformed(usage.to_numpy(), transform)
    groups = condition_of.to_numpy()
    means, variance, dof, prior_dof = _linear_model(values, groups, order, moderated)
    results = _comparisons(
        usage, groups, means, variance, dof + prior_dof, order=order, reference=reference, per_condition=per_condition
    )
    table = usage.copy()
    table.insert(0, "condition", pd.Categorical([str(c) for c in groups], categories=[str(c) for c in order]))
    table.index = table.index.astype(str)
    adata.uns[key_added] = {
        "results": results,
        "usage": table,
        "params": {
            "condition_key": condition_key,
            "sample_key": sample_key,
            "key": key,
            "reference": str(reference),
            "transform": transform,
            "n_samples": {str(c): int(per_condition[c]) for c in order},
            "moderated": bool(moderated),
            "dof": int(dof),
            "prior_dof": float(prior_dof),
        },
    }
    found = results[results["pvalue_adj"] < 0.05]
    logger.info(
        "Differential factors: %d samples in %d conditions; %d of %d tests with adjusted p < 0.05%s",
        values.shape[0],
        len(order),
        len(found),
        len(results),
        (": " + ", ".join(f"{r.factor} ({r.condition})" for r in found.itertuples())) if len(found) else "",
    )
    log_added("uns", key_added)
    if not copy and is_spatialdata(data):
        write_table_into_store(data, adata, table_key)  # a store-backed SpatialData keeps the result
    return adata if copy else None


def _factor_proportions(adata: AnnData, condition_key: str, sample_key: str, key: str, transform: str) -> np.ndarray:
    """The spots' factor proportions ``obsm[f"{key}_factors"]``, after checking the arguments that name columns."""
    check_choice(transform, "transform", _TRANSFORMS)
    for name, column in (("condition_key", condition_key), ("sample_key", sample_key)):
        if column not in adata.obs:
            raise KeyError(f"No column {column!r} in `adata.obs` for `{name}` (columns: {list(adata.obs.columns)}).")
    factors_key = f"{key}_factors"
    if factors_key not in adata.obsm:
        raise KeyError(
            f"`adata.obsm[{factors_key!r}]` is missing: run `sd_inspire.tl.integrate` (or `tl.map_query`) first, or "
            "pass the `key` its results were written under."
        )
    return np.asarray(adata.obsm[factors_key], dtype=np.float64)


def _conditions(
    column: pd.Series, condition_of: pd.Series, condition_key: str, sample_key: str, reference: str | None
) -> tuple[list, pd.Series, str]:
    """The conditions in order, the samples per condition and the reference; errors for what cannot be tested."""
    conditions = list(pd.unique(condition_of.to_numpy()))
    order = _condition_order(column, conditions)
    if len(order) < 2:
        raise ValueError(
            f"`obs[{condition_key!r}]` holds one condition ({order[0]!r}): at least two are needed to compare."
        )
    per_condition = condition_of.value_counts()
    few = {str(c): int(per_condition[c]) for c in order if per_condition[c] < 2}
    if few:
        raise ValueError(
            f"Conditions with fewer than two samples (`obs[{sample_key!r}]`) cannot be tested, the samples being the "
            f"replicates: {few}."
        )
    reference = order[0] if reference is None else reference
    if reference not in order:
        raise ValueError(f"`reference` {reference!r} is not a condition of `obs[{condition_key!r}]`: {order}.")
    return order, per_condition, reference


def _linear_model(
    values: np.ndarray, groups: np.ndarray, order: list, moderated: bool
) -> tuple[dict, np.ndarray, int, float]:
    """One mean per condition and the residual variance of each factor (pooled, moderated on request).

    Returns the means, the variances, the residual degrees of freedom and the prior's (0 without moderation).
    """
    means = {c: values[groups == c].mean(axis=0) for c in order}  # on the test's scale
    residuals = values - np.vstack([means[c] for c in groups])
    dof = values.shape[0] - len(order)
    if dof < 1:
        raise ValueError(
            f"{values.shape[0]} samples in {len(order)} conditions leave no degree of freedom for the variance."
        )
    variance = (residuals**2).sum(axis=0) / dof
    prior_dof, prior_variance = _variance_prior(variance, dof) if moderated else (0.0, 0.0)
    if np.isinf(prior_dof):  # the factors' variances spread no more than sampling allows: the common one for all
        variance = np.full_like(variance, prior_variance)
    elif prior_dof > 0:  # empirical Bayes: each factor's variance drawn towards the factors' common one
        variance = (prior_dof * prior_variance + dof * variance) / (prior_dof + dof)
    return means, variance, dof, prior_dof


def _comparisons(
    usage: pd.DataFrame,
    groups: np.ndarray,
    means: dict,
    variance: np.ndarray,
    test_dof: float,
    *,
    order: list,
    reference: str,
    per_condition: pd.Series,
) -> pd.DataFrame:
    """Every condition against ``reference``, factor by factor: the ``results`` table, sorted by p-value."""
    from scipy import stats

    usages = {c: usage.to_numpy()[groups == c].mean(axis=0) for c in order}  # as proportions
    names = list(usage.columns)
    rows = []
    for condition in (c for c in order if c != reference):
        n_c, n_r = int(per_condition[condition]), int(per_condition[reference])
        difference = means[condition] - means[reference]
        se = np.sqrt(variance * (1.0 / n_c + 1.0 / n_r))
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(se > 0, difference / se, np.where(difference == 0, 0.0, np.sign(difference) * np.inf))
        p = 2.0 * (stats.norm.sf(np.abs(t)) if np.isinf(test_dof) else stats.t.sf(np.abs(t), test_dof))
        raw_c, raw_r = usages[condition], usages[reference]
        lfc = np.log2(np.maximum(raw_c, _MIN_USAGE) / np.maximum(raw_r, _MIN_USAGE))
        rows.append(
            pd.DataFrame(
                {
                    "factor": names,
                    "condition": str(condition),
                    "reference": str(reference),
                    "usage": raw_c,
                    "usage_reference": raw_r,
                    "log2_fold_change": lfc,
                    "difference": difference,
                    "statistic": t,
                    "pvalue": p,
                }
            )
        )
    results = pd.concat(rows, ignore_index=True)
    results["pvalue_adj"] = stats.false_discovery_control(results["pvalue"].to_numpy(), method="bh")
    return results.sort_values(["pvalue", "condition", "factor"], kind="stable").reset_index(drop=True)


def _sample_usage(
    beta: np.ndarray, conditions: pd.Series, samples: pd.Series, condition_key: str
) -> tuple[pd.DataFrame, pd.Series]:
    """Mean factor proportions per sample (samples x factors, ``factor_k`` columns) and each sample's condition."""
    keep = ~(_missing(conditions.to_numpy(dtype=object)) | _missing(samples.to_numpy(dtype=object)))
    if not keep.any():
        raise ValueError("No spot has both a sample and a condition.")
    if not keep.all():
        logger.info("Differential factors: %d spots without a sample or a condition left out", int((~keep).sum()))
    sample = samples[keep].astype(str).to_numpy()
    pairs = pd.DataFrame({"sample": sample, "condition": conditions[keep].to_numpy(dtype=object)}).drop_duplicates()
    mixed = pairs["sample"][pairs["sample"].duplicated()].unique()
    if mixed.size:
        first = str(mixed[0])
        raise ValueError(
            f"{mixed.size} samples have spots of several conditions in `obs[{condition_key!r}]` (e.g. {first!r}: "
            f"{sorted(map(str, pairs.loc[pairs['sample'] == first, 'condition']))}): a sample belongs to one "
            "condition."
        )
    names = list(dict.fromkeys(sample))
    codes = pd.Index(names).get_indexer(sample)
    sums = np.zeros((len(names), beta.shape[1]))
    np.add.at(sums, codes, beta[keep])
    usage = pd.DataFrame(
        sums / np.bincount(codes, minlength=len(names))[:, None],
        index=pd.Index(names, name="sample"),
        columns=[factor_label(k) for k in range(beta.shape[1])],
    )
    condition_of = pairs.set_index("sample")["condition"].reindex(names)
    return usage, condition_of


def _condition_order(column: pd.Series, present: list) -> list:
    """Conditions in the column's category order (sorted values otherwise), those with samples only."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return [c for c in column.cat.categories if c in set(present)]
    try:
        return sorted(present)
    except TypeError:
        return sorted(present, key=str)


def _transformed(usage: np.ndarray, transform: str) -> np.ndarray:
    """Usage on the test's scale."""
    if transform == "logit":
        u = np.clip(usage, _MIN_USAGE, 1.0 - _MIN_USAGE)
        return np.log(u / (1.0 - u))
    if transform == "arcsine":
        return np.arcsin(np.sqrt(np.clip(usage, 0.0, 1.0)))
    return usage


def _variance_prior(variance: np.ndarray, dof: int) -> tuple[float, float]:
    """Degrees of freedom and scale of the scaled inverse chi-square prior of the variances (Smyth 2004, section 6).

    The log-variances, corrected for their expected bias, have a spread of ``trigamma(dof / 2)`` from sampling
    alone; what spreads beyond it is the prior's, ``trigamma(prior_dof / 2)``. Returns ``(0, 0)`` when fewer than
    three variances are positive (no estimate), ``(inf, common)`` when they spread no more than sampling allows.
    """
    from scipy import special

    positive = variance[variance > 1e-12]
    if positive.size < 3:
        return 0.0, 0.0
    half = dof / 2.0
    e = np.log(positive) - special.digamma(half) + np.log(half)
    mean = e.mean()
    excess = ((e - mean) ** 2).sum() / (positive.size - 1) - special.polygamma(1, half)
    if excess <= 0:
        return np.inf, float(np.exp(mean))
    prior_half = _inverse_trigamma(excess)
    return 2.0 * prior_half, float(np.exp(mean + special.digamma(prior_half) - np.log(prior_half)))


def _inverse_trigamma(y: float) -> float:
    """``x`` with ``trigamma(x) = y`` (Newton's method from ``0.5 + 1 / y``, as limma does)."""
    from scipy import special

    if y > 1e7:
        return 1.0 / np.sqrt(y)
    if y < 1e-6:
        return 1.0 / y
    x = 0.5 + 1.0 / y
    for _ in range(50):
        tri = special.polygamma(1, x)
        step = tri * (1.0 - tri / y) / special.polygamma(2, x)
        x += step
        if -step / x < 1e-8:
            break
    return float(x)
