"""Evaluation figures: ROC curves, the reliability diagram and the comparison forest plot.

Inputs are plain arrays and tables (labels, predicted probabilities, one row per method), never a
stage's objects, so every stage can draw with them. Each function returns a matplotlib Figure built
without pyplot (see :mod:`mixmag.report.figures` to save it); :mod:`mixmag.report.run_plots` writes
them into run folders, and the HTML report embeds the same figures.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypeAlias, cast

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mixmag.errors import MixmagValueError
from mixmag.report.figures import new_figure
from mixmag.report.plots import LINE_STYLES, PALETTE

logger = logging.getLogger(__name__)

Predictions: TypeAlias = tuple[np.ndarray, np.ndarray]
RocInput: TypeAlias = Predictions | list[Predictions] | Mapping[Any, Predictions]


def _fold_pairs(value: RocInput) -> list[tuple[Hashable, Predictions]]:
    """``[(fold, (y_true, y_score)), ...]``: one entry for pooled predictions, else one per fold."""
    if isinstance(value, Mapping):
        return list(value.items())
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        return list(enumerate(value))
    y_true, y_score = cast("Predictions", value)  # pooled: one (y_true, y_score) pair
    return [(0, (y_true, y_score))]


def _roc_line(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(false-positive rate, true-positive rate) of a binary task; None when one class is absent."""
    from sklearn.metrics import roc_curve

    if len(np.unique(y_true)) < 2:
        return None  # ROC (and AUROC) undefined for a single-class set
    fpr, tpr, _ = roc_curve(y_true, y_score)
    return fpr, tpr


#: Most methods whose ROC legend sits inside the axes; with more, the figure widens and the legend
#: goes beside the axes (callers that size the figure on a page read this too).
ROC_LEGEND_INSIDE_MAX = 6


