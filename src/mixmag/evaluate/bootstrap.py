"""Bootstrap confidence intervals and paired bootstrap comparisons of two methods (any metric).

Resampling is **stratified**: patients are drawn with replacement *within each stratum* (for
AUROC the class; and, for the paired fold-wise statistic, within each fold and stratum), so every
resample keeps the observed class counts and the AUROC is always defined. This is the default of
pROC (Robin et al. 2011) and avoids silently discarding degenerate resamples. Intervals are
percentile intervals.

Two statistics are used (see ``docs/concepts/evaluation.md``):

- :func:`bootstrap_auroc_ci` / :func:`bootstrap_ci`: CI of the metric of the *pooled* out-of-fold
  predictions.
- :func:`paired_bootstrap`: CI and two-sided p-value of ``metric(b) - metric(a)`` on the same
  patients. With ``folds`` it resamples within each test fold and uses the *mean of per-fold
  values*, the number the comparison table reports; without it, the pooled value.

Every function defaults to AUROC; the other endpoints' metrics (Spearman's ρ, Harrell's C-index)
come in as a :class:`Metric`: a point function, a vectorised resample function and the strata
(:data:`mixmag.evaluate.endpoints.ENDPOINT_METRICS` holds one per endpoint).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mixmag.evaluate.metrics import auroc, auroc_rows


def _auroc_or_nan(y: np.ndarray, prob: np.ndarray) -> float:
    return auroc(y, prob, on_single_class="nan")


def _class_strata(y: np.ndarray) -> np.ndarray:
    return np.asarray(y).astype(np.int64)


@dataclass(frozen=True)
class Metric:
    """What the bootstrap needs of a metric.

    Attributes:
        name: Key in statistic names (``auroc``, ``spearman``, ``cindex``).
        score: ``(truth, pred) -> float``, NaN where undefined (e.g. one class).
        score_rows: ``(truth, pred, idx (B, m)) -> (B,)`` the same over resamples.
        strata: ``truth -> (n,) int`` stratum of each item (resampling keeps stratum sizes).
    """

    name: str
    score: Callable[[np.ndarray, np.ndarray], float]
    score_rows: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    strata: Callable[[np.ndarray], np.ndarray]


#: AUROC (binary, or macro one-vs-rest), stratified by class: the default of every function here.
AUROC_METRIC = Metric("auroc", _auroc_or_nan, auroc_rows, _class_strata)


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    lo: float
    hi: float
    n_boot: int
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


@dataclass(frozen=True)
class PairedResult:
    """Paired comparison ``b - a`` of two methods on the same patients."""

    delta: float
    lo: float
    hi: float
    p_value: float
    n_boot: int
    statistic: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def stratified_indices(strata: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap index matrix resampling with replacement inside every stratum.

    Args:
        strata: (n,) stratum label per item (e.g. class, or fold * C + class).
        n_boot: Number of resamples B.
        rng: Random generator (the caller owns the seed).

    Returns:
        (B, n) int64 indices; row b is one resample, with each stratum keeping its size and position.
    """
    strata = np.asarray(strata)
    idx = np.empty((n_boot, len(strata)), dtype=np.int64)
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        idx[:, members] = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
    return idx


def bootstrap_auroc_ci(y: np.ndarray, prob: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                       alpha: float = 0.05) -> BootstrapCI:
    """Percentile CI of the AUROC of pooled predictions, resampling patients within class.

    Args:
        y: (n,) integer class indices.
        prob: (n,) or (n, C) probabilities.
        n_boot: Resamples; 0 gives NaN bounds.
        seed: Seed of the resampling generator.
        alpha: 1 - confidence level (0.05 -> 95 % CI).
    """
    y = np.asarray(y).astype(np.int64)
    auroc(y, prob)  # raises on a single class, as it always did
    return bootstrap_ci(y, prob, n_boot=n_boot, seed=seed, alpha=alpha)


