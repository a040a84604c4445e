"""Bootstrap confidence intervals for AUROC and paired bootstrap comparisons of two methods.

Resampling is **stratified**: patients are drawn with replacement *within each class* (and, for the
paired fold-wise statistic, within each fold and class), so every resample keeps the observed class
counts and the AUROC is always defined. This is the default of pROC (Robin et al. 2011) and avoids
silently discarding degenerate resamples. Intervals are percentile intervals.

Two statistics are used (see ``docs/concepts/evaluation.md``):

- :func:`bootstrap_auroc_ci`: CI of the AUROC of the *pooled* out-of-fold predictions.
- :func:`paired_bootstrap`: CI and two-sided p-value of ``AUROC(b) - AUROC(a)`` on the same patients.
  With ``folds`` it resamples within each test fold and uses the *mean of per-fold AUROCs*, the
  number the comparison table reports; without it, the pooled AUROC.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mixmag.evaluate.metrics import auroc, auroc_rows


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
    estimate = auroc(y, prob)
    if n_boot <= 0:
        return BootstrapCI(estimate, float("nan"), float("nan"), 0, alpha)
    idx = stratified_indices(y, n_boot, np.random.default_rng(seed))
    samples = auroc_rows(y, prob, idx)
    lo, hi = np.nanquantile(samples, [alpha / 2, 1 - alpha / 2])
    return BootstrapCI(estimate, float(lo), float(hi), n_boot, alpha)


def _statistic_rows(y: np.ndarray, prob: np.ndarray, idx: np.ndarray, folds: np.ndarray | None
                    ) -> np.ndarray:
    """(B,) statistic of each resample: pooled AUROC, or mean of per-fold AUROCs."""
    if folds is None:
        return auroc_rows(y, prob, idx)
    per_fold = []
    for fold in np.unique(folds):
        # with fold-stratified resampling, the columns of a fold only ever hold that fold's items
        cols = np.flatnonzero(folds == fold)
        per_fold.append(auroc_rows(y, prob, idx[:, cols]))
    with warnings.catch_warnings():  # a single-class fold is NaN in every row and left out
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack(per_fold, axis=1), axis=1)


def _point(y: np.ndarray, prob: np.ndarray, folds: np.ndarray | None) -> float:
    if folds is None:
        return auroc(y, prob)
    values = [auroc(y[folds == f], np.asarray(prob)[folds == f], on_single_class="nan")
              for f in np.unique(folds)]
    return float(np.nanmean(values))


def paired_bootstrap(y: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray, *,
                     folds: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> PairedResult:
    """Paired bootstrap of ``AUROC(b) - AUROC(a)``: both methods are scored on the same resamples.

    The two-sided p-value inverts the percentile interval,
    ``p = min(1, 2 * min(#(d* <= 0) + 1, #(d* >= 0) + 1) / (B + 1))``, i.e. the smallest level at
    which the interval excludes 0 (the +1 keeps p > 0 with finitely many resamples).

    Args:
        y: (n,) integer class indices of the shared patients.
        prob_a: (n,) or (n, C) probabilities of the reference method.
        prob_b: Same shape, the compared method, rows aligned with ``prob_a``.
        folds: Optional (n,) test-fold of each patient: statistic = mean of per-fold AUROCs and
            resampling within fold and class; None: pooled AUROC, resampling within class.
        n_boot: Resamples B (0: point estimate only, NaN interval and p-value).
        seed: Seed of the resampling generator.
        alpha: 1 - confidence level.
    """
    y = np.asarray(y).astype(np.int64)
    prob_a, prob_b = np.asarray(prob_a), np.asarray(prob_b)
    if prob_a.shape != prob_b.shape or len(prob_a) != len(y):
        raise ValueError(f"paired comparison needs aligned predictions: {prob_a.shape} vs {prob_b.shape} "
                         f"for {len(y)} labels")
    fold_arr = None if folds is None else np.asarray(folds)
    statistic = "pooled_auroc" if fold_arr is None else "mean_fold_auroc"
    delta = _point(y, prob_b, fold_arr) - _point(y, prob_a, fold_arr)
    if n_boot <= 0:
        return PairedResult(float(delta), float("nan"), float("nan"), float("nan"), 0, statistic)
    n_classes = int(y.max()) + 1
    strata = y if fold_arr is None else np.unique(fold_arr, return_inverse=True)[1] * n_classes + y
    idx = stratified_indices(strata, n_boot, np.random.default_rng(seed))
    d = _statistic_rows(y, prob_b, idx, fold_arr) - _statistic_rows(y, prob_a, idx, fold_arr)
    d = d[np.isfinite(d)]
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    below = int((d <= 0).sum()) + 1
    above = int((d >= 0).sum()) + 1
    p = min(1.0, 2.0 * min(below, above) / (len(d) + 1))
    return PairedResult(float(delta), float(lo), float(hi), float(p), int(len(d)), statistic)