def roc_curves(
    results: Mapping[str, RocInput],
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """ROC curves (false- against true-positive rate) of one or several methods.

    Per method, the out-of-fold predictions are ``(y_true, y_score)`` pooled, or one such pair
    per test fold (a list, or ``{fold: pair}``): then each fold's curve is drawn thin and the
    curve of all folds pooled thick, labelled with its AUROC and number of predictions (bags).
    One method: folds in colour (``fold <k>`` in the legend), the pooled curve black. Several
    methods: one Okabe-Ito colour each, folds thin and unlabelled; past 8 methods the colours come
    back dashed, and past 6 only the pooled curves are drawn, with the legend beside the axes.

    ``y_true`` holds (n,) class indices; ``y_score`` is the (n,) score of class 1 or the (n, C)
    class probabilities. With more than two classes the one-vs-rest curve of each class (pooled
    predictions) is drawn instead. A fold or class whose labels are all one class has no ROC
    curve and is left out.

    Args:
        results: ``{method: predictions}`` as above.
        class_names: Names of the C classes in index order (multi-class legends).
        title: Figure title.
    """
    from sklearn.metrics import roc_auc_score

    several = len(results) > 1
    # past a handful of methods the legend would cover the curves: it goes to the right instead
    outside = len(results) > ROC_LEGEND_INSIDE_MAX
    fig = new_figure(7.6 if outside else 4.6, 4.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="lightgrey", linewidth=1)
    for i, (name, value) in enumerate(results.items()):
        folds = _fold_pairs(value)
        y = np.concatenate([np.asarray(t).astype(np.int64) for _, (t, _) in folds])
        score = np.concatenate([np.asarray(s, dtype=np.float64) for _, (_, s) in folds])
        n_classes = 2 if score.ndim == 1 else int(score.shape[1])
        colour = PALETTE[i % len(PALETTE)] if several else "black"
        style = LINE_STYLES[(i // len(PALETTE)) % len(LINE_STYLES)]  # a colour comes back: another dash
        if n_classes > 2:
            names = list(class_names) if class_names is not None else [str(c) for c in range(n_classes)]
            for c in range(n_classes):
                line = _roc_line(y == c, score[:, c])
                if line is not None:
                    ax.plot(*line, linewidth=1.5, label=f"{name}: {names[c]} vs rest" if several else f"{names[c]} vs rest")
            continue
        positive = score if score.ndim == 1 else score[:, 1]
        if len(folds) > 1 and not outside:  # many methods: the pooled curves only, or nothing is legible
            for fold, (t, s) in folds:
                s = np.asarray(s, dtype=np.float64)
                line = _roc_line(np.asarray(t).astype(np.int64), s if s.ndim == 1 else s[:, 1])
                if line is None:
                    continue
                if several:
                    ax.plot(*line, color=colour, linewidth=0.8, alpha=0.5)
                else:  # matplotlib's colour cycle, one colour per fold
                    ax.plot(*line, linewidth=0.8, alpha=0.5, label=f"fold {fold}")
        line = _roc_line(y, positive)
        if line is None:
            logger.warning("no ROC curve for %s: its labels are all one class", name)
            continue
        ax.plot(*line, color=colour, linewidth=2, linestyle=style,
                label=f"{name} (AUROC {roc_auc_score(y, positive):.3f}, n={len(y)})")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    if title:
        ax.set_title(title, fontsize=10)
    if outside:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.03, 0.5), frameon=False)
    else:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_aspect("equal")
    if outside:
        fig.tight_layout()
    return fig


def calibration_plot(y: np.ndarray, prob: np.ndarray, *, n_bins: int = 10, title: str | None = None) -> Figure:
    """Reliability diagram of a binary task: observed positive rate per bin of predicted probability.

    Bins are quantiles of the predictions (equal counts, at most ``n_bins``, at least 5 predictions
    each), so sparse regions of the probability axis do not produce one-bag bins; each point is
    drawn at the bin's mean prediction with a Wilson 95 % interval, the Brier score goes in the
    title and the histogram of predictions (per true class) is shown below.

    Args:
        y: (n,) 0/1 labels.
        prob: (n,) predicted probability of class 1.
        n_bins: Most bins.
        title: Figure title (above the Brier score).
    """
    y = np.asarray(y).astype(np.float64)
    prob = np.asarray(prob, dtype=np.float64)
    n_bins = max(1, min(n_bins, len(y) // 5 or 1))
    edges = np.unique(np.quantile(prob, np.linspace(0, 1, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, max(len(edges) - 2, 0))
    fig = new_figure(4.6, 5.4)
    ax, hist = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], color="lightgrey", linewidth=1, label="perfect calibration")
    xs, ys, lo, hi = [], [], [], []
    for b in np.unique(which):
        sel = which == b
        n, k = int(sel.sum()), float(y[sel].sum())
        z, phat = 1.96, k / n
        centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        xs.append(float(prob[sel].mean()))
        ys.append(phat)
        lo.append(max(phat - max(centre - half, 0.0), 0.0))  # clipped: rounding can cross phat
        hi.append(max(min(centre + half, 1.0) - phat, 0.0))
    ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", color="black", capsize=3, label="observed (Wilson 95 % CI)")
    brier = float(np.mean((prob - y) ** 2))
    ax.set_ylabel("observed positive rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{title}\nBrier score {brier:.3f}" if title else f"Brier score {brier:.3f}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    hist.hist([prob[y == 0], prob[y == 1]], bins=np.linspace(0, 1, 21), stacked=True, color=["#0072B2", "#D55E00"],
              label=["negative", "positive"])
    hist.set_xlabel("predicted probability")
    hist.set_ylabel("bags")
    hist.set_xlim(0, 1)
    hist.legend(fontsize=7)
    return fig


def comparison_plot(
    table: pd.DataFrame,
    *,
    method: str = "method",
    mean: str = "mean",
    low: str = "ci_low",
    high: str = "ci_high",
    sd: str | None = None,
    panel: str | None = None,
    order: Sequence[str] | None = None,
    reference: float | str | None = 0.5,
    xlabel: str = "AUROC",
    note: str | None = None,
) -> Figure:
    """Forest plot: one row per method, its confidence interval as a band and its mean as a dot.

    Args:
        table: One row per method (per panel) with the columns named below.
        method: Column of the method names (the rows).
        mean: Column of the point estimate: a dot, its value written above.
        low: Column of the lower confidence bound (band from ``low`` to ``high``).
        high: Column of the upper confidence bound.
        sd: Column of a standard deviation drawn as caps around the dot (e.g. over folds); None
            for none. Missing values draw no caps.
        panel: Column that splits the table into side-by-side panels (e.g. the task), one per
            value in table order; None for one panel.
        order: Methods top to bottom (default: table order); each keeps a tab10 colour.
        reference: A dashed vertical line: at this x (e.g. 0.5, chance for AUROC), or at the
            mean of this method in each panel; None for none.
        xlabel: Axis label.
        note: Line above the panels (e.g. what the dot, caps and band are).

    Raises:
        MixmagValueError: A named column is missing.
    """
    needed = [c for c in (method, mean, low, high, sd, panel) if c is not None]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise MixmagValueError(f"comparison table lacks columns {missing}; it has {list(table.columns)}")
    panels = list(dict.fromkeys(table[panel])) if panel is not None else [None]
    methods = list(order) if order else list(dict.fromkeys(table[method]))
    tab10 = mpl.colormaps["tab10"]
    cmap = {m: tab10(i % 10) for i, m in enumerate(methods)}
    fig = new_figure(3.2 * len(panels) + 1.4, 0.42 * len(methods) + 1.4)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], panels, strict=True):
        part = (table if panel is None else table[table[panel] == name]).set_index(method)
        for i, m in enumerate(methods):
            if m not in part.index:
                continue
            row = part.loc[m]
            ypos = len(methods) - 1 - i
            # CI: wide translucent band; mean (± sd): dot (with thin caps) on top of it
            ax.plot([row[low], row[high]], [ypos, ypos], color=cmap[m], linewidth=7, alpha=0.25,
                    solid_capstyle="butt")
            ax.errorbar(row[mean], ypos, xerr=None if sd is None else np.nan_to_num(row[sd]), fmt="o",
                        color=cmap[m], capsize=3, markersize=5, elinewidth=1)
            ax.annotate(f"{row[mean]:.3f}", (row[mean], ypos), xytext=(0, 6),
                        textcoords="offset points", ha="center", fontsize=7, color=cmap[m])
        if isinstance(reference, str):
            if reference in part.index:
                ax.axvline(part.loc[reference, mean], color="grey", linestyle="--", linewidth=1)
        elif reference is not None:
            ax.axvline(reference, color="grey", linestyle="--", linewidth=1)
        if name is not None:
            ax.set_title(str(name), fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    # the value above the top dot needs about half a row of headroom below the panel title
    axes[0][0].set_ylim(-0.6, len(methods) - 0.35)
    axes[0][0].set_yticks(range(len(methods)))
    axes[0][0].set_yticklabels(list(reversed(methods)))
    if note:
        fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    return fig
