"""Survival statistics: Harrell's C-index (also over bootstrap resamples), Kaplan-Meier, log-rank.

Conventions (docs/concepts/endpoints.md):

- ``time`` (n,) follow-up time (any unit, >= 0), ``event`` (n,) 1 = the event was observed at
  ``time``, 0 = censored at ``time`` (the patient was event-free until then).
- ``risk`` (n,) predicted risk score: higher means an *earlier* event (the Cox head's log relative
  hazard), so a C-index above 0.5 means the model ranks patients the right way round.

Harrell's C-index is the share of *comparable* pairs that the risk orders correctly. A pair
(i, j) is comparable when the earlier of the two had an event: ``event_i = 1`` and
``time_i < time_j``, or equal times with ``event_i = 1`` and ``event_j = 0`` (the censored one
was still event-free at that time). It is concordant when ``risk_i > risk_j``; tied risks count
one half. Pairs of two events at the same time are not comparable (the convention of Harrell 1996
and lifelines).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2

logger = logging.getLogger(__name__)

#: Rows of the pairwise matrices built at once (bounds memory at ~ _BLOCK * n * 8 bytes).
_BLOCK = 1024


def _pairs(time: np.ndarray, event: np.ndarray, risk: np.ndarray, rows: slice | np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """(comparable, concordance credit) matrices of shape (len(rows), n) for the pairs (i in rows, j).

    Credit is 1 for ``risk_i > risk_j``, 0.5 for equal risks, 0 otherwise, on comparable pairs only.
    """
    t_i, e_i, r_i = time[rows, None], event[rows, None], risk[rows, None]
    comparable = (e_i == 1) & ((t_i < time[None, :]) | ((t_i == time[None, :]) & (event[None, :] == 0)))
    credit = np.where(r_i > risk[None, :], 1.0, np.where(r_i == risk[None, :], 0.5, 0.0)) * comparable
    return comparable.astype(np.float64), credit


def _check(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64)
    r = np.asarray(risk, dtype=np.float64)
    if not (t.shape == e.shape == r.shape) or t.ndim != 1:
        raise ValueError(f"time, event and risk must be aligned 1-D arrays, got {t.shape}, {e.shape}, {r.shape}")
    return t, e, r


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index of ``risk`` (higher = earlier event); NaN when no pair is comparable.

    Args:
        time: (n,) follow-up times.
        event: (n,) 1 = event observed, 0 = censored.
        risk: (n,) predicted risk scores.

    Returns:
        Concordant share of comparable pairs in [0, 1] (0.5 = chance, ties in risk count 1/2).
    """
    t, e, r = _check(time, event, risk)
    num = den = 0.0
    for start in range(0, len(t), _BLOCK):
        comparable, credit = _pairs(t, e, r, slice(start, start + _BLOCK))
        num += float(credit.sum())
        den += float(comparable.sum())
    return num / den if den > 0 else float("nan")


