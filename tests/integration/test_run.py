"""`mixmag run` end to end on a tiny synthetic study, and the skip-on-rerun contract."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mixmag.cli.app import build_app
from mixmag.synth.cohort import make_synthetic_cohort

STAGES = ["tile", "embed", "pretrain-mem", "pretrain-random", "train", "compare", "heatmaps", "diagnose"]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    cohort = make_synthetic_cohort(root / "cohort", n_slides=8, n_unlabeled=2, slide_px=(1792, 896),
                                   seed=3, progress=False)
    config = {
        "out": str(root / "run"),
        "slides": {"inputs": [str(cohort.out_dir / "slides")],
                   "pretrain_inputs": [str(cohort.out_dir / "unlabeled")]},
        "tiling": {"thumbnail_px": 512},
        "embed": {"encoder": "tiny.d16", "random_weights": True, "batch_size": 16, "workers": 0},
        "region": {"preset": "tiny", "objectives": ["mem"], "steps": 3, "batch_size": 8,
                   "checkpoint_every": 0, "num_workers": 0},
        "mil": {"labels": str(cohort.labels_csv), "methods": ["abmil-20x", "mix-random", "mix-mem-cls"],
                "epochs": 2, "patience": 2, "hidden_dim": 16, "attention_dim": 8, "region_preset": "tiny",
                "device": "cpu"},
        "evaluate": {"folds": 2, "bootstrap": 20},
        "report": {"heatmap_slides": 1, "top_k": 2},
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _run(config: Path) -> str:
    result = CliRunner().invoke(build_app(), ["run", str(config), "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_run_completes_then_skips_every_stage(tiny_study: Path) -> None:
    out = _run(tiny_study)
    run_dir = tiny_study.parent / "run"
    ledger = json.loads((run_dir / "stages.json").read_text())["stages"]
    assert sorted(ledger) == sorted(STAGES)
    assert all(rec["status"] == "done" for rec in ledger.values())
    for name in ("report.html", "config.resolved.yaml", "env.json", "run.log", "timings.json",
                 "compare/comparison.csv", "tiles/regions/manifest.csv", "features/tiny.d16/manifest.csv"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "heatmaps").glob("*_attention.png"))
    assert "report:" in out
    # without evaluate.region_labels only the label-free pretraining diagnostics run (mem; `random` has no decoder)
    assert set(pd.read_csv(run_dir / "diagnostics" / "pretraining.csv")["checkpoint"]) == {"mem"}
    assert not (run_dir / "diagnostics" / "probes.csv").exists()
    assert '<h2>Diagnostics</h2>' in (run_dir / "report.html").read_text(encoding="utf-8")
    first = pd.read_csv(run_dir / "compare" / "comparison.csv")
    assert set(first["method"]) >= {"abmil-20x", "mix-random", "mix-mem-cls"}
    mtimes = {p: p.stat().st_mtime_ns for p in (run_dir / "features" / "tiny.d16").glob("*.h5")}

    log_before = (run_dir / "run.log").read_text()
    out2 = _run(tiny_study)
    new_log = (run_dir / "run.log").read_text()[len(log_before):]
    skipped = [line for line in new_log.splitlines() if "up to date" in line]
    assert len(skipped) == len(STAGES), new_log
    assert "stages reused from an earlier run: " + ", ".join(STAGES) in " ".join(out2.split())
    second = pd.read_csv(run_dir / "compare" / "comparison.csv")
    pd.testing.assert_frame_equal(first, second)
    assert mtimes == {p: p.stat().st_mtime_ns for p in mtimes}  # nothing recomputed


def test_changing_a_downstream_setting_reruns_only_downstream(tiny_study: Path) -> None:
    log = tiny_study.parent / "run" / "run.log"
    before = log.read_text()
    result = CliRunner().invoke(build_app(), ["run", str(tiny_study), "--no-progress",
                                              "--set", "report.top_k=1"])
    assert result.exit_code == 0, result.output
    messages = log.read_text()[len(before):]
    for stage in ("tile", "embed", "train", "compare", "diagnose"):
        assert f"stage {stage:<9s} up to date" in messages
    assert "stage heatmaps  running" in messages


def test_report_redraws_the_heatmaps_with_report_settings(tiny_study: Path) -> None:
    from mixmag.pipeline.heatmaps import pick_method

    run_dir = tiny_study.parent / "run"
    target, method, _ = pick_method(pd.read_csv(run_dir / "compare" / "comparison.csv"))  # type: ignore[misc]
    heatmaps = run_dir / "heatmaps"
    stale, other = heatmaps / f"{target}_{method}_gone_attention.png", heatmaps / "yours_s_attention.png"
    for path in (stale, other):
        path.write_bytes(b"png")
    ledger = (run_dir / "stages.json").read_text()
    result = CliRunner().invoke(build_app(), ["report", str(run_dir), "--heatmap-slides", "2", "--top-k", "1",
                                              "--set", "report.thumbnail_px=256"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "heatmaps:" in result.output and "report:" in result.output
    assert not stale.exists() and other.exists()  # the method's earlier pictures are replaced, others kept
    assert len(list(heatmaps.glob(f"{target}_{method}_*_attention.png"))) >= 2
    assert (run_dir / "stages.json").read_text() == ledger
    other.unlink()
    report = run_dir / "report.html"
    report.unlink()
    plain = CliRunner().invoke(build_app(), ["report", str(run_dir)])
    assert plain.exit_code == 0 and "heatmaps:" not in plain.output  # no report settings: nothing redrawn
    # a `mixmag run` folder is rebuilt by the study's own builder: the comparison and heatmaps stay
    html = report.read_text(encoding="utf-8")
    assert "Method comparison" in html and method in html
    assert f"{target}_{method}_" in html and "yours_s_attention" not in html
    import mixmag as mm  # the Python API takes the same path

    report.unlink()
    assert mm.build_report(run_dir) == report and "Method comparison" in report.read_text(encoding="utf-8")


def test_external_cohort_is_scored_once_beside_the_cross_validated_auroc(tiny_study: Path) -> None:
    run_dir = tiny_study.parent / "run"
    # a second cohort of the same generator, other seed: the study's trained runs score it
    cohort = make_synthetic_cohort(tiny_study.parent / "external-cohort", n_slides=4, slide_px=(1792, 896), seed=4,
                                   progress=False)
    sets = ["--set", f"external.inputs=[{cohort.out_dir / 'slides'}]", "--set", f"external.labels={cohort.labels_csv}"]
    log = run_dir / "run.log"
    before = log.read_text()
    result = CliRunner().invoke(build_app(), ["run", str(tiny_study), "--no-progress", *sets])
    assert result.exit_code == 0, result.output + repr(result.exception)
    messages = log.read_text()[len(before):]
    for stage in ("tile", "embed", "pretrain-mem", "train", "compare", "diagnose"):  # nothing earlier reruns
        assert f"stage {stage:<9s} up to date" in messages, stage
    assert "stage external  running" in messages
    external = run_dir / "external"
    metrics = pd.read_csv(external / "metrics.csv")
    assert set(metrics["method"]) == {"abmil-20x", "mix-random", "mix-mem-cls"}
    assert (metrics["n_bags"] == 4).all() and metrics["auroc"].between(0, 1).all()
    assert set(pd.read_csv(external / "predictions.csv")["bag_id"]) == {s.patient_id for s in cohort.slides}
    assert list((external / "features" / "tiny.d16").glob("*.h5"))  # embedded like the training slides
    printed = " ".join(result.output.split())
    assert "External validation" in printed and "mix-mem-cls" in printed
    assert f"{metrics['auroc'].iloc[0]:.3f}" in printed  # the external AUROC printed after the CV tables
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<h2>External validation</h2>" in html and "internal CV AUROC" in html  # a section of the study report
    page = (external / "report.html").read_text(encoding="utf-8")
    assert "<h2>External validation</h2>" in page and "internal CV AUROC" in page
    again = _rerun(tiny_study, *(a for a in sets if a != "--set"))
    assert "stage external  up to date" in again
    (run_dir / "report.html").unlink()
    rebuilt = CliRunner().invoke(build_app(), ["report", str(run_dir)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "External validation" in (run_dir / "report.html").read_text(encoding="utf-8")


def _rerun(config: Path, *overrides: str) -> str:
    """Run the study again with ``--set`` overrides; return the new part of its run.log."""
    log = config.parent / "run" / "run.log"
    before = log.read_text()
    result = CliRunner().invoke(build_app(), ["run", str(config), "--no-progress",
                                              *(a for o in overrides for a in ("--set", o))])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return log.read_text()[len(before):]


def test_region_labels_add_probes_ceiling_and_attention_without_retraining(tiny_study: Path) -> None:
    run_dir = tiny_study.parent / "run"
    labels = tiny_study.parent / "cohort" / "region_labels.csv"
    messages = _rerun(tiny_study, f"evaluate.region_labels={labels}")
    for stage in ("pretrain-mem", "train", "compare"):  # diagnostics settings never retrain
        assert f"stage {stage:<9s} up to date" in messages
    assert "stage diagnose  running" in messages
    diag = run_dir / "diagnostics"
    for name in ("pretraining.csv", "probes.csv", "ceiling.csv", "attention_summary.csv"):
        assert (diag / name).exists(), name
    assert {"tiles-20x", "region-cls.mem"} <= set(pd.read_csv(diag / "probes.csv")["feature_set"])
    summary = json.loads((diag / "diagnostics.json").read_text())
    assert summary["settings"]["probes"] == ["linear"]
    assert summary["settings"]["slide_label_column"] == "label"
    assert Path(summary["inputs"]["mil"]).parts[-2:] == ("label", "mix-random")  # the heatmaps' run
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Probes: is the property in the features?" in html and "Slide ceiling" in html


def test_diagnostics_off_skips_the_stage_and_its_report_section(tiny_study: Path) -> None:
    messages = _rerun(tiny_study, "evaluate.diagnostics=false", "evaluate.region_labels=null")
    assert "stage diagnose" not in messages and "no diagnose stage" in messages
    assert "stage train     up to date" in messages
    assert "<h2>Diagnostics</h2>" not in (tiny_study.parent / "run" / "report.html").read_text(encoding="utf-8")


def test_without_labels_the_pretraining_diagnostics_still_run(tiny_study: Path) -> None:
    run_dir = tiny_study.parent / "run"
    messages = _rerun(tiny_study, "mil.labels=null")
    assert "stage train" not in messages and "stage diagnose  running" in messages
    assert (run_dir / "diagnostics" / "pretraining.csv").exists()
    assert not (run_dir / "diagnostics" / "probes.csv").exists()  # the folder holds this run's results only
    assert "<h2>Diagnostics</h2>" in (run_dir / "report.html").read_text(encoding="utf-8")


def test_config_errors_are_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiling:\n  region_um: 448\n  min_tisue: 0.3\n", encoding="utf-8")
    result = CliRunner().invoke(build_app(), ["run", str(bad)])
    assert result.exit_code == 2
    assert "min_tisue" in result.output and "min_tissue" in result.output and ":3" in result.output
    missing = CliRunner().invoke(build_app(), ["run", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "config init" in missing.output


def test_a_corrupt_feature_file_is_left_out_and_named_in_the_report(tiny_study: Path) -> None:
    """With mil.allow_missing_slides every method trains on the other slides; the report says which and why."""
    run_dir = tiny_study.parent / "run"
    labelled = pd.read_csv(tiny_study.parent / "cohort" / "labels.csv")["slide_id"]
    victim = run_dir / "features" / "tiny.d16" / f"{sorted(labelled)[0]}.h5"
    victim.write_bytes(victim.read_bytes()[:2000])  # a truncated copy, as a full disk leaves it
    retrain = ["run", str(tiny_study), "--no-progress", "--set", "mil.epochs=3"]  # the train stage runs again
    result = CliRunner().invoke(build_app(), retrain)
    assert result.exit_code == 2 and victim.stem in result.output and "allow_missing_slides" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(build_app(), [*retrain, "--set", "mil.allow_missing_slides=true"])
    assert result.exit_code == 0, result.output
    excluded = pd.read_csv(run_dir / "mil" / "label" / "excluded.csv")
    assert victim.stem in set(excluded["slide_id"])
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "left out of training" in html and victim.stem in html
    table = pd.read_csv(run_dir / "compare" / "comparison.csv")
    assert table["mean_auroc"].notna().all()
