"""Training curves, stage timings and the metrics-table reader behind them.

Inputs are plain values (DataFrames, metrics records, CSV/JSONL metrics files), so any stage's
outputs can be plotted; every function returns a matplotlib Figure built without pyplot (no figure
registry to leak or race on; see :mod:`mixmag.report.figures` to save it). Evaluation figures (ROC,
reliability diagram, comparison forest plot) live in :mod:`mixmag.report.evaluation_plots`; the
PNGs that stages write into their run folders are these same figures
(:mod:`mixmag.report.run_plots`), so a run folder and the HTML report draw each kind of figure once.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mixmag.errors import MixmagFileNotFoundError, MixmagValueError
from mixmag.report.figures import new_figure
from mixmag.utils.cost import format_seconds

MetricsSource: TypeAlias = pd.DataFrame | str | os.PathLike | Sequence[Mapping[str, Any]]

# Colour-blind-safe palette (Okabe-Ito) in a fixed order, so a method keeps its colour across plots.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
#: Line styles of the 1st, 2nd, ... round through :data:`PALETTE` (more methods than colours).
LINE_STYLES = ["-", "--", ":"]

# Curves up to this many points are drawn raw; longer ones get an EMA over ~1/30 of the run.
SMOOTH_FROM_POINTS = 50


def read_metrics_table(source: MetricsSource) -> pd.DataFrame:
    """A metrics table from a DataFrame, records (one mapping per row), a CSV or a JSON-lines file.

    A torn last JSONL line (from a crashed run) is skipped.

    Raises:
        MixmagFileNotFoundError: The file does not exist.
    """
    if isinstance(source, pd.DataFrame):
        return source
    if not isinstance(source, str | os.PathLike):
        return pd.DataFrame.from_records(list(source))
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


def _ema_decay(n_points: int, span: float | None) -> float:
    """EMA decay for a curve of ``n_points``; 0 means no smoothing."""
    if span is not None:
        return 0.0 if span <= 1 else 1.0 - 1.0 / span
    if n_points <= SMOOTH_FROM_POINTS:
        return 0.0
    return min(max(1.0 - 30.0 / n_points, 0.5), 0.98)  # a span of n/30 points, 2 to 50


def _ema(values: np.ndarray, decay: float) -> np.ndarray:
    """Exponential moving average; it restarts after a non-finite value."""
    out = np.empty(len(values))
    acc: float | None = None
    for i, v in enumerate(values.tolist()):
        acc = v if acc is None or not math.isfinite(acc) else decay * acc + (1 - decay) * v
        out[i] = acc
    return out


def loss_curves(
    runs: Mapping[str, MetricsSource] | MetricsSource,
    *,
    x: str = "step",
    columns: Sequence[str] = ("loss",),
    secondary: str | None = None,
    secondary_label: str | None = None,
    smooth: float | None = None,
    log_y: bool | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
) -> Figure:
    """Training curves of one run (e.g. a pretraining loss and its terms) or several (MEM beside CMEM).

    Curves longer than 50 points are drawn faint with their exponential moving average (EMA) on
    top, labelled "(EMA)"; the first of ``columns`` is the headline and drawn thicker.

    Args:
        runs: ``{name: metrics}`` or one metrics source (DataFrame, records, CSV or JSONL path)
            with an ``x`` column and the ``columns`` to plot. Legend labels: the column name for
            one source, the run name for a mapping and one column, ``name: column`` otherwise.
        x: Column of the x axis (e.g. ``step``, optimizer steps completed).
        columns: Metric columns, on the left y axis (missing ones are skipped per run).
        secondary: Column drawn grey and dotted against a right-hand y axis (e.g. ``lr``, the
            learning rate); None for no right-hand axis.
        secondary_label: Label of the right-hand axis (default: ``secondary``).
        smooth: EMA span in points (decay ``1 - 1/smooth``; 1 or less: raw curves). Default: a
            span of 1/30 of the points (2 to 50), raw curves up to 50 points.
        log_y: Logarithmic left y axis; default: when every plotted value is positive.
        xlabel: Default: ``x``.
        ylabel: Default: the column for one column, else ``value``.
        title: Figure title.

    Raises:
        MixmagValueError: A run has no ``x`` column, or none of ``columns`` exists in any run.
    """
    single = not isinstance(runs, Mapping)
    named: dict[str, MetricsSource] = {"run": runs} if single else dict(runs)  # type: ignore[dict-item,arg-type]
    tables = {name: read_metrics_table(source) for name, source in named.items()}
    fig = new_figure(7.0, 4.0)
    ax = fig.add_subplot()
    plotted: list[np.ndarray] = []
    for name, df in tables.items():
        if x not in df.columns:
            raise MixmagValueError(f"metrics of {name!r} have no {x!r} column (columns: {', '.join(map(str, df.columns))})")
        for col in columns:
            if col not in df.columns:
                continue
            d = df[[x, col]].dropna().sort_values(x, kind="stable")
            xs, ys = d[x].to_numpy(), d[col].to_numpy(dtype=float)
            colour = f"C{len(plotted) % 10}"  # matplotlib's default colour cycle (tab10)
            plotted.append(ys)
            label = col if single else (name if len(columns) == 1 else f"{name}: {col}")
            width, alpha = (1.6, 1.0) if col == columns[0] else (1.0, 0.8)
            decay = _ema_decay(len(ys), smooth)
            if decay > 0:
                ax.plot(xs, ys, color=colour, lw=0.6, alpha=0.25)
                ax.plot(xs, _ema(ys, decay), color=colour, lw=width, alpha=alpha, label=f"{label} (EMA)")
            else:
                ax.plot(xs, ys, color=colour, lw=width, alpha=alpha, label=label)
    if not plotted:
        raise MixmagValueError(f"none of the columns {list(columns)} found in the metrics")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or (columns[0] if len(columns) == 1 else "value"))
    if log_y is None:
        log_y = all(bool((ys > 0).all()) for ys in plotted)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    with_secondary = [df for df in tables.values() if secondary is not None and secondary in df.columns]
    if with_secondary:
        ax2 = ax.twinx()
        for df in with_secondary:
            d = df[[x, secondary]].dropna().sort_values(x, kind="stable")
            ax2.plot(d[x].to_numpy(), d[secondary].to_numpy(dtype=float), color="grey", ls=":", lw=1.0)
        ax2.set_ylabel(secondary_label or str(secondary), color="grey")
        ax2.tick_params(axis="y", colors="grey")
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    # laid out when drawn, at the dpi of the PNG (text extents, hence margins, depend on it)
    fig.set_layout_engine("tight")
    return fig


#: Validation metric columns of a learning-curve history: (label, y-range) of its right axis.
VALIDATION_METRICS = {"val_auroc": ("val AUROC", (0.0, 1.02)), "val_cindex": ("val C-index", (0.0, 1.02)),
                      "val_spearman": ("val Spearman ρ", (-1.02, 1.02))}


def learning_curve(history: pd.DataFrame, *, best_epoch: int | None = None, title: str | None = None) -> Figure:
    """Train/validation loss (left axis) and the validation metric (right axis) per epoch.

    Args:
        history: One row per epoch with columns ``epoch, train_loss, val_loss`` and one validation
            metric: ``val_auroc`` (classification: the loss is cross-entropy), ``val_spearman``
            (regression) or ``val_cindex`` (survival).
        best_epoch: Epoch whose weights were kept: a dashed vertical line; None for none.
        title: Figure title.
    """
    column = next((c for c in VALIDATION_METRICS if c in history.columns), "val_auroc")
    label, ylim = VALIDATION_METRICS[column]
    fig = new_figure(6.0, 3.6)
    ax = fig.add_subplot()
    ax.plot(history["epoch"], history["train_loss"], label="train loss", color="tab:blue")
    ax.plot(history["epoch"], history["val_loss"], label="val loss", color="tab:orange")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy" if column == "val_auroc" else "loss")
    ax2 = ax.twinx()
    ax2.plot(history["epoch"], history[column], label=label, color="tab:green", marker=".")
    ax2.set_ylabel(label)
    ax2.set_ylim(*ylim)
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="center right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
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
