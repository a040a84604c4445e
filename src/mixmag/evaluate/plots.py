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


def plot_roc(y: np.ndarray, prob: np.ndarray, folds: np.ndarray, path: str | os.PathLike[str], *,
             title: str = "", class_names: Sequence[str] | None = None) -> Path:
    """ROC curve of every test fold (thin) and of the pooled out-of-fold predictions (thick).

    Multi-class tasks draw the one-vs-rest curve of each class for the pooled predictions.
    """
    y = np.asarray(y).astype(np.int64)
    folds = np.asarray(folds)
    n_classes = 2 if np.ndim(prob) == 1 else int(np.shape(prob)[1])
    p = as_prob_matrix(prob, n_classes)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color="lightgrey", linewidth=1)
    if n_classes == 2:
        for fold in np.unique(folds):
            sel = folds == fold
            if len(np.unique(y[sel])) < 2:
                continue
            fpr, tpr, _ = roc_curve(y[sel], p[sel, 1])
            ax.plot(fpr, tpr, linewidth=0.8, alpha=0.5, label=f"fold {fold}")
        fpr, tpr, _ = roc_curve(y, p[:, 1])
        ax.plot(fpr, tpr, color="black", linewidth=2, label=f"pooled (AUROC {auroc(y, p[:, 1]):.3f})")
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
