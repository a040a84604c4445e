"""`mixmag train` and `mixmag compare` through the CLI: thin wrappers, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from mixmag.cli import app as app_module
from mixmag.cli import train_cmd
from mixmag.synth.mil_features import SyntheticCohort


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()
    train_cmd.register(app)
    return app


def test_registered_in_the_app() -> None:
    assert "train_cmd" in app_module.COMMAND_MODULES


def test_train_then_compare(cli: typer.Typer, small_cohort: SyntheticCohort, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "runs"
    res = runner.invoke(cli, ["train", str(small_cohort.features_dir), "--labels", str(small_cohort.labels_csv),
                              "--out", str(out), "--methods", "abmil-5x,abmil-20x", "--folds", "2", "--epochs", "1",
                              "--bootstrap", "20", "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "abmil-20x" in res.output and (out / "label" / "abmil-5x" / "metrics.json").is_file()
    assert (out / "run.log").is_file()
    res = runner.invoke(cli, ["compare", str(out), "--out", str(tmp_path / "cmp"), "--bootstrap", "50"])
    assert res.exit_code == 0, res.output
    assert "Δ AUROC vs abmil-20x" in res.output and "Average" in res.output
    assert (tmp_path / "cmp" / "comparison.md").is_file()


def test_bad_labels_give_one_line_error(cli: typer.Typer, small_cohort: SyntheticCohort, tmp_path: Path) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_text("patient_id,slide_id,y\nA,P000-S0,1\nA,P001-S0,0\nB,P002-S0,0\n")
    res = CliRunner().invoke(cli, ["train", str(small_cohort.features_dir), "--labels", str(bad), "--out",
                                   str(tmp_path / "o"), "--methods", "abmil-5x", "--no-progress"])
    assert res.exit_code == 2
    assert "patients whose slides have different labels: 'A'" in res.output
    assert "Traceback" not in res.output


def test_train_takes_a_study_config_and_set_overrides(cli: typer.Typer, small_cohort: SyntheticCohort,
                                                      tmp_path: Path) -> None:
    config = tmp_path / "study.yaml"
    config.write_text(f"mil:\n  labels: {small_cohort.labels_csv}\n  methods: [abmil-20x]\n  epochs: 1\n"
                      "  device: cpu\nevaluate:\n  folds: 2\n  bootstrap: 20\n", encoding="utf-8")
    out = tmp_path / "runs"
    res = CliRunner().invoke(cli, ["train", str(small_cohort.features_dir), "--out", str(out), "--config",
                                   str(config), "--set", "mil.hidden_dim=256", "--no-progress"])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "label" / "abmil-20x" / "config.json").read_text())
    assert run["train"]["hidden_dim"] == 256 and run["train"]["epochs"] == 1  # --set > file > defaults
    assert run["labels"]["path"] == str(small_cohort.labels_csv)


def test_train_config_errors_are_one_line(cli: typer.Typer, small_cohort: SyntheticCohort, tmp_path: Path) -> None:
    config = tmp_path / "study.yaml"
    config.write_text("mil:\n  epoch: 3\n", encoding="utf-8")
    res = CliRunner().invoke(cli, ["train", str(small_cohort.features_dir), "--out", str(tmp_path / "o"),
                                   "--config", str(config)])
    assert res.exit_code == 2
    assert [ln for ln in res.output.splitlines() if ln.strip()] == [
        f"error: {config}:2: unknown key 'mil.epoch'; did you mean 'mil.epochs'?"]
    res = CliRunner().invoke(cli, ["train", str(small_cohort.features_dir), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no labels table: pass --labels CSV" in res.output


def test_target_type_and_survival_columns_options_declare_targets(
        cli: typer.Typer, small_cohort: SyntheticCohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mixmag.mil.experiment as experiment

    seen = {}

    def record(features: Path, labels: Path, out: Path, *, settings: object, **kw: object) -> object:
        seen["settings"] = settings
        raise SystemExit(0)  # the settings are what this test reads; no training

    monkeypatch.setattr(experiment, "train_methods", record)
    labels = pd.read_csv(small_cohort.labels_csv)
    n = len(labels)
    labels = labels.assign(grade=[1 + i % 3 for i in range(n)], os_months=[5.0 + i for i in range(n)],
                           os_status=[i % 2 for i in range(n)])
    labels.to_csv(tmp_path / "labels.csv", index=False)
    config = tmp_path / "study.yaml"
    config.write_text("mil:\n  target_types: {grade: multiclass}\n", encoding="utf-8")
    res = CliRunner().invoke(cli, ["train", str(small_cohort.features_dir), "--labels", str(tmp_path / "labels.csv"),
                                   "--out", str(tmp_path / "o"), "--config", str(config),
                                   "--target-type", "label=regression", "--target-type", " os = survival ",
                                   "--survival-columns", "os=os_months,os_status", "--no-progress"])
    assert res.exit_code == 0, res.output
    settings = seen["settings"]
    # the options add per-target keys: the config file's other declarations stay
    assert settings.target_types == {"grade": "multiclass", "label": "regression", "os": "survival"}
    assert settings.survival_columns == {"os": ["os_months", "os_status"]}


@pytest.mark.parametrize(("argv", "message"), [
    (["--target-type", "label"], "error: --target-type 'label': expected NAME=TYPE, e.g. --target-type os=type"),
    (["--survival-columns", "os="], "error: --survival-columns 'os=': expected NAME=TIME,EVENT"),
    (["--target-type", "label=survivl"], "--target-type"),
])
def test_bad_target_type_items_are_one_line(cli: typer.Typer, small_cohort: SyntheticCohort, tmp_path: Path,
                                            argv: list[str], message: str) -> None:
    res = CliRunner().invoke(cli, ["train", str(small_cohort.features_dir), "--labels", str(small_cohort.labels_csv),
                                   "--out", str(tmp_path / "o"), *argv, "--no-progress"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], res.output
    assert not (tmp_path / "o").exists()
