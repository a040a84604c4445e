"""`mixmag diagnose` end to end through the CLI runner: every diagnostic, its files and its tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from mixmag.cli import app as app_module
from mixmag.cli import diagnose_cmd
from mixmag.geometry import RegionSpec
from mixmag.region.checkpoints import save_region_checkpoint
from mixmag.region.model import build_region_encoder


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    return app_module.build_app()  # the real `mixmag` app: the command is registered like the others


def test_parse_checkpoints() -> None:
    assert diagnose_cmd.parse_checkpoints(["MEM=a/b", "c"]) == {"mem": Path("a/b"), "region": Path("c")}
    with pytest.raises(ValueError, match="twice"):
        diagnose_cmd.parse_checkpoints(["mem=a", "mem=b"])
    with pytest.raises(ValueError, match="ROLE=PATH"):
        diagnose_cmd.parse_checkpoints(["mem="])


def test_diagnose_end_to_end(cli: typer.Typer, cohort: Any, mem_run: Path, mil_runs: Path, tmp_path: Path) -> None:
    rand = save_region_checkpoint(tmp_path / "rand", model=build_region_encoder(tile_dim=8, spec=RegionSpec(),
                                                                                preset="tiny"),
                                  step=0, config={}, target_mean=None, target_std=None, spec=RegionSpec(),
                                  objective="random")
    out = tmp_path / "diag"
    res = CliRunner().invoke(cli, [
        "diagnose", str(cohort.features_dir), "--out", str(out), "--region-labels", str(cohort.boxes_csv),
        "--properties", "ring,atypical", "--checkpoint", f"mem={mem_run}", "--checkpoint", f"rand={rand}",
        "--mil", str(mil_runs),
        "--max-regions", "200", "--pretraining-regions", "64", "--probes", "linear"])
    assert res.exit_code == 0, res.output
    for name in ("probes.csv", "probes.png", "pretraining.csv", "pretraining.png", "loss_curve_mem.png",
                 "attention.csv", "attention_summary.csv", "attention.png", "diagnostics.json", "run.log"):
        assert (out / name).is_file(), name
    assert "probe AUROC" in res.output and "masked reconstruction" in res.output and "attention on" in res.output
    assert "skipped pretraining rand" in res.output  # an untrained encoder has no decoder to evaluate
    probes = pd.read_csv(out / "probes.csv")
    assert {"tiles-20x", "region-cls.mem", "region-tokens-mean.rand"} <= set(probes["feature_set"])
    assert (probes["n_regions"] == 200).all()
    ring20 = probes.set_index(["feature_set", "property", "probe"]).loc[("tiles-20x", "ring", "linear")]
    assert ring20["auroc"] > 0.9
    assert set(pd.read_csv(out / "pretraining.csv")["checkpoint"]) == {"mem"}
    meta = json.loads((out / "diagnostics.json").read_text())
    assert meta["inputs"]["label_format"] == "boxes" and meta["inputs"]["properties"] == ["ring", "atypical"]
    assert set(meta["files"]) >= {"probes", "pretraining", "attention", "attention_summary", "probes.png"}
    assert "pretraining rand" in meta["skipped"] and len(meta["probes"]) == len(probes)


def test_diagnose_with_features_only_skips_with_reasons(cli: typer.Typer, cohort: Any, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["diagnose", str(cohort.features_dir), "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "d" / "diagnostics.json").read_text())
    assert set(meta["skipped"]) == {"probes", "pretraining", "attention"}
    assert meta["probes"] is None and "skipped probes" in res.output
    res = CliRunner().invoke(cli, ["diagnose", str(cohort.features_dir), "--out", str(tmp_path / "e"),
                                   "--region-labels", str(tmp_path / "nope.csv")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = CliRunner().invoke(cli, ["diagnose", str(cohort.features_dir), "--out", str(tmp_path / "f"),
                                   "--region-labels", str(cohort.boxes_csv), "--probes", "linear,mpl"])
    assert res.exit_code == 2 and "Did you mean: mlp" in res.output
