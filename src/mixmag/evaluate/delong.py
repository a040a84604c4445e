"""DeLong's test for two correlated AUROCs on the same patients (binary tasks).

DeLong, DeLong & Clarke-Pearson (1988), with the O(n log n) structural components of Sun & Xu
(2014): for every positive ``i`` the placement ``V10_i = P(score_neg < score_i)`` (ties count 1/2)
and for every negative ``j`` ``V01_j = P(score_j < score_pos)``. The AUROCs are the means of the
placements; their covariance is ``S10 / m + S01 / n`` (m positives, n negatives), and
``z = (auc_b - auc_a) / sqrt(var_a + var_b - 2 cov_ab)`` is compared with a standard normal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata

from mixmag.errors import MixmagValueError


@dataclass(frozen=True)
class DeLongResult:
    """Result of :func:`delong_test` (``delta = auc_b - auc_a``)."""

    auc_a: float
    auc_b: float
    delta: float
    se: float
    z: float
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def placements(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong structural components of one score.

    Args:
        y: (n,) binary labels (1 = positive).
        score: (n,) higher = more positive.

    Returns:
        ``(v10 (m,), v01 (n,))``: per-positive and per-negative placement values; ``v10.mean()`` is
        the AUROC.
    """
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    pos, neg = score[y], score[~y]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        raise MixmagValueError("DeLong's test needs both positive and negative patients")
    # rank among all, minus rank among own class = number of the other class below (ties 1/2)
    r_all = rankdata(score)
    v10 = (r_all[y] - rankdata(pos)) / n
    v01 = 1.0 - (r_all[~y] - rankdata(neg)) / m
    return v10, v01


def delong_test(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> DeLongResult:
    """Two-sided DeLong test of ``AUROC(b) == AUROC(a)`` for paired scores on the same patients.

    Args:
        y: (n,) binary labels.
        score_a: (n,) scores of the reference method.
        score_b: (n,) scores of the compared method.

    Returns:
        AUROCs, their difference, its standard error, z and the p-value (1.0 when the two scores
        give identical placements, i.e. zero variance of the difference).
    """
    a10, a01 = placements(y, score_a)
    b10, b01 = placements(y, score_b)
    s10 = np.cov(np.stack([a10, b10]), ddof=1) if len(a10) > 1 else np.zeros((2, 2))
    s01 = np.cov(np.stack([a01, b01]), ddof=1) if len(a01) > 1 else np.zeros((2, 2))
    cov = s10 / len(a10) + s01 / len(a01)
    auc_a, auc_b = float(a10.mean()), float(b10.mean())
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    delta = auc_b - auc_a
    if var <= 1e-15:
        return DeLongResult(auc_a, auc_b, delta, 0.0, 0.0, 1.0 if abs(delta) < 1e-12 else 0.0)
    se = float(np.sqrt(var))
    z = delta / se
    return DeLongResult(auc_a, auc_b, delta, se, float(z), float(2 * norm.sf(abs(z))))
