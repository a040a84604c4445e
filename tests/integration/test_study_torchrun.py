"""The pretraining stage of `mixmag run` launched with torchrun trains what the in-process stage trains.

The stages before pretraining are stood in for by a synthetic feature store written into the
study's feature folder, so only the pretraining stage runs (a few seconds per run on CPU, gloo).
Every process a test starts carries a marker variable; a watchdog SIGKILLs those processes (by
pid) if a job outlives its time, so a stuck rendezvous fails the test instead of hanging CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import mixmag.region.launch as launch_mod
from mixmag.config import PipelineConfig
from mixmag.errors import MixmagRuntimeError
from mixmag.pipeline.ledger import StageLedger, StageRecord
from mixmag.pipeline.study import Study
from mixmag.region.checkpoints import load_region_encoder
from mixmag.synth.region_features import write_synthetic_feature_cohort
from mixmag.utils.proctree import free_port, pids_with_env

REGION = {"preset": "tiny", "objectives": ["mem"], "steps": 4, "batch_size": 8, "lr": 1e-3, "num_workers": 0,
          "device": "cpu", "checkpoint_every": 2}
MARKER = "MIXMAG_TEST_TORCHRUN_JOB"
#: Seconds a launched job may take before the watchdog kills it (a run takes ~10 s on 2 cores).
JOB_TIMEOUT_S = 240


def _kill_marked(marker: str) -> None:
    for pid in pids_with_env(MARKER, marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _jobs_killed_after(seconds: float, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Mark every process started in the block; kill those still alive after ``seconds`` and at its end."""
    marker = uuid.uuid4().hex
    monkeypatch.setenv(MARKER, marker)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    watchdog = threading.Timer(seconds, _kill_marked, args=(marker,))
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
        _kill_marked(marker)


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 slides of 12-20 regions plus one empty slide (the feature store of tests/region)."""
    folder = tmp_path_factory.mktemp("features")
    write_synthetic_feature_cohort(folder, n_slides=4, regions_per_slide=(12, 20), empty_slides=1, seed=2)
    return folder


def _study(out: Path, features: Path, **region: object) -> Study:
    """A study whose tile and embed stages are done: ``features`` copied into its feature folder."""
    study = Study(PipelineConfig.model_validate({"out": str(out), "region": {**REGION, **region}}), progress=False)
    study.features_dir.mkdir(parents=True)
    for path in features.glob("*.h5"):
        shutil.copy(path, study.features_dir / path.name)
    study.fps.update({"tile": "t", "embed": "e"})
    return study


@pytest.fixture(scope="module")
def in_process(features: Path, tmp_path_factory: pytest.TempPathFactory) -> StageRecord:
    """The stage as it runs by default: one process, inside `mixmag run`."""
    return _study(tmp_path_factory.mktemp("in-process") / "run", features).pretrain("mem")


def _assert_same_stage(got: StageRecord, want: StageRecord, run_dir: Path) -> None:
    """Same ledger record (paths in its own folder) and the same trained encoder."""
    out = run_dir / "pretrain" / "mem"
    assert got.status == "done" and got.fingerprint == want.fingerprint  # the launch settings are runtime
    assert set(got.outputs) == set(want.outputs)
    assert got.outputs["checkpoint"] == str(out / "final")
    assert got.outputs["metrics"] == str(out / "metrics.jsonl")
    assert got.outputs["corpus_note"] == want.outputs["corpus_note"]
    assert got.outputs["final_loss"] == pytest.approx(want.outputs["final_loss"], rel=1e-4)
    assert StageLedger(run_dir).records["pretrain-mem"].outputs == got.outputs  # what stages.json holds
    assert json.loads((out / "config.resolved.json").read_text())["world_size"] == 2
    enc, _ = load_region_encoder(got.outputs["checkpoint"])
    ref, _ = load_region_encoder(want.outputs["checkpoint"])
    for (name, p), q in zip(enc.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_two_processes_on_one_node_train_the_in_process_encoder(features: Path, in_process: StageRecord,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    study = _study(tmp_path / "run", features, nproc_per_node=2)
    with _jobs_killed_after(JOB_TIMEOUT_S, monkeypatch):
        rec = study.pretrain("mem")
    _assert_same_stage(rec, in_process, tmp_path / "run")
    out = tmp_path / "run" / "pretrain" / "mem"
    listed = (out / launch_mod.FEATURE_LIST).read_text().splitlines()
    assert listed == [str(p) for p in sorted(study.features_dir.glob("*.h5"))]
    assert not (out / launch_mod.JOIN_COMMAND).exists()  # one node: nobody joins
    # the same study run again finds the stage done (the launch settings never change a fingerprint)
    assert study.pretrain("mem").skipped


def test_two_nodes_meet_through_the_join_command(features: Path, in_process: StageRecord, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`mixmag run` on one node waits at the c10d rendezvous; the second node runs join-command.sh."""
    endpoint = f"127.0.0.1:{free_port()}"
    study = _study(tmp_path / "run", features, nnodes=2, rdzv_endpoint=endpoint)
    join = tmp_path / "run" / "pretrain" / "mem" / launch_mod.JOIN_COMMAND
    seen: dict[str, object] = {}

    def other_node() -> None:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not join.exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        seen["script"] = join.read_text()
        with open(tmp_path / "node1.log", "wb") as log:
            seen["status"] = subprocess.run(["sh", str(join)], stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, timeout=JOB_TIMEOUT_S, check=False).returncode

    with _jobs_killed_after(JOB_TIMEOUT_S, monkeypatch):
        node = threading.Thread(target=other_node, daemon=True)
        node.start()
        rec = study.pretrain("mem")
        node.join(timeout=JOB_TIMEOUT_S)
    assert seen.get("status") == 0, (tmp_path / "node1.log").read_text()[-3000:]
    script = str(seen["script"])
    assert f"--rdzv_endpoint {endpoint}" in script and "--nnodes 2" in script and sys.executable in script
    assert "--yes" not in script  # no --yes given to this study: the duration check still applies
    assert not join.exists()  # removed when the job ended
    _assert_same_stage(rec, in_process, tmp_path / "run")


def test_a_failed_job_is_one_line_naming_the_run_log(features: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    study = _study(tmp_path / "run", features, nproc_per_node=2)
    launched: list[list[str]] = []

    def failing(*args: object, **kwargs: object) -> list[str]:
        launched.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return [sys.executable, "-c", "raise SystemExit(3)"]

    real = launch_mod.pretrain_command
    monkeypatch.setattr(launch_mod, "pretrain_command", failing)
    with pytest.raises(MixmagRuntimeError) as info:
        study.pretrain("mem")
    message = str(info.value)
    assert "\n" not in message and "exit status 3" in message
    assert str(tmp_path / "run" / "pretrain" / "mem" / "run.log") in message
    assert StageLedger(tmp_path / "run").records["pretrain-mem"].status == "failed"
    # what would have run: torchrun with the study's resolved config, the objective and no question asked
    cmd = launched[0]
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--standalone" in cmd
    assert cmd[cmd.index("--config") + 1] == str(tmp_path / "run" / "config.resolved.yaml")
    assert cmd[cmd.index("--objective") + 1] == "mem" and "--no-progress" in cmd
