"""`mixmag train` with a multi-class, a regression and a survival target: run folders, the comparison,
the report and `mixmag predict` (docs/formats/mil-run.md, docs/concepts/endpoints.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mixmag.cli.app import build_app
from mixmag.evaluate.compare import compare_runs, comparison_view, format_tables
from mixmag.synth.mil_features import write_synthetic_cohort

TRAIN = ["--methods", "abmil-20x,abmil-10x", "--folds", "2", "--epochs", "2", "--bootstrap", "50", "--device", "cpu",
         "--no-progress", "--set", "mil.hidden_dim=8", "--set", "mil.attention_dim=4", "--set", "mil.survival_batch=8",
         "--set", "mil.target_types.ki67=regression", "--set", "mil.risk_groups=3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("endpoints")
    cohort = write_synthetic_cohort(root / "cohort", task="rare", endpoint="survival", n_patients=30, regions=(3, 4),
                                    tile_dim=8, seed=0)
    level = cohort.levels.loc[cohort.labels["patient_id"]].to_numpy()
    labels = cohort.labels.assign(ki67=np.round(10 + 80 * level, 1), grade=np.digitize(level, [1 / 3, 2 / 3]) + 1)
    labels.to_csv(root / "labels.csv", index=False)
    res = CliRunner().invoke(build_app(), ["train", str(cohort.features_dir), "--labels", str(root / "labels.csv"),
                                           "--out", str(root / "out"), *TRAIN])
    assert res.exit_code == 0, res.output
    return root, cohort.features_dir, res.output


def test_run_folders_per_endpoint(trained: tuple[Path, Path, str]) -> None:
    root, _, output = trained
    out = root / "out"
    assert json.loads((out / "summary.json").read_text())["endpoints"] == {
        "os": "survival", "ki67": "regression", "grade": "classification"}
    surv = out / "os" / "abmil-20x"
    assert (surv / "km.png").is_file() and not (surv / "roc.png").exists()
    preds = pd.read_csv(surv / "predictions.csv")
    assert list(preds.columns) == ["bag_id", "patient_id", "slide_ids", "fold", "time", "event", "risk", "risk_group"]
    assert set(preds["risk_group"]) == {"low risk", "intermediate risk", "high risk"}
    m = json.loads((surv / "metrics.json").read_text())
    assert (m["endpoint"], m["metric"], m["n_bags"]) == ("survival", "cindex", 30)
    assert set(m["fold_cindex"]) == {"0", "1"} and m["n_events"] + m["n_censored"] == 30
    assert m["mean_cindex"] == pytest.approx(np.mean(list(m["fold_cindex"].values())))
    assert m["risk_groups"]["n_groups"] == 3 and 0 <= m["risk_groups"]["logrank_p"] <= 1
    assert json.loads((surv / "config.json").read_text())["endpoint"] == {
        "key": "survival", "columns": ["os_time", "os_event"], "survival_batch": 8}
    assert "val_cindex" in pd.read_csv(surv / "folds" / "fold_0" / "history.csv").columns

    reg = out / "ki67" / "abmil-20x"
    assert (reg / "scatter.png").is_file()
    preds = pd.read_csv(reg / "predictions.csv")
    assert list(preds.columns) == ["bag_id", "patient_id", "slide_ids", "fold", "label", "pred"]
    m = json.loads((reg / "metrics.json").read_text())
    assert {"mean_spearman", "pooled_spearman", "pearson", "mae", "fold_mae", "target_mean"} <= set(m)

    cls = out / "grade" / "abmil-20x"
    m = json.loads((cls / "metrics.json").read_text())
    assert "endpoint" not in m and m["classes"] == ["1", "2", "3"] and 0 <= m["balanced_accuracy"] <= 1
    assert list(pd.read_csv(cls / "predictions.csv").columns)[-3:] == ["prob_0", "prob_1", "prob_2"]
    assert "cindex" in output and "spearman" in output  # the printed table names each metric


def test_comparison_and_report_per_metric(trained: tuple[Path, Path, str], tmp_path: Path) -> None:
    from mixmag.pipeline.report import comparison_rows, endpoint_panels
    from mixmag.report.build import build_report

    root, _, _ = trained
    table = compare_runs([root / "out"], tmp_path / "cmp", n_boot=50)
    rows = table[table["target"] != "Average"].set_index(["target", "method"])
    assert rows.loc[("os", "abmil-10x"), "metric"] == "cindex" and np.isfinite(rows.loc[("os", "abmil-10x"), "p_bootstrap"])
    assert np.isnan(rows.loc[("os", "abmil-10x"), "p_delong"])  # DeLong only for binary AUROC
    assert np.isfinite(rows.loc[("ki67", "abmil-10x"), "delta_lo"])
    view = comparison_view(table)
    assert set(view["metric"]) == {"auroc", "spearman", "cindex"}
    auc, _ = format_tables(table)
    assert {"os (C-index)", "ki67 (Spearman ρ)", "grade", "Average"} == set(auc.index)
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "# Primary metric by task and method" in md and (tmp_path / "cmp" / "comparison.png").is_file()

    panels = endpoint_panels(table)
    assert sorted({p.kind for p in panels}) == ["multi-class", "regression", "survival"]
    html = build_report(tmp_path / "report.html", comparison=comparison_rows(table), metric="primary metric",
                        endpoints=panels, environment={}).read_text()
    for text in ("Endpoints", "Kaplan-Meier", "Spearman", "balanced accuracy", "log-rank p", "C-index"):
        assert text in html, text
    assert html.count("data:image/png;base64") == 1 + len(panels)  # the forest plot and one picture per run


def test_predict_scores_a_survival_and_a_regression_target(trained: tuple[Path, Path, str], tmp_path: Path) -> None:
    from mixmag.pipeline.predict import predict_cohort

    root, features, _ = trained
    result = predict_cohort(root / "out", [features], tmp_path / "pred", labels=root / "labels.csv",
                            methods=["abmil-20x"], device="cpu", n_boot=50, write_report=True, progress=False)
    metrics = result.metrics.set_index("target")
    assert metrics.loc["os", "metric"] == "cindex" and 0 <= metrics.loc["os", "cindex"] <= 1
    assert metrics.loc["ki67", "metric"] == "spearman" and np.isfinite(metrics.loc["ki67", "spearman"])
    assert np.isfinite(metrics.loc["grade", "auroc"])
    surv = result.predictions[result.predictions["target"] == "os"]
    assert {"time", "event", "risk", "risk_fold0", "risk_fold1"} <= set(surv.columns)  # risk: the fold ensemble
    assert (tmp_path / "pred" / "os" / "abmil-20x" / "km.png").is_file()
    assert (tmp_path / "pred" / "ki67" / "abmil-20x" / "scatter.png").is_file()
    html = (tmp_path / "pred" / "report.html").read_text()
    assert "C-index" in html and "external metric (95% CI)" in html and "External AUROC" not in html

    from mixmag.report.external import external_table, value_columns

    # targets of several endpoints: each cell names its metric; one endpoint: the header does
    table = external_table(result.metrics).set_index("target")
    _, column = value_columns(table)
    assert column == "external metric (95% CI)"
    assert table.loc["os", column].startswith("C-index ") and table.loc["ki67", column].startswith("Spearman ρ ")
    assert table.loc["grade", column].startswith("AUROC ")
    survival_only = external_table(result.metrics[result.metrics["target"] == "os"])
    assert value_columns(survival_only)[1] == "external C-index (95% CI)"
    assert survival_only.iloc[0]["external C-index (95% CI)"][0].isdigit()


def test_predict_cli_prints_each_metric(trained: tuple[Path, Path, str], tmp_path: Path) -> None:
    root, features, _ = trained
    res = CliRunner().invoke(build_app(), ["predict", str(root / "out"), str(features), "--out", str(tmp_path / "p"),
                                           "--labels", str(root / "labels.csv"), "--method", "abmil-20x",
                                           "--no-report", "--no-progress", "--heatmap-slides", "0"])
    assert res.exit_code == 0, res.output
    assert "cindex" in res.output and "spearman" in res.output and "auroc" in res.output


def test_study_report_of_a_mixed_comparison(trained: tuple[Path, Path, str], tmp_path: Path) -> None:
    from mixmag.config import PipelineConfig
    from mixmag.pipeline.heatmaps import pick_method
    from mixmag.pipeline.report import write_study_report

    root, _, _ = trained
    table = compare_runs([root / "out"], n_boot=20)
    assert pick_method(table)[0] == "grade"  # heatmaps prefer a classification target
    config = PipelineConfig(out=tmp_path, mil={"labels": str(root / "labels.csv")})
    html = write_study_report(tmp_path, config, {}, table).read_text()
    assert "Endpoints" in html and "Kaplan-Meier" in html and "primary metric (95% CI)" in html
