"""AUROC for binary and multi-class bags, per fold and vectorised over bootstrap resamples.

Conventions used everywhere in mixmag:

- ``y`` holds integer class indices ``0 .. C-1`` (the class *names* live in the run's metrics JSON).
- ``prob`` is ``(n,)`` (probability of class 1) for binary tasks or ``(n, C)`` class probabilities.
- Multi-class AUROC is the unweighted mean of the one-vs-rest AUROCs (sklearn's
  ``multi_class="ovr", average="macro"``), which is insensitive to class prevalence.

:func:`auroc` is the reference (it calls scikit-learn). :func:`auroc_rows` computes the same value
for many resamples at once from ranks (Mann-Whitney U), which is what makes 1,000-sample bootstraps
over every method and task cheap.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from mixmag.errors import MixmagValueError

logger = logging.getLogger(__name__)


def as_prob_matrix(prob: np.ndarray, n_classes: int) -> np.ndarray:
    """Return ``(n, C)`` class probabilities from ``(n,)`` binary or ``(n, C)`` input."""
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim == 1:
        if n_classes != 2:
            raise ValueError(f"1-D probabilities only make sense for 2 classes, not {n_classes}")
        return np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(f"expected probabilities of shape (n, {n_classes}), got {p.shape}")
    return p


def _n_classes(y: np.ndarray, prob: np.ndarray) -> int:
    return 2 if np.ndim(prob) == 1 else int(np.shape(prob)[1])


def auroc(y: np.ndarray, prob: np.ndarray, *, on_single_class: str = "raise") -> float:
    """Area under the ROC curve (macro one-vs-rest for more than two classes).

    Args:
        y: (n,) integer class indices.
        prob: (n,) probability of class 1, or (n, C) class probabilities.
        on_single_class: ``"raise"`` (default) or ``"nan"`` when ``y`` holds fewer than two classes,
            where the AUROC is undefined.

    Returns:
        AUROC in [0, 1].
    """
    y = np.asarray(y).astype(np.int64)
    n_classes = _n_classes(y, prob)
    present = np.unique(y)
    if len(present) < 2:
        if on_single_class == "nan":
            return float("nan")
        raise MixmagValueError(f"AUROC is undefined: only class {present.tolist()} is present among {len(y)} labels")
    p = as_prob_matrix(prob, n_classes)
    if n_classes == 2:
        return float(roc_auc_score(y, p[:, 1]))
    # one-vs-rest per class; a class absent from this subset contributes nothing (sklearn would raise)
    scores = [roc_auc_score(y == c, p[:, c]) for c in range(n_classes) if 0 < (y == c).sum() < len(y)]
    return float(np.mean(scores))


def _binary_auroc_rows(pos: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each row: ``pos`` (B, n) bool labels, ``scores`` (B, n); NaN where a row is one class."""
    ranks = rankdata(scores, axis=1)  # average ranks handle ties exactly like sklearn's trapezoids
    n_pos = pos.sum(axis=1).astype(np.float64)
    n_neg = pos.shape[1] - n_pos
    u = (ranks * pos).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return u / (n_pos * n_neg)


def auroc_rows(y: np.ndarray, prob: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AUROC of many resamples at once.

    Args:
        y: (n,) integer class indices.
        prob: (n,) or (n, C) probabilities.
        idx: (B, m) integer indices into ``y``/``prob``: one resample per row.

    Returns:
        (B,) AUROC per resample (macro one-vs-rest for multi-class); NaN for single-class rows.
    """
    y = np.asarray(y).astype(np.int64)
    n_classes = _n_classes(y, prob)
    p = as_prob_matrix(prob, n_classes)
    yy = y[idx]
    if n_classes == 2:
        return _binary_auroc_rows(yy == 1, p[idx, 1])
    per_class = np.stack([_binary_auroc_rows(yy == c, p[idx, c]) for c in range(n_classes)], axis=1)
    with warnings.catch_warnings():  # all-NaN rows (no class present twice) stay NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_class, axis=1)


def fold_aurocs(y: np.ndarray, prob: np.ndarray, folds: np.ndarray) -> dict[int, float]:
    """AUROC of each test fold; NaN (with a warning) for a fold whose labels are all one class."""
    out: dict[int, float] = {}
    y = np.asarray(y)
    folds = np.asarray(folds)
    prob = np.asarray(prob)
    for fold in sorted(np.unique(folds).tolist()):
        sel = folds == fold
        value = auroc(y[sel], prob[sel], on_single_class="nan")
        if np.isnan(value):
            logger.warning("fold %d: its %d test bags are all one class, so its AUROC is undefined and "
                           "left out of the mean", fold, int(sel.sum()))
        out[int(fold)] = value
    return out


def summarize_folds(values: Mapping[int, float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over the defined per-fold values."""
    arr = np.asarray([v for v in values.values() if np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    sd = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
    return float(arr.mean()), sd


def balanced_accuracy(y: np.ndarray, prob: np.ndarray) -> float:
    """Mean per-class recall of the most probable class (sklearn's ``balanced_accuracy_score``).

    Chance is 1 / C whatever the class sizes. Classes absent from ``y`` are left out of the mean.

    Args:
        y: (n,) integer class indices.
        prob: (n,) probability of class 1, or (n, C) class probabilities.
    """
    y = np.asarray(y).astype(np.int64)
    p = as_prob_matrix(prob, _n_classes(y, prob))
    predicted = p.argmax(axis=1)
    recalls = [float((predicted[y == c] == c).mean()) for c in np.unique(y)]
    return float(np.mean(recalls)) if recalls else float("nan")