def bootstrap_ci(truth: np.ndarray, pred: np.ndarray, *, metric: Metric = AUROC_METRIC, n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> BootstrapCI:
    """Percentile CI of ``metric`` of pooled predictions, resampling patients within its strata.

    Args:
        truth: The endpoint's truth: (n,) class indices or values, or (n, 2) time and event.
        pred: (n,) or (n, C) predictions.
        metric: The metric (default AUROC, stratified by class).
        n_boot: Resamples; 0 gives NaN bounds.
        seed: Seed of the resampling generator.
        alpha: 1 - confidence level (0.05 -> 95 % CI).
    """
    estimate = metric.score(truth, pred)
    if n_boot <= 0:
        return BootstrapCI(estimate, float("nan"), float("nan"), 0, alpha)
    idx = stratified_indices(metric.strata(truth), n_boot, np.random.default_rng(seed))
    samples = metric.score_rows(truth, pred, idx)
    if not np.isfinite(samples).any():
        return BootstrapCI(estimate, float("nan"), float("nan"), n_boot, alpha)
    lo, hi = np.nanquantile(samples, [alpha / 2, 1 - alpha / 2])
    return BootstrapCI(estimate, float(lo), float(hi), n_boot, alpha)


def _statistic_rows(truth: np.ndarray, pred: np.ndarray, idx: np.ndarray, folds: np.ndarray | None,
                    metric: Metric) -> np.ndarray:
    """(B,) statistic of each resample: pooled value, or mean of per-fold values."""
    if folds is None:
        return metric.score_rows(truth, pred, idx)
    per_fold = []
    for fold in np.unique(folds):
        # with fold-stratified resampling, the columns of a fold only ever hold that fold's items
        cols = np.flatnonzero(folds == fold)
        per_fold.append(metric.score_rows(truth, pred, idx[:, cols]))
    with warnings.catch_warnings():  # a single-class fold is NaN in every row and left out
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack(per_fold, axis=1), axis=1)


def _point(truth: np.ndarray, pred: np.ndarray, folds: np.ndarray | None, metric: Metric) -> float:
    if folds is None:
        return metric.score(truth, pred)
    values = [metric.score(truth[folds == f], np.asarray(pred)[folds == f]) for f in np.unique(folds)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values))


def paired_bootstrap(y: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray, *,
                     folds: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                     alpha: float = 0.05, metric: Metric = AUROC_METRIC) -> PairedResult:
    """Paired bootstrap of ``metric(b) - metric(a)``: both methods are scored on the same resamples.

    The two-sided p-value inverts the percentile interval,
    ``p = min(1, 2 * min(#(d* <= 0) + 1, #(d* >= 0) + 1) / (B + 1))``, i.e. the smallest level at
    which the interval excludes 0 (the +1 keeps p > 0 with finitely many resamples).

    Args:
        y: The truth of the shared patients: (n,) class indices (AUROC), values (Spearman), or
            (n, 2) time and event (C-index).
        prob_a: (n,) or (n, C) predictions of the reference method.
        prob_b: Same shape, the compared method, rows aligned with ``prob_a``.
        folds: Optional (n,) test-fold of each patient: statistic = mean of per-fold values and
            resampling within fold and stratum; None: pooled value, resampling within stratum.
        n_boot: Resamples B (0: point estimate only, NaN interval and p-value).
        seed: Seed of the resampling generator.
        alpha: 1 - confidence level.
        metric: The metric (default AUROC, strata = classes).
    """
    if metric is AUROC_METRIC:
        y = np.asarray(y).astype(np.int64)
        if folds is None:
            auroc(y, prob_b)  # a single class raises, as it always did
    prob_a, prob_b = np.asarray(prob_a), np.asarray(prob_b)
    if prob_a.shape != prob_b.shape or len(prob_a) != len(y):
        raise ValueError(f"paired comparison needs aligned predictions: {prob_a.shape} vs {prob_b.shape} "
                         f"for {len(y)} labels")
    fold_arr = None if folds is None else np.asarray(folds)
    statistic = f"pooled_{metric.name}" if fold_arr is None else f"mean_fold_{metric.name}"
    delta = _point(y, prob_b, fold_arr, metric) - _point(y, prob_a, fold_arr, metric)
    if n_boot <= 0:
        return PairedResult(float(delta), float("nan"), float("nan"), float("nan"), 0, statistic)
    own = metric.strata(y)
    n_strata = int(own.max()) + 1
    strata = own if fold_arr is None else np.unique(fold_arr, return_inverse=True)[1] * n_strata + own
    idx = stratified_indices(strata, n_boot, np.random.default_rng(seed))
    d = _statistic_rows(y, prob_b, idx, fold_arr, metric) - _statistic_rows(y, prob_a, idx, fold_arr, metric)
    d = d[np.isfinite(d)]
    if len(d) == 0:  # the metric is undefined on every resample (e.g. a constant prediction)
        return PairedResult(float(delta), float("nan"), float("nan"), float("nan"), 0, statistic)
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    below = int((d <= 0).sum()) + 1
    above = int((d >= 0).sum()) + 1
    p = min(1.0, 2.0 * min(below, above) / (len(d) + 1))
    return PairedResult(float(delta), float(lo), float(hi), float(p), int(len(d)), statistic)
