"""Report plots: metrics readers, loss curves, ROC legend AUROC, forest-plot inputs, time formatting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mixmag.report.evaluation_plots import comparison_plot, roc_curves
from mixmag.report.plots import format_seconds, loss_curves, read_metrics_table, timings_plot


def test_read_metrics_jsonl_skips_torn_line_and_reads_csv(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 6)) + '\n{"step": 6, "lo')
    df = read_metrics_table(path)
    assert list(df["step"]) == [1, 2, 3, 4, 5]
    csv = tmp_path / "m.csv"
    df.to_csv(csv, index=False)
    assert read_metrics_table(csv).equals(df)
    records = [json.loads(line) for line in path.read_text().splitlines()[:5]]
    assert read_metrics_table(records).equals(df)
    with pytest.raises(FileNotFoundError):
        read_metrics_table(tmp_path / "missing.jsonl")


def test_loss_curves_plot_each_run(tmp_path: Path) -> None:
    a = pd.DataFrame({"step": np.arange(1, 101), "loss": np.linspace(2, 0.5, 100)})
    b = a.assign(loss=a["loss"] * 1.2)
    fig = loss_curves({"mem": a, "cmem": b})
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["mem (EMA)", "cmem (EMA)"]  # > 50 points: raw values faint under their EMA
    assert fig.axes[0].get_yscale() == "log"  # every value positive
    raw = loss_curves({"mem": a.head(50)}, log_y=False)
    assert raw.axes[0].get_legend_handles_labels()[1] == ["mem"]
    assert raw.axes[0].get_yscale() == "linear"
    with pytest.raises(ValueError, match="no 'epoch' column"):
        loss_curves(a, x="epoch")
    with pytest.raises(ValueError, match="none of the columns"):
        loss_curves(a, columns=("accuracy",))


def test_loss_curves_of_one_run_plot_its_terms_and_the_learning_rate() -> None:
    records = [{"step": s, "loss": 2.0 / s, "mem1": 1.0 / s, "nce": 1.0 / s, "lr": 1e-3} for s in range(1, 31)]
    fig = loss_curves(records, columns=("loss", "mem1", "nce"), secondary="lr", secondary_label="learning rate")
    ax, right = fig.axes
    assert ax.get_legend_handles_labels()[1] == ["loss", "mem1", "nce"]
    assert [line.get_linewidth() for line in ax.get_lines()] == [1.6, 1.0, 1.0]  # the total is the headline
    assert right.get_ylabel() == "learning rate"


def test_roc_legend_reports_sklearn_auroc() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = y + rng.normal(0, 1, 60)
    folds = [(y[i::3], s[i::3]) for i in range(3)]
    fig = roc_curves({"pooled": (y, s), "folds": folds})
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels[0] == f"pooled (AUROC {roc_auc_score(y, s):.3f}, n=60)"
    # per-fold input: the folds drawn thin (unlabelled next to other methods), all of them pooled
    y_all, s_all = np.concatenate([t for t, _ in folds]), np.concatenate([p for _, p in folds])
    assert labels[1:] == [f"folds (AUROC {roc_auc_score(y_all, s_all):.3f}, n=60)"]
    assert len(fig.axes[0].get_lines()) == 1 + 1 + 3 + 1  # chance diagonal, pooled, 3 folds + pooled


def test_roc_of_one_method_labels_its_folds_and_skips_single_class_ones() -> None:
    y = np.array([0, 1] * 10 + [1] * 5)
    s = np.linspace(0, 1, len(y))
    fig = roc_curves({"pooled": {0: (y[:10], s[:10]), 1: (y[10:20], s[10:20]), 2: (y[20:], s[20:])}})
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["fold 0", "fold 1", f"pooled (AUROC {roc_auc_score(y, s):.3f}, n=25)"]


def test_roc_of_a_multiclass_task_draws_one_vs_rest_curves() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 10)
    prob = rng.dirichlet(np.ones(3), len(y))
    fig = roc_curves({"all": (y, prob)}, class_names=["a", "b", "c"])
    assert fig.axes[0].get_legend_handles_labels()[1] == ["a vs rest", "b vs rest", "c vs rest"]


def test_comparison_plot_requires_columns() -> None:
    table = pd.DataFrame({"method": ["a", "b"], "mean": [0.7, 0.8], "ci_low": [0.6, 0.7], "ci_high": [0.8, 0.9]})
    fig = comparison_plot(table)
    # rows top to bottom in table order; tick labels are listed bottom up
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["b", "a"]
    fig = comparison_plot(table, order=["b", "a"])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b"]
    with pytest.raises(ValueError, match="lacks columns"):
        comparison_plot(table.drop(columns="ci_low"))
    with pytest.raises(ValueError, match="lacks columns"):
        comparison_plot(table, sd="sd")


def test_comparison_plot_panels_and_reference_method() -> None:
    table = pd.DataFrame({"target": ["t1", "t1", "t2", "t2"], "method": ["ref", "new"] * 2,
                          "mean": [0.6, 0.7, 0.8, 0.75], "sd": [0.05, np.nan, 0.02, 0.03],
                          "ci_low": [0.5, 0.6, 0.7, 0.7], "ci_high": [0.7, 0.8, 0.9, 0.8]})
    fig = comparison_plot(table, sd="sd", panel="target", reference="ref", note="what is drawn")
    assert [ax.get_title() for ax in fig.axes] == ["t1", "t2"]
    # dashed line at the reference method's mean in each panel
    assert [[line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] for ax in fig.axes] \
        == [[0.6], [0.8]]
    assert "what is drawn" in [t.get_text() for t in fig.texts]  # the suptitle


def test_timings_and_format_seconds() -> None:
    assert format_seconds(3.44) == "3.4 s"
    assert format_seconds(75.2) == "1 min 15 s"
    assert format_seconds(3723) == "1 h 02 min"
    fig = timings_plot({"tile": 3.0, "embed": 30.0})
    ticks = {t.get_text(): t.get_position()[1] for t in fig.axes[0].get_yticklabels()}
    assert ticks["tile"] > ticks["embed"]  # stages top to bottom in pipeline order
