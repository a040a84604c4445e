"""Regression metrics: Spearman and Pearson correlation, mean absolute error (also over resamples).

``y`` (n,) observed values and ``pred`` (n,) predictions, in the target's own units. Spearman's ρ
is the Pearson correlation of the ranks (average ranks for ties), so it only asks whether the
model *orders* patients like the target; Pearson's r asks for a linear relation; the MAE is in the
target's units. A correlation is undefined (NaN) when either side is constant.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of (B, m) arrays; NaN where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    num = (a * b).sum(axis=1)
    # a constant row has a (numerically) zero norm: undefined, not a huge ratio of rounding errors
    tiny = 1e-12 * np.maximum(np.abs(num), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > tiny, num / np.where(den > tiny, den, 1.0), np.nan)


def pearson(y: np.ndarray, pred: np.ndarray) -> float:
    """Pearson's r of predictions and observed values; NaN when either is constant."""
    return float(_row_pearson(np.asarray(y, np.float64)[None], np.asarray(pred, np.float64)[None])[0])


def spearman(y: np.ndarray, pred: np.ndarray) -> float:
    """Spearman's ρ (Pearson's r of average ranks); NaN when either side is constant."""
    return float(spearman_rows(y, pred, np.arange(len(np.asarray(y)))[None])[0])


def mae(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error ``mean |pred - y|`` in the target's units."""
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - np.asarray(y, np.float64))))


def spearman_rows(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Spearman's ρ of many resamples at once.

    Args:
        y: (n,) observed values.
        pred: (n,) predictions.
        idx: (B, m) indices, one resample per row (repeats are ties, ranked on average).

    Returns:
        (B,) ρ per resample; NaN where a resample is constant on either side.
    """
    idx = np.asarray(idx, dtype=np.int64)
    yy = np.asarray(y, np.float64)[idx]
    pp = np.asarray(pred, np.float64)[idx]
    return _row_pearson(rankdata(yy, axis=1), rankdata(pp, axis=1))


def quantile_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """(n,) equal-count bin index 0 .. n_bins-1 of each value (by rank; ties split by position).

    The strata of a regression target: splitting and the bootstrap keep each fold's share of low,
    middle and high values.
    """
    v = np.asarray(values, dtype=np.float64)
    rank = np.argsort(np.argsort(v, kind="stable"), kind="stable")
    return np.minimum(rank * n_bins // max(len(v), 1), n_bins - 1)
