"""The PNGs that stages write into their run folders, drawn by the report's figure functions.

Each writer turns a stage's plain outputs into the inputs of one figure function of
:mod:`mixmag.report.plots` or :mod:`mixmag.report.evaluation_plots` and saves it atomically with
:func:`mixmag.report.figures.save_png` (no pyplot: safe in threads). The file names are the
callers' (documented in docs/formats/); matplotlib is imported on the first write, not on import.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

# Evaluation PNGs: 120 dpi, margins cropped to the content.
EVAL_DPI = 120
# Pretraining loss curve: exactly 7 x 4 in at 110 dpi (770 x 440 px).
LOSS_DPI = 110
# Loss terms of region-encoder pretraining, in legend order ("loss" is the total).
LOSS_TERMS = ("loss", "mem1", "mem2", "nce")


def write_loss_curve(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *,
                     title: str = "") -> Path | None:
    """Pretraining loss per optimizer step: total and terms (log y when positive), learning rate.

    Args:
        records: ``metrics.jsonl`` records, one per step (``step``, ``loss``, optionally ``mem1``,
            ``mem2``, ``nce``, ``lr``).
        path: PNG to write.
        title: Figure title (default: "region-encoder pretraining").

    Returns:
        The PNG path, or None (nothing written) when there are no records.
    """
    if not records:
        return None
    from mixmag.report.figures import save_png
    from mixmag.report.plots import loss_curves

    terms = [k for k in LOSS_TERMS if k in records[0]]
    if terms == ["loss", "mem1"]:  # MEM: the total is the single term
        terms = ["loss"]
    fig = loss_curves(records, columns=terms, secondary="lr", secondary_label="learning rate",
                      xlabel="optimizer step", ylabel="loss", title=title or "region-encoder pretraining")
    return save_png(fig, path, dpi=LOSS_DPI)


def write_learning_curve(history: pd.DataFrame, path: str | os.PathLike[str], *, title: str = "",
                         best_epoch: int | None = None) -> Path:
    """Train/validation loss and validation AUROC per epoch of one MIL fit (see
    :func:`~mixmag.report.plots.learning_curve`); a dashed line marks ``best_epoch``."""
    from mixmag.report.figures import save_png
    from mixmag.report.plots import learning_curve

    return save_png(learning_curve(history, best_epoch=best_epoch, title=title), path, dpi=EVAL_DPI, crop=True)


def write_roc(y: np.ndarray, prob: np.ndarray, folds: np.ndarray | None, path: str | os.PathLike[str], *,
              title: str = "", class_names: Sequence[str] | None = None) -> Path:
    """ROC of out-of-fold predictions: each test fold thin, the pooled predictions thick.

    Multi-class tasks draw the one-vs-rest curve of each class (pooled predictions).

    Args:
        y: (n,) class indices.
        prob: (n,) probability of class 1, or (n, C) class probabilities.
        folds: (n,) test fold of each prediction; None (one external cohort): the curve of all
            predictions, labelled "all".
        path: PNG to write.
        title: Figure title.
        class_names: Class names in index order.
    """
    from mixmag.report.evaluation_plots import roc_curves
    from mixmag.report.figures import save_png

    y = np.asarray(y).astype(np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    fold_of = None if folds is None else np.asarray(folds)
    fold_ids = [] if fold_of is None else np.unique(fold_of).tolist()
    results: dict[str, Any]
    if fold_of is None or len(fold_ids) < 2:  # one cohort or one fold: no per-fold curves
        results = {"all": (y, prob)}
    else:
        results = {"pooled": {f: (y[fold_of == f], prob[fold_of == f]) for f in fold_ids}}
    fig = roc_curves(results, class_names=class_names, title=title)
    return save_png(fig, path, dpi=EVAL_DPI, crop=True)


def write_km(curves: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str], *,
             p_value: float | None = None, title: str = "", time_label: str = "time") -> Path:
    """Kaplan-Meier curves of predicted-risk groups (see :func:`~mixmag.report.endpoint_plots.km_plot`).

    Args:
        curves: ``{group: curve}`` (``time, survival, censored_time, censored_survival, n, events``).
        path: PNG to write.
        p_value: Log-rank p-value for the title.
        title: Figure title.
        time_label: x-axis label.
    """
    from mixmag.report.endpoint_plots import km_plot
    from mixmag.report.figures import save_png

    fig = km_plot(curves, p_value=p_value, title=title, time_label=time_label)
    return save_png(fig, path, dpi=EVAL_DPI, crop=True)


def write_scatter(y: np.ndarray, pred: np.ndarray, folds: np.ndarray | None, path: str | os.PathLike[str], *,
                  stats: Sequence[str] = (), title: str = "", value_label: str = "value") -> Path:
    """Predicted against observed values of a regression run (see
    :func:`~mixmag.report.endpoint_plots.regression_scatter`)."""
    from mixmag.report.endpoint_plots import regression_scatter
    from mixmag.report.figures import save_png

    fig = regression_scatter(y, pred, folds=folds, stats=stats, title=title, value_label=value_label)
    return save_png(fig, path, dpi=EVAL_DPI, crop=True)


def write_calibration(y: np.ndarray, prob: np.ndarray, path: str | os.PathLike[str], *, n_bins: int = 10,
                      title: str = "") -> Path:
    """Reliability diagram of a binary task (see :func:`~mixmag.report.evaluation_plots.calibration_plot`).

    Args:
        y: (n,) 0/1 labels.
        prob: (n,) predicted probability of class 1.
        path: PNG to write.
        n_bins: Most bins.
        title: Figure title.
    """
    from mixmag.report.evaluation_plots import calibration_plot
    from mixmag.report.figures import save_png

    return save_png(calibration_plot(y, prob, n_bins=n_bins, title=title), path, dpi=EVAL_DPI, crop=True)


def write_comparison_plot(table: pd.DataFrame, path: str | os.PathLike[str], *, reference: str | None = None,
                          method_order: Sequence[str] | None = None, mean: str = "mean_auroc",
                          sd: str = "sd_auroc", xlabel: str = "AUROC",
                          note: str = "dot and caps: mean ± sd of fold AUROCs; band: 95 % bootstrap CI of the "
                                      "pooled AUROC; dashed: reference") -> Path:
    """Forest plot of a method comparison: one panel per task, mean AUROC ± sd and the 95 % CI per method.

    Args:
        table: Long table of :func:`mixmag.evaluate.compare.compare_runs` without its average
            rows (columns ``target, method, mean_auroc, sd_auroc, ci_lo, ci_hi``).
        path: PNG to write.
        reference: Method whose mean AUROC gets a dashed vertical line in each panel.
        method_order: Methods top to bottom (default: table order).
        mean: Column of the mean (another metric's, e.g. a generic ``mean`` for tasks of several
            endpoints).
        sd: Column of the sd.
        xlabel: Axis label.
        note: Line above the panels.
    """
    from mixmag.report.evaluation_plots import comparison_plot
    from mixmag.report.figures import save_png

    fig = comparison_plot(table, mean=mean, low="ci_lo", high="ci_hi", sd=sd, panel="target",
                          order=method_order, reference=reference, xlabel=xlabel, note=note)
    return save_png(fig, path, dpi=EVAL_DPI, crop=True)
