"""Data-parallel pretraining under torchrun (gloo, CPU) matches one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixmag.region.checkpoints import load_region_encoder
from mixmag.region.pretrain import pretrain_region_encoder

OPTS = {"objective": "cmem", "preset": "tiny", "steps": 4, "batch_size": 8, "lr": 1e-3, "num_workers": 0,
        "device": "cpu", "checkpoint_every": 2}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_process_gloo_ddp_equals_single_process(small_features: Path, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mixmag", "pretrain", str(small_features), "--out", str(tmp_path / "ddp"), "--no-progress"]
    cli += ["--objective", OPTS["objective"]]
    for key, value in OPTS.items():
        if key != "objective":
            cli += ["--set", f"region.{key}={value}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    config = json.loads((tmp_path / "ddp" / "config.resolved.json").read_text())
    assert config["world_size"] == 2

    single = pretrain_region_encoder(small_features, tmp_path / "one", progress=False, **OPTS)
    ddp, one = _records(tmp_path / "ddp" / "metrics.jsonl"), _records(single.metrics_path)
    assert [r["step"] for r in ddp] == [1, 2, 3, 4]
    for a, b in zip(ddp, one, strict=True):  # same global batch, same masks: same trajectory
        for key in ("loss", "mem1", "mem2", "nce", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (a["step"], key)
    enc_ddp, _ = load_region_encoder(tmp_path / "ddp")
    enc_one, _ = load_region_encoder(tmp_path / "one")
    for (name, p), q in zip(enc_ddp.state_dict().items(), enc_one.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    assert (tmp_path / "ddp" / "checkpoints" / "step_0000002" / "training_state.pt").is_file()