def concordance_rows(time: np.ndarray, event: np.ndarray, risk: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Harrell's C-index of many resamples at once.

    A resample with repeated items is its multiplicity vector w (how often each item was drawn):
    ``C = wᵀ K w / wᵀ P w`` with K the concordance credit and P the comparable-pair matrix (a
    pair of two copies of one item has equal times and is never comparable). Only the items that
    occur in ``idx`` enter the matrices.

    Args:
        time: (n,) follow-up times.
        event: (n,) 0/1 events.
        risk: (n,) risk scores.
        idx: (B, m) indices into the arrays, one resample per row.

    Returns:
        (B,) C-index per resample; NaN where a resample has no comparable pair.
    """
    t, e, r = _check(time, event, risk)
    idx = np.asarray(idx, dtype=np.int64)
    items, local = np.unique(idx, return_inverse=True)
    local = local.reshape(idx.shape)
    counts = np.zeros((idx.shape[0], len(items)), dtype=np.float64)
    np.add.at(counts, (np.arange(idx.shape[0])[:, None], local), 1.0)
    ts, es, rs = t[items], e[items], r[items]
    num = np.zeros(idx.shape[0])
    den = np.zeros(idx.shape[0])
    for start in range(0, len(items), _BLOCK):
        rows = slice(start, start + _BLOCK)
        comparable, credit = _pairs(ts, es, rs, rows)
        w_rows = counts[:, rows]
        num += ((w_rows @ credit) * counts).sum(axis=1)
        den += ((w_rows @ comparable) * counts).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


@dataclass(frozen=True)
class KaplanMeier:
    """A Kaplan-Meier survival curve (a right-continuous step function).

    Attributes:
        time: (k+1,) 0 followed by the distinct event times, ascending.
        survival: (k+1,) estimated survival just after each time (1.0 at 0).
        censored_time: (c,) times of the censored observations (tick marks on a plot).
        censored_survival: (c,) the curve's value at each of them.
        n: Patients in the group.
        events: Observed events in the group.
    """

    time: np.ndarray
    survival: np.ndarray
    censored_time: np.ndarray
    censored_survival: np.ndarray
    n: int
    events: int

    def at(self, times: np.ndarray) -> np.ndarray:
        """Survival at ``times`` (the step function evaluated, right-continuous)."""
        pos = np.searchsorted(self.time, np.asarray(times, dtype=np.float64), side="right") - 1
        return self.survival[np.clip(pos, 0, None)]


def kaplan_meier(time: np.ndarray, event: np.ndarray) -> KaplanMeier:
    """Kaplan-Meier estimate ``S(t) = Π_{t_k <= t} (1 - d_k / n_k)`` over the distinct event times t_k.

    Args:
        time: (n,) follow-up times.
        event: (n,) 1 = event, 0 = censored (at risk until and including its time).
    """
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64) > 0
    event_times = np.unique(t[e])
    at_risk = (t[None, :] >= event_times[:, None]).sum(axis=1)
    deaths = (e[None, :] & (t[None, :] == event_times[:, None])).sum(axis=1)
    surv = np.cumprod(1.0 - deaths / np.maximum(at_risk, 1))
    curve_t = np.r_[0.0, event_times]
    curve_s = np.r_[1.0, surv]
    km = KaplanMeier(curve_t, curve_s, np.zeros(0), np.zeros(0), len(t), int(e.sum()))
    cens = np.sort(t[~e])
    return KaplanMeier(curve_t, curve_s, cens, km.at(cens), len(t), int(e.sum()))


@dataclass(frozen=True)
class LogRank:
    """A k-group log-rank test: ``statistic`` ~ chi-square with ``df`` = k - 1 under H0."""

    statistic: float
    df: int
    p_value: float


def logrank_test(time: np.ndarray, event: np.ndarray, group: np.ndarray) -> LogRank:
    """Log-rank test that the groups share one survival function (Mantel-Haenszel, k groups).

    At each distinct event time with ``d`` events among ``n`` at risk (``n_g`` of group g), the
    expected events of group g are ``d n_g / n`` and the covariance of the observed counts is
    ``d (n_g / n)(δ_gh - n_h / n)(n - d)/(n - 1)``; the statistic is ``(O-E)ᵀ V⁻¹ (O-E)`` over the
    first k-1 groups.

    Args:
        time: (n,) follow-up times.
        event: (n,) 0/1 events.
        group: (n,) group label of each patient (any hashable values; at least two groups).

    Returns:
        The statistic, its degrees of freedom and p-value (NaN when there are no events).
    """
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64) > 0
    labels, g = np.unique(np.asarray(group), return_inverse=True)
    k = len(labels)
    if k < 2:
        raise ValueError("the log-rank test needs at least two groups")
    event_times = np.unique(t[e])
    if len(event_times) == 0:
        return LogRank(float("nan"), k - 1, float("nan"))
    at_risk_g = np.stack([(t[None, g == c] >= event_times[:, None]).sum(axis=1) for c in range(k)], axis=1)
    deaths_g = np.stack([(e[g == c][None, :] & (t[None, g == c] == event_times[:, None])).sum(axis=1)
                         for c in range(k)], axis=1).astype(np.float64)
    n = at_risk_g.sum(axis=1).astype(np.float64)
    d = deaths_g.sum(axis=1)
    share = at_risk_g / n[:, None]
    observed_minus_expected = (deaths_g - d[:, None] * share).sum(axis=0)
    factor = np.where(n > 1, d * (n - d) / np.maximum(n - 1, 1), 0.0)
    # V_gh = Σ_t factor_t share_tg (δ_gh - share_th)
    cov = np.diag((factor[:, None] * share).sum(axis=0)) - np.einsum("t,tg,th->gh", factor, share, share)
    om, v = observed_minus_expected[:-1], cov[:-1, :-1]
    try:
        stat = float(om @ np.linalg.solve(v, om))
    except np.linalg.LinAlgError:
        return LogRank(float("nan"), k - 1, float("nan"))
    return LogRank(stat, k - 1, float(chi2.sf(stat, k - 1)))


#: Names of the predicted-risk groups for 2 (median split) and 3 (tertiles) groups, low risk first.
RISK_GROUP_NAMES = {2: ("low risk", "high risk"), 3: ("low risk", "intermediate risk", "high risk")}


def risk_groups(risk: np.ndarray, folds: np.ndarray | None, n_groups: int) -> np.ndarray:
    """Split patients into ``n_groups`` equal-size groups of predicted risk, *within each test fold*.

    Each fold model's risks are on their own scale, so the cut points (median, tertiles) are taken
    among the test patients of each fold separately; no outcome is used, so the groups can be
    compared with a log-rank test without bias from choosing the cut.

    Args:
        risk: (n,) predicted risks.
        folds: (n,) test fold of each patient; None: one group of patients.
        n_groups: 2 (median split) or 3 (tertiles).

    Returns:
        (n,) group index, 0 = lowest risk.
    """
    r = np.asarray(risk, dtype=np.float64)
    fold_of = np.zeros(len(r), dtype=np.int64) if folds is None else np.asarray(folds)
    out = np.zeros(len(r), dtype=np.int64)
    for f in np.unique(fold_of):
        sel = np.flatnonzero(fold_of == f)
        rank = np.argsort(np.argsort(r[sel], kind="stable"), kind="stable")
        out[sel] = np.minimum(rank * n_groups // len(sel), n_groups - 1)
    return out
