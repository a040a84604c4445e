"""Cost awareness: the first pretraining steps estimate the run, and a run past the limit asks first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from mixmag.cli.app import build_app
from mixmag.region.pretrain import pretrain_region_encoder
from mixmag.utils.cost import (
    PROBE_STEPS,
    CostEstimate,
    CostLimitError,
    check_cost,
    estimate_from_probe,
)

TINY = {"preset": "tiny", "batch_size": 8, "num_workers": 0, "device": "cpu", "checkpoint_every": 0}
TOO_LONG = 1e-6  # minutes: every real run is longer than this


def _estimate(seconds_per_step: float = 2.0, steps: int = 100) -> CostEstimate:
    return estimate_from_probe([9.0, seconds_per_step, seconds_per_step, 3 * seconds_per_step], stage="pretraining mem",
                               unit="step", units_left=steps, device="cpu", advice="choose fewer region.steps")


def test_the_estimate_leaves_out_the_first_step_and_takes_the_median() -> None:
    e = _estimate(2.0, 100)
    assert e.unit_seconds == 2.0 and e.seconds == 200.0
    assert e.describe() == "pretraining mem: about 3 min 20 s on cpu (2 s/step x 100 steps)"
    with pytest.raises(ValueError):
        estimate_from_probe([], stage="x", unit="step", units_left=1, device="cpu", advice="")


def test_check_cost_stops_only_above_the_limit_and_without_a_yes() -> None:
    e = _estimate(2.0, 100)  # 200 s
    check_cost(e, limit_minutes=4, setting="region.confirm_above_minutes")  # under: goes on
    check_cost(e, limit_minutes=None, setting="region.confirm_above_minutes")  # no limit
    asked: list[CostEstimate] = []
    check_cost(e, limit_minutes=1, setting="region.confirm_above_minutes", ask=lambda x: asked.append(x) or True)
    assert asked == [e]
    with pytest.raises(CostLimitError, match="declined") as declined:
        check_cost(e, limit_minutes=1, setting="region.confirm_above_minutes", ask=lambda x: False)
    with pytest.raises(CostLimitError, match="not confirmed") as batch:
        check_cost(e, limit_minutes=1, setting="region.confirm_above_minutes")
    for exc in (declined.value, batch.value):
        message = str(exc)
        assert "\n" not in message
        assert "about 3 min 20 s on cpu" in message and "choose fewer region.steps" in message
        assert "--yes" in message and "region.confirm_above_minutes: null" in message


def test_pretraining_past_the_limit_stops_after_the_probe(small_features: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(CostLimitError) as info:
        pretrain_region_encoder(small_features, out, steps=40, confirm_above_minutes=TOO_LONG, progress=False,
                                **TINY)
    message = str(info.value)
    assert "pretraining mem (preset tiny, batch 8)" in message and "36 steps" in message
    assert "use a GPU (region.device: cuda)" in message and "fewer region.steps than 40" in message
    records = (out / "metrics.jsonl").read_text().splitlines()
    assert len(records) == PROBE_STEPS  # stopped right after the probe
    assert not (out / "final").exists()


def test_a_confirmed_run_is_the_run_without_a_limit(small_features: Path, tmp_path: Path) -> None:
    """Asking happens between steps and draws no random numbers: the result is bit-identical."""
    asked: list[CostEstimate] = []
    confirmed = pretrain_region_encoder(small_features, tmp_path / "asked", steps=8, confirm_above_minutes=TOO_LONG,
                                        ask=lambda e: asked.append(e) or True, progress=False, **TINY)
    free = pretrain_region_encoder(small_features, tmp_path / "free", steps=8, confirm_above_minutes=None,
                                   progress=False, **TINY)
    assert len(asked) == 1 and asked[0].units_left == 8 - PROBE_STEPS
    assert confirmed.final_loss == free.final_loss
    a = load_file(str(confirmed.checkpoint / "model.safetensors"))
    b = load_file(str(free.checkpoint / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_short_runs_are_not_probed(small_features: Path, tmp_path: Path) -> None:
    """A run that ends within the probe has nothing left to estimate."""
    result = pretrain_region_encoder(small_features, tmp_path / "r", steps=PROBE_STEPS,
                                     confirm_above_minutes=TOO_LONG, progress=False, **TINY)
    assert result.checkpoint.is_dir()


def test_cli_batch_mode_stops_with_one_line_and_yes_goes_on(small_features: Path, tmp_path: Path) -> None:
    app = build_app()
    runner = CliRunner()
    args = ["pretrain", str(small_features), "--out", str(tmp_path / "run"), "--steps", "12", "--preset", "tiny",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "--set", "region.num_workers=0",
            "--set", f"region.confirm_above_minutes={TOO_LONG}"]
    res = runner.invoke(app, args)  # CliRunner's stdin is not a terminal: nobody can be asked
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]  # the log goes to stderr too
    assert len(errors) == 1 and errors[0].startswith("error: pretraining mem"), res.output
    assert "use a GPU (region.device: cuda) or fewer region.steps than 12; or run it anyway with --yes" in errors[0]
    assert "Traceback" not in res.output
    res = runner.invoke(app, [*args, "--yes"])
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "run" / "config.resolved.json").read_text())["settings"]
    assert settings["steps"] == 12 and (tmp_path / "run" / "final").is_dir()
