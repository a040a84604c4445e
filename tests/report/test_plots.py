"""Report plots: metrics readers, ROC legend AUROC, forest-plot inputs, time formatting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mixmag.report.plots import (
    comparison_plot,
    format_seconds,
    loss_curves,
    read_metrics_table,
    roc_curves,
    timings_plot,
)


def test_read_metrics_jsonl_skips_torn_line_and_reads_csv(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 6)) + '\n{"step": 6, "lo')
    df = read_metrics_table(path)
    assert list(df["step"]) == [1, 2, 3, 4, 5]
    csv = tmp_path / "m.csv"
    df.to_csv(csv, index=False)
    assert read_metrics_table(csv).equals(df)
    with pytest.raises(FileNotFoundError):
        read_metrics_table(tmp_path / "missing.jsonl")


def test_loss_curves_plot_each_run(tmp_path: Path) -> None:
    a = pd.DataFrame({"step": np.arange(1, 101), "loss": np.linspace(2, 0.5, 100)})
    b = a.assign(loss=a["loss"] * 1.2)
    fig = loss_curves({"mem": a, "cmem": b})
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["mem", "cmem"]
    with pytest.raises(ValueError, match="no 'epoch' column"):
        loss_curves(a, x="epoch")
    with pytest.raises(ValueError, match="none of the columns"):
        loss_curves(a, columns=("accuracy",))


def test_roc_legend_reports_sklearn_auroc() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = y + rng.normal(0, 1, 60)
    folds = [(y[i::3], s[i::3]) for i in range(3)]
    fig = roc_curves({"pooled": (y, s), "folds": folds})
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels[0] == f"pooled (AUROC {roc_auc_score(y, s):.3f})"
    fold_aucs = [roc_auc_score(t, p) for t, p in folds]
    assert labels[1] == f"folds (AUROC {np.mean(fold_aucs):.3f} ± {np.std(fold_aucs):.3f})"


def test_comparison_plot_requires_columns() -> None:
    table = pd.DataFrame({"method": ["a", "b"], "mean": [0.7, 0.8], "ci_low": [0.6, 0.7], "ci_high": [0.8, 0.9]})
    fig = comparison_plot(table)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b"]
    with pytest.raises(ValueError, match="lacks columns"):
        comparison_plot(table.drop(columns="ci_low"))


def test_timings_and_format_seconds() -> None:
    assert format_seconds(3.44) == "3.4 s"
    assert format_seconds(75.2) == "1 min 15 s"
    assert format_seconds(3723) == "1 h 02 min"
    fig = timings_plot({"tile": 3.0, "embed": 30.0})
    ticks = {t.get_text(): t.get_position()[1] for t in fig.axes[0].get_yticklabels()}
    assert ticks["tile"] > ticks["embed"]  # stages top to bottom in pipeline order
