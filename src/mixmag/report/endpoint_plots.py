"""Figures of the regression and survival endpoints: Kaplan-Meier curves and predicted-vs-observed.

Like every report figure they take plain values (arrays, and the Kaplan-Meier curves as mappings
of arrays computed by the caller, e.g. ``dataclasses.asdict`` of
:class:`mixmag.evaluate.survival.KaplanMeier`), never a stage's objects, and return a matplotlib
Figure built without pyplot. :mod:`mixmag.report.run_plots` writes them into run folders
(``km.png``, ``scatter.png``); the HTML report embeds the same figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from mixmag.report.figures import new_figure
from mixmag.report.plots import PALETTE

#: Colours of the risk groups, low to high risk (Okabe-Ito): blue and vermillion, orange between.
RISK_COLOURS = {2: ("#0072B2", "#D55E00"), 3: ("#0072B2", "#E69F00", "#D55E00")}


def km_plot(curves: Mapping[str, Mapping[str, Any]], *, p_value: float | None = None, title: str | None = None,
            time_label: str = "time") -> Figure:
    """Kaplan-Meier curves of patient groups (e.g. predicted low and high risk) with censoring ticks.

    Args:
        curves: ``{group name: curve}`` in legend order (low risk first); each curve has ``time``
            (0 and the event times), ``survival`` (the step values after each time),
            ``censored_time`` / ``censored_survival`` (tick marks), ``n`` and ``events``.
        p_value: Log-rank p-value written in the title (None: not shown).
        title: First title line.
        time_label: x-axis label (the unit of the labels table's times).
    """
    fig = new_figure(5.4, 4.2)
    ax = fig.add_subplot()
    colours = RISK_COLOURS.get(len(curves), PALETTE)
    horizon = 0.0
    for (name, c), colour in zip(curves.items(), colours, strict=False):
        t, s = np.asarray(c["time"], np.float64), np.asarray(c["survival"], np.float64)
        end = float(max(t.max(initial=0.0), np.asarray(c["censored_time"], np.float64).max(initial=0.0)))
        horizon = max(horizon, end)
        # the curve stays at its last value until the group's last follow-up
        ax.step(np.r_[t, end], np.r_[s, s[-1]], where="post", color=colour, linewidth=1.8,
                label=f"{name} (n={int(c['n'])}, {int(c['events'])} events)")
        ax.plot(c["censored_time"], c["censored_survival"], linestyle="none", marker="|", markersize=7,
                color=colour)
    ax.set_xlim(0, horizon * 1.02 if horizon > 0 else 1.0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(time_label)
    ax.set_ylabel("survival probability (Kaplan-Meier)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    lines = [title] if title else []
    if p_value is not None and np.isfinite(p_value):
        lines.append(f"log-rank p = {p_value:.2g}")
    if lines:
        ax.set_title("\n".join(lines), fontsize=10)
    return fig


def regression_scatter(y: np.ndarray, pred: np.ndarray, *, folds: np.ndarray | None = None,
                       stats: Sequence[str] = (), title: str | None = None, value_label: str = "value") -> Figure:
    """Predicted against observed values, one colour per test fold, with the identity line.

    Args:
        y: (n,) observed values.
        pred: (n,) predictions (same unit).
        folds: (n,) test fold of each prediction (None: one colour).
        stats: Lines written in the corner (e.g. ``Spearman ρ 0.71``, ``MAE 3.2``).
        title: Figure title.
        value_label: Name of the value for the axis labels.
    """
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    fig = new_figure(4.6, 4.4)
    ax = fig.add_subplot()
    lo = float(min(y.min(initial=0.0), pred.min(initial=0.0)))
    hi = float(max(y.max(initial=1.0), pred.max(initial=1.0)))
    pad = 0.04 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="lightgrey", linewidth=1, label="predicted = observed")
    groups = [(None, np.ones(len(y), bool))] if folds is None else [
        (f, np.asarray(folds) == f) for f in np.unique(np.asarray(folds))]
    for i, (fold, sel) in enumerate(groups):
        ax.scatter(y[sel], pred[sel], s=14, alpha=0.75, color=PALETTE[i % len(PALETTE)],
                   label=None if fold is None else f"fold {fold}")
    ax.set_xlabel(f"observed {value_label}")
    ax.set_ylabel(f"predicted {value_label}")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    if stats:
        ax.text(0.03, 0.97, "\n".join(stats), transform=ax.transAxes, va="top", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "lightgrey", "alpha": 0.9})
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return fig
