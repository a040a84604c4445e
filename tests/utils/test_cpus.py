"""Usable-core detection (env, cgroup quota, affinity) and the thread plan the stages apply."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mixmag.embed.engine import DecodePlan, plan_decoding
from mixmag.errors import MixmagValueError
from mixmag.tiling import tile as tile_mod
from mixmag.utils import cpus
from mixmag.utils.cpus import (
    apply_thread_budget,
    detect_cpu_budget,
    plan_threads,
    prepare_openmp_env,
    thread_budget,
    usable_cpus,
)
from mixmag.utils.env import environment_info

_ENV = ("MIXMAG_THREADS", "MIXMAG_THREAD_POLICY", "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No real cgroup, no thread variables, a fresh cache; torch's thread count restored afterwards."""
    before = torch.get_num_threads()
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "no-cgroup").mkdir()
    monkeypatch.setattr(cpus, "CGROUP_ROOT", tmp_path / "no-cgroup")
    monkeypatch.setattr(cpus, "PROC_SELF_CGROUP", tmp_path / "no-cgroup" / "cgroup")
    monkeypatch.setattr(cpus, "_torch_state", {"base": None, "set": None})
    monkeypatch.setattr(cpus, "_logged", set())
    usable_cpus.cache_clear()
    yield
    usable_cpus.cache_clear()
    torch.set_num_threads(before)


def _affinity(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(n)))


def _cgroup_v2(root: Path, quota: str, path: str = "/") -> Path:
    folder = root / path.strip("/")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.max").write_text(f"{quota}\n")
    proc = root / "proc_self_cgroup"
    proc.write_text(f"0::{path}\n")
    return proc


