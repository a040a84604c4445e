"""Figures written into run folders: learning curves, ROC curves, and the comparison forest plot.

Matplotlib runs on the non-interactive Agg backend (no display needed); every figure is written
atomically as PNG.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from mixmag.evaluate.metrics import as_prob_matrix, auroc  # noqa: E402
from mixmag.utils.atomic import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_learning_curve(history: pd.DataFrame, path: str | os.PathLike[str], *, title: str = "",
                        best_epoch: int | None = None) -> Path:
    """Train/validation loss and validation AUROC per epoch (columns ``epoch, train_loss,
    val_loss, val_auroc``); a dashed line marks the epoch whose weights were kept."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(history["epoch"], history["train_loss"], label="train loss", color="tab:blue")
    ax.plot(history["epoch"], history["val_loss"], label="val loss", color="tab:orange")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax2 = ax.twinx()
    ax2.plot(history["epoch"], history["val_auroc"], label="val AUROC", color="tab:green", marker=".")
    ax2.set_ylabel("val AUROC")
    ax2.set_ylim(0, 1.02)
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="center right", fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_roc(y: np.ndarray, prob: np.ndarray, folds: np.ndarray | None, path: str | os.PathLike[str], *,
             title: str = "", class_names: Sequence[str] | None = None) -> Path:
    """ROC curve of every test fold (thin) and of the pooled out-of-fold predictions (thick).

    Multi-class tasks draw the one-vs-rest curve of each class for the pooled predictions.
    ``folds`` None (one external cohort): the pooled curve only.
    """
    y = np.asarray(y).astype(np.int64)
    folds = np.zeros(len(y), np.int64) if folds is None else np.asarray(folds)
    one_group = len(np.unique(folds)) == 1
    n_classes = 2 if np.ndim(prob) == 1 else int(np.shape(prob)[1])
    p = as_prob_matrix(prob, n_classes)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color="lightgrey", linewidth=1)
    if n_classes == 2:
        for fold in np.unique(folds) if not one_group else ():
            sel = folds == fold
            if len(np.unique(y[sel])) < 2:
                continue
            fpr, tpr, _ = roc_curve(y[sel], p[sel, 1])
            ax.plot(fpr, tpr, linewidth=0.8, alpha=0.5, label=f"fold {fold}")
        fpr, tpr, _ = roc_curve(y, p[:, 1])
        name = "all" if one_group else "pooled"
        ax.plot(fpr, tpr, color="black", linewidth=2, label=f"{name} (AUROC {auroc(y, p[:, 1]):.3f}, n={len(y)})")
    else:
        names = list(class_names) if class_names is not None else [str(c) for c in range(n_classes)]
        for c in range(n_classes):
            if 0 < (y == c).sum() < len(y):
                fpr, tpr, _ = roc_curve(y == c, p[:, c])
                ax.plot(fpr, tpr, linewidth=1.5, label=f"{names[c]} vs rest")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_aspect("equal")
    return _save(fig, path)


def plot_calibration(y: np.ndarray, prob: np.ndarray, path: str | os.PathLike[str], *, n_bins: int = 10,
                     title: str = "") -> Path:
    """Reliability diagram of a binary task: observed positive rate per bin of predicted probability.

    Bins are quantiles of the predictions (equal counts, at most ``n_bins``), so sparse regions of
    the probability axis do not produce one-bag bins; each point is drawn at the bin's mean
    prediction with a Wilson 95 % interval, and the histogram of predictions is shown below.

    Args:
        y: (n,) 0/1 labels.
        prob: (n,) predicted probability of class 1.
        path: PNG to write.
        n_bins: Most bins.
        title: Figure title.
    """
    y = np.asarray(y).astype(np.float64)
    prob = np.asarray(prob, dtype=np.float64)
    n_bins = max(1, min(n_bins, len(y) // 5 or 1))
    edges = np.unique(np.quantile(prob, np.linspace(0, 1, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, max(len(edges) - 2, 0))
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.6, 5.4), height_ratios=[3, 1], sharex=True)
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
    return _save(fig, path)


def plot_forest(table: pd.DataFrame, path: str | os.PathLike[str], *, reference: str | None = None,
                method_order: Sequence[str] | None = None,
                colors: Mapping[str, str] | None = None) -> Path:
    """Forest plot of the comparison: one panel per task, mean AUROC ± sd and the 95 % CI per method.

    Args:
        table: Long table from :func:`mixmag.evaluate.compare.compare_runs` (columns ``target,
            method, mean_auroc, sd_auroc, ci_lo, ci_hi``).
        path: PNG path.
        reference: Method drawn with a vertical dashed line at its mean AUROC.
        method_order: Top-to-bottom order of methods.
        colors: Optional colour per method.
    """
    targets = list(dict.fromkeys(table["target"]))
    methods = list(method_order) if method_order else list(dict.fromkeys(table["method"]))
    palette = plt.get_cmap("tab10")
    cmap = {m: (colors or {}).get(m, palette(i % 10)) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets) + 1.4, 0.42 * len(methods) + 1.4),
                             sharey=True, squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        part = table[table["target"] == target].set_index("method")
        for i, method in enumerate(methods):
            if method not in part.index:
                continue
            row = part.loc[method]
            ypos = len(methods) - 1 - i
            # CI: wide translucent band; mean ± sd: dot with thin caps on top of it
            ax.plot([row["ci_lo"], row["ci_hi"]], [ypos, ypos], color=cmap[method], linewidth=7, alpha=0.25,
                    solid_capstyle="butt")
            ax.errorbar(row["mean_auroc"], ypos, xerr=np.nan_to_num(row["sd_auroc"]), fmt="o",
                        color=cmap[method], capsize=3, markersize=5, elinewidth=1)
            ax.annotate(f"{row['mean_auroc']:.3f}", (row["mean_auroc"], ypos), xytext=(0, 6),
                        textcoords="offset points", ha="center", fontsize=7, color=cmap[method])
        if reference is not None and reference in part.index:
            ax.axvline(part.loc[reference, "mean_auroc"], color="grey", linestyle="--", linewidth=1)
        ax.set_title(target, fontsize=10)
        ax.set_xlabel("AUROC")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(methods)))
    axes[0][0].set_yticklabels(list(reversed(methods)))
    fig.suptitle("dot and caps: mean ± sd of fold AUROCs; band: 95 % bootstrap CI of the pooled AUROC; "
                 "dashed: reference", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
