from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from mixmag.cli.app import build_app
from mixmag.region.settings import RegionSettings

runner = CliRunner()


def test_pretrain_then_encode_through_the_cli(small_features: Path, tmp_path: Path) -> None:
    config = tmp_path / "study.yaml"
    config.write_text("region:\n  preset: tiny\n  steps: 3\n  batch_size: 8\n  num_workers: 0\n  device: cpu\n")
    app = build_app()
    res = runner.invoke(app, ["pretrain", str(small_features), "--out", str(tmp_path / "run"), "--config",
                              str(config), "--objective", "cmem", "--steps", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "cmem: 2 steps on 4 slides" in res.output
    settings = json.loads((tmp_path / "run" / "config.resolved.json").read_text())["settings"]
    assert (settings["steps"], settings["batch_size"], settings["preset"]) == (2, 8, "tiny")  # CLI > YAML
    assert (tmp_path / "run" / "run.log").is_file()
    res = runner.invoke(app, ["encode", str(small_features), "-c", str(tmp_path / "run"), "-o",
                              str(tmp_path / "emb"), "--mode", "tokens", "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "tokens: 4 encoded, 0 already done, 1 empty, 0 failed" in res.output


def test_cli_errors_are_one_line(small_features: Path, tmp_path: Path) -> None:
    app = build_app()
    res = runner.invoke(app, ["pretrain", str(small_features), "--out", str(tmp_path / "r"), "--objective", "mam"])
    assert res.exit_code == 2 and "unknown pretraining objective 'mam'" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["encode", str(small_features), "-c", str(tmp_path / "none"), "-o", str(tmp_path / "e")])
    assert res.exit_code == 2 and "no region-encoder checkpoint" in res.output


def test_config_architecture_fields_override_the_preset_only_when_set() -> None:
    s = RegionSettings(preset="small").run_settings("mem")
    assert (s.preset, s.width, s.depth) == ("small", None, None)  # section defaults do not widen the preset
    s = RegionSettings(preset="small", depth=3, steps=5).run_settings("mem")
    assert (s.depth, s.width, s.steps) == (3, None, 5)


def test_pretrain_config_typo_names_file_line_and_close_match(small_features: Path, tmp_path: Path) -> None:
    # the same message as `mixmag run` / `mixmag config show` (tests/test_config.py)
    path = tmp_path / "study.yaml"
    path.write_text("region:\n  preset: tiny\n  stepz: 3\n", encoding="utf-8")
    res = runner.invoke(build_app(), ["pretrain", str(small_features), "--out", str(tmp_path / "r"),
                                      "--config", str(path)])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines == [f"error: {path}:3: unknown key 'region.stepz'; did you mean 'region.steps'?"]


def test_pretrain_set_and_named_options_are_validated_by_the_model(small_features: Path, tmp_path: Path) -> None:
    app = build_app()
    args = ["pretrain", str(small_features), "--out", str(tmp_path / "r")]
    res = runner.invoke(app, [*args, "--set", "region.mask_ratio=1.5"])
    assert res.exit_code == 2
    assert "error: --set region.mask_ratio=1.5: 'region.mask_ratio' = 1.5 is invalid" in res.output
    res = runner.invoke(app, [*args, "--batch-size", "1"])
    assert res.exit_code == 2
    assert "error: --batch-size: 'region.batch_size' = 1 is invalid" in res.output
    assert "(default: 256)" in res.output and "Traceback" not in res.output
