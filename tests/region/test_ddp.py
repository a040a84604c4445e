"""Data-parallel pretraining under torchrun (gloo, CPU) matches one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mixmag.region.checkpoints import load_region_encoder
from mixmag.region.pretrain import pretrain_region_encoder
from mixmag.utils.proctree import free_port

OPTS = {"objective": "cmem", "preset": "tiny", "steps": 4, "batch_size": 8, "lr": 1e-3, "num_workers": 0,
        "device": "cpu", "checkpoint_every": 2}
#: Seconds a launched job may take before the test kills it (a run takes ~10 s on 2 cores).
JOB_TIMEOUT_S = 240


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _pretrain_args(features: Path, out: Path) -> list[str]:
    """``-m mixmag pretrain ...`` with OPTS, for a torchrun command line."""
    args = ["-m", "mixmag", "pretrain", str(features), "--out", str(out), "--no-progress",
            "--objective", OPTS["objective"]]
    for key, value in OPTS.items():
        if key != "objective":
            args += ["--set", f"region.{key}={value}"]
    return args


@pytest.fixture(scope="module")
def single_run(small_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-process run every data-parallel run must reproduce."""
    out = tmp_path_factory.mktemp("single") / "one"
    pretrain_region_encoder(small_features, out, progress=False, **OPTS)
    return out


def _assert_same_run(ddp_dir: Path, one_dir: Path) -> None:
    """Same losses step by step (rel 1e-4) and the same final weights."""
    ddp, one = _records(ddp_dir / "metrics.jsonl"), _records(one_dir / "metrics.jsonl")
    assert [r["step"] for r in ddp] == [1, 2, 3, 4]
    for a, b in zip(ddp, one, strict=True):  # same global batch, same masks: same trajectory
        for key in ("loss", "mem1", "mem2", "nce", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (a["step"], key)
    enc_ddp, _ = load_region_encoder(ddp_dir)
    enc_one, _ = load_region_encoder(one_dir)
    for (name, p), q in zip(enc_ddp.state_dict().items(), enc_one.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_two_process_gloo_ddp_equals_single_process(small_features: Path, single_run: Path, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *_pretrain_args(small_features, tmp_path / "ddp")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    config = json.loads((tmp_path / "ddp" / "config.resolved.json").read_text())
    assert config["world_size"] == 2
    _assert_same_run(tmp_path / "ddp", single_run)
    assert (tmp_path / "ddp" / "checkpoints" / "step_0000002" / "training_state.pt").is_file()


def stop_process_group(proc: subprocess.Popen) -> None:
    """Kill a job started with ``start_new_session=True``: its torchrun agent and the agent's workers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the group's id is the agent's pid
    proc.wait(timeout=30)


def test_two_nodes_c10d_rendezvous_equal_single_process(small_features: Path, single_run: Path,
                                                         tmp_path: Path) -> None:
    """Two torchrun agents, one per simulated node, meet at a c10d rendezvous on 127.0.0.1.

    Each runs the same command (what every node of a cluster job runs) into one shared run folder.
    """
    out = tmp_path / "two-nodes"
    cli = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}", "--rdzv_id", "test-two-nodes",
           "--rdzv_conf", "join_timeout=120", *_pretrain_args(small_features, out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs: list[subprocess.Popen] = []
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    try:
        for log in logs:
            with open(log, "wb") as fh:  # a file, not a pipe: a full pipe would stall the node
                procs.append(subprocess.Popen(cli, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              env=env, start_new_session=True))
        deadline = time.monotonic() + JOB_TIMEOUT_S
        codes = [proc.wait(timeout=max(deadline - time.monotonic(), 1)) for proc in procs]
    finally:
        for proc in procs:
            stop_process_group(proc)
    outputs = "\n".join(f"--- node {i}:\n{log.read_text()[-3000:]}" for i, log in enumerate(logs))
    assert codes == [0, 0], outputs
    config = json.loads((out / "config.resolved.json").read_text())
    assert config["world_size"] == 2
    _assert_same_run(out, single_run)
