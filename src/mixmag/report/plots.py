"""Generic report plots: training-loss curves, ROC curves, a comparison forest plot, stage timings.

Inputs are plain tables/arrays (pandas DataFrames, numpy arrays, file paths of CSV/JSONL metrics),
so any stage's outputs can be plotted; every function returns a matplotlib Figure
(see :mod:`mixmag.report.figures` to save it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mixmag.errors import MixmagFileNotFoundError, MixmagValueError
from mixmag.report.figures import new_figure

MetricsSource: TypeAlias = pd.DataFrame | str | os.PathLike
Predictions: TypeAlias = tuple[np.ndarray, np.ndarray]

# Colour-blind-safe palette (Okabe-Ito) in a fixed order, so a method keeps its colour across plots.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def read_metrics_table(source: MetricsSource) -> pd.DataFrame:
    """A metrics table from a DataFrame, a CSV file or a JSON-lines file (one record per line).

    A torn last JSONL line (from a crashed run) is skipped.
    """
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.exists():
        raise MixmagFileNotFoundError(f"metrics file {path} does not exist")
    if path.suffix in (".jsonl", ".ndjson", ".json"):
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return pd.DataFrame.from_records(records)
    return pd.read_csv(path)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < 3:
        return y
    return pd.Series(y).rolling(window, min_periods=1, center=True).mean().to_numpy()


def loss_curves(
    runs: Mapping[str, MetricsSource] | MetricsSource,
    *,
    x: str = "step",
    columns: Sequence[str] = ("loss",),
    smooth: int | None = None,
    log_y: bool = False,
    title: str | None = None,
) -> Figure:
    """Training curves of one or several runs (e.g. MEM and CMEM pretraining).

    Args:
        runs: ``{name: metrics}`` or a single metrics source (DataFrame, CSV or JSONL path) with
            an ``x`` column and the ``columns`` to plot.
        x: Column for the x axis.
        columns: Metric columns to plot (missing ones are skipped per run).
        smooth: Rolling-mean window; default ~2 % of the run length. Raw values stay visible, faint.
        log_y: Logarithmic y axis.
        title: Figure title.
    """
    named = dict(runs) if isinstance(runs, Mapping) else {"run": runs}
    fig = new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    k = 0
    for name, source in named.items():
        df = read_metrics_table(source)
        if x not in df.columns:
            raise MixmagValueError(f"metrics of {name!r} have no {x!r} column (columns: {', '.join(map(str, df.columns))})")
        for col in columns:
            if col not in df.columns:
                continue
            d = df[[x, col]].dropna().sort_values(x)
            xs, ys = d[x].to_numpy(), d[col].to_numpy(dtype=float)
            colour = PALETTE[k % len(PALETTE)]
            k += 1
            window = smooth if smooth is not None else max(1, len(ys) // 50)
            label = name if len(columns) == 1 else f"{name}: {col}"
            if window > 1:
                ax.plot(xs, ys, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(xs, _smooth(ys, window), color=colour, linewidth=1.6, label=label)
    if k == 0:
        raise MixmagValueError(f"none of the columns {list(columns)} found in the metrics")
    ax.set_xlabel(x)
    ax.set_ylabel(columns[0] if len(columns) == 1 else "value")
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def _is_fold_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], tuple)


def roc_curves(
    results: Mapping[str, Predictions | list[Predictions]],
    *,
    title: str | None = None,
) -> Figure:
    """ROC curves of several methods on one axis, AUROC in the legend.

    Args:
        results: ``{method: (y_true, y_score)}`` for pooled predictions, or
            ``{method: [(y_true, y_score), ...]}`` per fold: then the mean curve (interpolated on
            a common FPR grid) is drawn with a +-1 sd band and the legend gives mean +- sd AUROC.
            ``y_true`` is binary (0/1), ``y_score`` the positive-class score.
        title: Figure title.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = new_figure(4.8, 4.4)
    ax = fig.add_subplot()
    grid = np.linspace(0, 1, 201)
    for i, (name, value) in enumerate(results.items()):
        colour = PALETTE[i % len(PALETTE)]
        folds = value if _is_fold_list(value) else [value]
        tprs, aucs = [], []
        for y_true, y_score in folds:
            y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=float)
            if len(np.unique(y_true)) < 2:
                continue  # AUROC undefined for a single-class fold
            fpr, tpr, _ = roc_curve(y_true, y_score)
            tprs.append(np.interp(grid, fpr, tpr, left=0.0))
            aucs.append(roc_auc_score(y_true, y_score))
        if not tprs:
            continue
        mean = np.mean(tprs, axis=0)
        mean[0] = 0.0
        label = (f"{name} (AUROC {aucs[0]:.3f})" if len(aucs) == 1
                 else f"{name} (AUROC {np.mean(aucs):.3f} ± {np.std(aucs):.3f})")
        ax.plot(grid, mean, color=colour, linewidth=1.6, label=label)
        if len(tprs) > 1:
            sd = np.std(tprs, axis=0)
            ax.fill_between(grid, np.clip(mean - sd, 0, 1), np.clip(mean + sd, 0, 1), color=colour, alpha=0.12)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize=7, frameon=True, framealpha=0.9, edgecolor="none")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def comparison_plot(
    table: pd.DataFrame,
    *,
    method: str = "method",
    mean: str = "mean",
    low: str = "ci_low",
    high: str = "ci_high",
    reference: float | None = 0.5,
    xlabel: str = "AUROC",
    title: str | None = None,
) -> Figure:
    """Forest plot: one row per method, the point estimate and its confidence interval.

    Args:
        table: One row per method with columns ``method``, ``mean``, ``low``, ``high``.
        reference: Vertical reference line (chance level for AUROC); None for none.
        xlabel: Axis label.
        title: Figure title.
    """
    missing = [c for c in (method, mean, low, high) if c not in table.columns]
    if missing:
        raise MixmagValueError(f"comparison table lacks columns {missing}; it has {list(table.columns)}")
    df = table.sort_values(mean).reset_index(drop=True)
    fig = new_figure(6.0, 0.9 + 0.38 * len(df))
    ax = fig.add_subplot()
    y = np.arange(len(df))
    m = df[mean].to_numpy(float)
    err = np.vstack([m - df[low].to_numpy(float), df[high].to_numpy(float) - m])
    ax.errorbar(m, y, xerr=np.clip(err, 0, None), fmt="o", color="#0072B2", ecolor="#555555", capsize=3)
    for yi, mi, hi in zip(y, m, df[high].to_numpy(float), strict=True):
        ax.text(float(hi), float(yi), f"  {mi:.3f}", va="center", fontsize=8)
    if reference is not None:
        ax.axvline(reference, color="grey", linestyle="--", linewidth=0.8)
    ax.set_yticks(y, df[method].astype(str))
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def timings_plot(timings: Mapping[str, float], *, title: str | None = None) -> Figure:
    """Horizontal bars of wall time per stage (seconds), in the given order."""
    names, secs = list(timings), np.array([float(v) for v in timings.values()])
    fig = new_figure(6.0, 0.9 + 0.35 * len(names))
    ax = fig.add_subplot()
    y = np.arange(len(names))[::-1]
    ax.barh(y, secs, color="#009E73")
    for yi, s in zip(y, secs, strict=True):
        ax.text(float(s), float(yi), f"  {format_seconds(s)}", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.set_xlabel("wall time (s)")
    ax.set_xlim(0, max(secs.max() * 1.25, 1.0) if len(secs) else 1.0)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def format_seconds(seconds: float) -> str:
    """``75.2`` -> ``"1 min 15 s"``, ``3.4`` -> ``"3.4 s"``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