def test_a_restricted_affinity_mask_sets_the_budget_and_torch_threads(monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    torch.set_num_threads(2)
    _affinity(monkeypatch, 1)
    budget = usable_cpus()
    assert (budget.n, budget.source, budget.cores) == (1, "affinity", 1)
    with caplog.at_level(logging.INFO, logger="mixmag.utils.cpus"):
        assert apply_thread_budget() == 1
    assert torch.get_num_threads() == 1
    assert "using 1 CPU threads (affinity" in caplog.text


def test_cgroup_v2_quota_is_floored_to_whole_cores(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _affinity(monkeypatch, 8)
    proc = _cgroup_v2(tmp_path, "150000 100000")
    budget = detect_cpu_budget(environ={}, cgroup_root=tmp_path, proc_self_cgroup=proc)
    assert (budget.n, budget.source, budget.cores) == (1, "cgroup cpu.max", 1)
    # the cached form reads the same files when pointed at them
    assert usable_cpus(tmp_path, proc).n == 1
    # a quota below one core still leaves one thread
    proc = _cgroup_v2(tmp_path, "20000 100000")
    assert detect_cpu_budget(environ={}, cgroup_root=tmp_path, proc_self_cgroup=proc).n == 1


def test_cgroup_v2_parent_quota_binds_and_max_is_unlimited(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _affinity(monkeypatch, 8)
    proc = _cgroup_v2(tmp_path, "max 100000", path="/job/step")
    (tmp_path / "job" / "cpu.max").write_text("300000 100000\n")
    assert detect_cpu_budget(environ={}, cgroup_root=tmp_path, proc_self_cgroup=proc).n == 3
    (tmp_path / "job" / "cpu.max").write_text("max 100000\n")
    budget = detect_cpu_budget(environ={}, cgroup_root=tmp_path, proc_self_cgroup=proc)
    assert (budget.n, budget.source) == (8, "affinity")


def test_cgroup_v1_quota(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _affinity(monkeypatch, 8)
    folder = tmp_path / "cpu,cpuacct"
    folder.mkdir()
    (folder / "cpu.cfs_quota_us").write_text("150000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("5:memory:/x\n4:cpu,cpuacct:/\n")
    budget = detect_cpu_budget(environ={}, cgroup_root=tmp_path, proc_self_cgroup=proc)
    assert (budget.n, budget.source) == (1, "cgroup cpu.cfs_quota_us")
    (folder / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert detect_cpu_budget(environ={}, cgroup_root=tmp_path, proc_self_cgroup=proc).source == "affinity"


def test_slurm_and_mixmag_threads_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _affinity(monkeypatch, 8)
    proc = _cgroup_v2(tmp_path, "400000 100000")
    budget = detect_cpu_budget(environ={"SLURM_CPUS_PER_TASK": "3"}, cgroup_root=tmp_path, proc_self_cgroup=proc)
    assert (budget.n, budget.source, budget.cores) == (3, "SLURM_CPUS_PER_TASK", 3)
    # MIXMAG_THREADS wins over everything, also above the allocation (it is an explicit choice)
    env = {"SLURM_CPUS_PER_TASK": "3", "OMP_NUM_THREADS": "1", "MIXMAG_THREADS": "6"}
    budget = detect_cpu_budget(environ=env, cgroup_root=tmp_path, proc_self_cgroup=proc)
    assert (budget.n, budget.source, budget.cores) == (6, "MIXMAG_THREADS", 3)
    # OMP_NUM_THREADS sizes threads, not the cores worker processes may use
    budget = detect_cpu_budget(environ={"OMP_NUM_THREADS": "1,1"}, cgroup_root=tmp_path, proc_self_cgroup=proc)
    assert (budget.n, budget.source, budget.cores) == (1, "OMP_NUM_THREADS", 4)
    # ... and through the cached budget into torch
    torch.set_num_threads(2)
    monkeypatch.setenv("MIXMAG_THREADS", "1")
    assert apply_thread_budget() == 1 and torch.get_num_threads() == 1


def test_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    _affinity(monkeypatch, 2)
    with pytest.raises(MixmagValueError, match="MIXMAG_THREADS must be a whole number"):
        detect_cpu_budget(environ={"MIXMAG_THREADS": "two"})
    assert detect_cpu_budget(environ={"OMP_NUM_THREADS": "0"}).source == "affinity"  # ignored (logged)
    with pytest.raises(MixmagValueError, match="thread policy must be one of"):
        plan_threads(policy="fastest")
    with pytest.raises(MixmagValueError, match="threads must be >= 1"):
        plan_threads(0)


def test_policies_explicit_threads_and_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    _affinity(monkeypatch, 4)
    torch.set_num_threads(4)
    assert plan_threads().threads == 4
    assert plan_threads(policy="spare").threads == 3
    monkeypatch.setenv("MIXMAG_THREAD_POLICY", "spare")
    assert plan_threads().source == "affinity, one core spare"
    assert plan_threads(2).threads == 2  # an explicit count is used as given
    with thread_budget() as plan:
        assert torch.get_num_threads() == plan.threads == 3
        assert apply_thread_budget() == 3  # re-applying does not drop another core
    assert torch.get_num_threads() == 4
    # never above torch's own count (physical cores, or what the caller set)
    monkeypatch.delenv("MIXMAG_THREAD_POLICY")
    torch.set_num_threads(2)
    plan = plan_threads()
    assert (plan.threads, plan.source) == (2, "torch default")


def test_tiling_workers_are_capped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    _affinity(monkeypatch, 1)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.svs").write_bytes(b"")  # fails fast: only the worker count matters here
    seen: list[int] = []
    real = tile_mod._executor
    monkeypatch.setattr(tile_mod, "_executor", lambda workers: seen.append(workers) or real(workers))
    with caplog.at_level(logging.INFO, logger="mixmag.tiling.tile"):
        tile_mod.tile_slides([tmp_path / "in"], tmp_path / "out", workers=4, progress=False)
    assert seen == [1]
    run = json.loads((tmp_path / "out" / "tile_run.json").read_text())
    assert run["workers"] == 1 and run["cpu_budget"]["cores"] == 1
    assert "4 worker processes capped at the 1 usable CPU cores" in caplog.text


def test_gpu_decode_workers_come_from_the_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    _affinity(monkeypatch, 3)
    assert plan_decoding("auto", torch.device("cuda")) == DecodePlan(workers=2, threads=1)
    assert plan_decoding("auto", torch.device("cuda"), cpus=16) == DecodePlan(workers=8, threads=1)


def test_environment_info_records_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    _affinity(monkeypatch, 1)
    info = environment_info()
    assert info["cpu_budget"] == {"n": 1, "source": "affinity", "cores": 1, "machine": info["cpu_budget"]["machine"]}
    assert info["thread_policy"] == "split"


def test_passive_waiting_only_before_torch_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert not prepare_openmp_env("all")
    assert not prepare_openmp_env("passive")  # torch is loaded in this process: too late
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert prepare_openmp_env("passive")
    # a fresh process: importing the module does not load torch, so the variable still takes effect
    code = ("import os, sys; from mixmag.utils.cpus import prepare_openmp_env; "
            "print('torch' in sys.modules, prepare_openmp_env('passive'), os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["False", "True", "PASSIVE"]
