"""Figures of ``mixmag diagnose``: probe AUROC heatmap, reconstruction-vs-baseline bars, attention shares.

Inputs are the tidy tables of :mod:`mixmag.diagnose` (pandas DataFrames); every function returns a
matplotlib Figure (save it with :func:`mixmag.report.figures.save_png`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mixmag.report.figures import new_figure
from mixmag.report.plots import PALETTE


def probe_heatmap(probes: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Feature sets (rows) x properties (columns) AUROC, one panel per probe.

    Each cell shows the AUROC and, below it in brackets, the shuffled-label control (chance);
    skipped cells are grey. Colours span 0.5 (chance) to 1.0.

    Args:
        probes: Columns ``feature_set, property, probe, auroc, auroc_shuffled``.
        title: Figure title.
    """
    return _auroc_grid(probes, value="auroc", bracket="auroc_shuffled", panels=[
        (f"{k} probe", probes["probe"] == k) for k in dict.fromkeys(probes["probe"])],
        colour_label="AUROC (shuffled control in brackets)",
        title=title or "Which features hold the property? (slide-grouped CV AUROC)")


def ceiling_heatmap(ceiling: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Slide AUROC ceiling per feature set (rows) and property (columns): best region, best 3 in brackets.

    Args:
        ceiling: The table of :func:`mixmag.diagnose.ceiling.run_ceiling` (``feature_set, property,
            probe, slide_auroc_max, slide_auroc_top3``); ``single-tiles-*`` rows score single tiles.
        title: Figure title.
    """
    return _auroc_grid(ceiling, value="slide_auroc_max", bracket="slide_auroc_top3", panels=[
        (f"{k} probe", ceiling["probe"] == k) for k in dict.fromkeys(ceiling["probe"])],
        colour_label="slide AUROC of the best region (best 3 in brackets)",
        title=title or "Could a MIL model decide the slide from its best regions? (slide ceiling)")


def _auroc_grid(df: pd.DataFrame, *, value: str, bracket: str, panels: list[tuple[str, pd.Series]],
                colour_label: str, title: str) -> Figure:
    """Rows ``feature_set`` x columns ``property`` of ``value`` (``bracket`` below it), one panel per mask."""
    sets = list(dict.fromkeys(df["feature_set"]))
    props = list(dict.fromkeys(df["property"]))
    fig = new_figure(2.4 + 1.2 * len(props) * len(panels) + 0.4 * len(panels), 1.6 + 0.45 * len(sets))
    fig.set_layout_engine("constrained")  # long feature-set names, rotated labels, a shared colour bar
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, (name, mask) in zip(axes, panels, strict=True):
        sub = df[mask]
        grid = {col: sub.pivot_table(index="feature_set", columns="property", values=col, dropna=False).reindex(
            index=sets, columns=props).to_numpy(dtype=float) for col in (value, bracket)}
        values = grid[value]
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.5, vmax=1.0, aspect="auto")
        ax.set_facecolor("#dddddd")
        for i in range(len(sets)):
            for j in range(len(props)):
                v, c = values[i, j], grid[bracket][i, j]
                text = "skipped" if np.isnan(v) else f"{v:.2f}\n({c:.2f})"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="black" if np.isnan(v) or v > 0.8 else "white")
        ax.set_xticks(range(len(props)), props, rotation=30, ha="right")
        ax.set_yticks(range(len(sets)), sets if ax is axes[0] else [""] * len(sets))
        ax.set_title(name)
    if image is not None:
        fig.colorbar(image, ax=list(axes), label=colour_label, shrink=0.8)
    fig.suptitle(title)
    return fig


def reconstruction_bars(pretraining: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Model / baseline MSE ratio per masking pattern and masked magnification, one panel per checkpoint.

    Bars below the dashed line at 1 mean the encoder beats that baseline.

    Args:
        pretraining: Columns ``checkpoint, pattern, magnification, ratio_zero, ratio_region_mean``.
        title: Figure title.
    """
    names = list(dict.fromkeys(pretraining["checkpoint"]))
    n_groups = max(int((pretraining["checkpoint"] == n).sum()) for n in names)
    fig = new_figure(max(4.5, 0.55 * n_groups + 1.5), 2.8 * len(names))
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names, strict=True):
        sub = pretraining[pretraining["checkpoint"] == name]
        labels = [f"{p}\n{m}" if p == "random" else p for p, m in zip(sub["pattern"], sub["magnification"], strict=True)]
        xs = np.arange(len(sub))
        for k, (col, label) in enumerate((("ratio_zero", "vs predict-the-mean"),
                                          ("ratio_region_mean", "vs region's mean token"))):
            ax.bar(xs + (k - 0.5) * 0.38, sub[col].to_numpy(dtype=float), width=0.38, color=PALETTE[k], label=label)
        ax.axhline(1.0, color="black", ls="--", lw=0.8)
        ax.set_xticks(xs, labels, fontsize=7)
        ax.set_ylabel("MSE model / baseline")
        ax.set_title(str(name), fontsize=8)
        ax.set_ylim(0, max(1.15, float(np.nanmax(sub[["ratio_zero", "ratio_region_mean"]].to_numpy(float))) * 1.1))
    # one legend for all panels, above them, so it never hides a bar
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=8, bbox_to_anchor=(0.5, 0.955), frameon=False)
    fig.suptitle(title or "Masked reconstruction against trivial baselines (< 1 = learned)")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def attention_share_plot(summary: pd.DataFrame, *, bags: str = "positive", title: str | None = None) -> Figure:
    """Attention share on labelled regions against the uniform-attention share, per run and property.

    Args:
        summary: :func:`mixmag.diagnose.attention.summarize_attention` output.
        bags: Which bag group to show (``positive``, ``negative`` or ``all``).
        title: Figure title.
    """
    sub = summary[summary["bags"] == bags]
    labels = [f"{m}\n{p}" for m, p in zip(sub["method"], sub["property"], strict=True)]
    fig = new_figure(max(4.0, 0.9 * len(sub) + 1.5), 3.2)
    ax = fig.add_subplot()
    xs = np.arange(len(sub))
    ax.bar(xs - 0.19, sub["attention_share"].to_numpy(dtype=float), width=0.38, color=PALETTE[0], label="attention")
    ax.bar(xs + 0.19, sub["uniform_share"].to_numpy(dtype=float), width=0.38, color="#bbbbbb", label="uniform")
    for x, auc in zip(xs, sub["rank_auroc"].to_numpy(dtype=float), strict=True):
        if np.isfinite(auc):
            ax.text(float(x), 0.02, f"AUROC\n{auc:.2f}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_ylabel("share of attention mass")
    ax.set_ylim(0, 1.15)  # headroom so the legend sits above shares of up to 1
    ax.legend(loc="upper right", ncol=2, fontsize=8)
    ax.set_title(title or f"Attention on labelled regions ({bags} bags)")
    fig.tight_layout()
    return fig
