"""`mixmag demo --quick` end to end: embedded data only, the printed table and the report."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixmag.cli.app import build_app


@pytest.mark.slow
@pytest.mark.ci
def test_quick_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["demo", "--quick", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    study = tmp_path / "study"
    report = study / "report.html"
    assert report.exists()
    html = report.read_text(encoding="utf-8")
    for method in ("abmil-5x", "abmil-10x", "abmil-20x", "mix-random", "mix-mem", "mix-cmem", "mix-mem-cls"):
        assert method in result.output
        assert method in html
    assert "ImageNet model used as an offline baseline" in html
    assert "pretrained (self-supervised, labels unused) on all" in html
    assert "report:" in result.output
    assert list((study / "heatmaps").glob("*_attention.png"))
    _external_cohort_is_scored(tmp_path, result.output, html)
    _diagnostics_run_on_the_quick_demo(tmp_path)


def _external_cohort_is_scored(root: Path, output: str, html: str) -> None:
    """The second synthetic cohort (never trained on) is scored; its AUROC is printed after the CV table."""
    import pandas as pd

    from mixmag.pipeline.demo import DEMO_SIZES

    external = root / "study" / "external"
    assert (external / "predictions.csv").exists()
    metrics = pd.read_csv(external / "metrics.csv")
    assert len(metrics) == 7 and (metrics["n_bags"] == DEMO_SIZES["quick"].n_external).all()
    printed = " ".join(output.split())
    cv, ext = printed.find("AUROC: mean ± sd over folds"), printed.find("External validation")
    assert 0 <= cv < ext < printed.find("report:")  # the external table right after the CV tables
    assert "external AUROC" in printed and "internal CV AUROC" in printed
    row = metrics.set_index("method").loc["mix-mem-cls"]
    assert f"{row['auroc']:.3f} ({row['ci_lo']:.3f}–{row['ci_hi']:.3f})" in printed
    assert "External validation" in html and (external / "report.html").exists()


def _diagnostics_run_on_the_quick_demo(root: Path) -> None:
    """`mixmag diagnose` on the quick demo's features, checkpoints and MIL run with the cohort's
    ground-truth region labels (issue: diagnostics must work on any run with region labels)."""
    import json

    import pandas as pd

    study = root / "study"
    features = study / "features" / "efficientnet-lite0-imagenet"
    out = root / "diag"
    args = ["diagnose", str(features), "--out", str(out), "--region-labels", str(root / "cohort" / "region_labels.csv"),
            "--properties", "ring,atypical,informative", "--probes", "linear",
            "--checkpoint", f"mem={study / 'pretrain' / 'mem'}", "--mil", str(study / "mil" / "label" / "mix-mem"),
            "--slide-labels", str(root / "cohort" / "labels.csv"), "--label-column", "label"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    probes = pd.read_csv(out / "probes.csv")
    assert {"tiles-5x", "tiles-20x", "region-cls.mem"} <= set(probes["feature_set"])
    rated = probes.dropna(subset=["auroc"])
    assert len(rated) and rated["auroc"].between(0, 1).all()
    pretraining = pd.read_csv(out / "pretraining.csv")
    assert set(pretraining["pattern"]) >= {"random", "mask-5x", "mask-20x"}
    assert pretraining["ratio_zero"].notna().all()
    assert (out / "attention.csv").exists() and (out / "ceiling.csv").exists()
    summary = json.loads((out / "diagnostics.json").read_text())
    assert summary
