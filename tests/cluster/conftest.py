"""A throw-away Ray cluster on 127.0.0.1: one head and worker nodes, each ``ray start``-ed by the test.

Every process of the cluster inherits a marker variable with a random value; teardown SIGKILLs, by
pid, exactly the processes that carry it and the processes below them (Ray workers and agents
rename themselves, which overwrites the environment the marker is read from). ``ray stop`` would
kill every Ray process of this user on the machine, including clusters that are not ours.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import mixmag
from mixmag.utils.proctree import (
    free_port,
    is_running,
    pids_with_env,
    process_name,
    with_descendants,
)

MARKER = "MIXMAG_TEST_RAY_CLUSTER"
SRC = Path(mixmag.__file__).resolve().parents[1]
RAY_CLI = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
# a killed node is declared dead after about period x threshold (defaults: 30 s or more)
FAST_HEALTH_CHECKS = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
                      "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


class LocalRayCluster:
    """Head + worker nodes of ``num_cpus`` CPUs each, started with the ``ray`` CLI on 127.0.0.1."""

    def __init__(self, n_workers: int = 2, *, num_cpus: int = 1) -> None:
        # short: Ray's unix sockets live below it (108-byte path limit)
        self.root = Path(tempfile.mkdtemp(prefix="mmray", dir="/tmp"))
        self.marker = uuid.uuid4().hex
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, MARKER: self.marker, "RAY_USAGE_STATS_ENABLED": "0", **FAST_HEALTH_CHECKS,
                    "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
        self.num_cpus = num_cpus
        self.worker_raylets: list[int] = []
        self._orphans: set[int] = set()
        self._start(["--head", "--port", str(self.port), "--temp-dir", str(self.root / "t"),
                     "--include-dashboard", "false", "--dashboard-port", str(free_port())])
        for _ in range(n_workers):
            before = set(self._raylets())
            self._start(["--address", self.address])
            new = sorted(set(self._raylets()) - before)
            assert len(new) == 1, f"expected one new raylet, found {new}"
            self.worker_raylets.append(new[0])

    def _raylets(self) -> list[int]:
        return [p for p in pids_with_env(MARKER, self.marker) if process_name(p) == "raylet"]

    def _start(self, args: list[str]) -> None:
        cmd = [RAY_CLI, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.num_cpus),
               "--object-store-memory", str(100 * 2**20), "--dashboard-agent-listen-port", str(free_port()),
               "--disable-usage-stats", *args]
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120, check=False)
        if res.returncode != 0:
            self.stop()
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{res.stdout}\n{res.stderr}")

    def worker_processes(self, i: int) -> set[int]:
        """Pids of the processes the raylet of worker node ``i`` started (its Ray workers and agents)."""
        raylet = self.worker_raylets[i]
        children = set()
        for pid in pids_with_env(MARKER, self.marker):
            with contextlib.suppress(OSError, IndexError, ValueError):
                # the fields after the parenthesised command name: state, ppid, ...
                if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == raylet:
                    children.add(pid)
        return children

    def kill_worker(self, i: int) -> None:
        """SIGKILL the raylet of worker node ``i``; its Ray workers die with it.

        The processes it started are remembered first: an agent that outlives its raylet is
        re-parented and could no longer be found by :meth:`stop`.
        """
        self._orphans |= with_descendants([self.worker_raylets[i]]) - {self.worker_raylets[i]}
        os.kill(self.worker_raylets[i], signal.SIGKILL)

    def stop(self) -> None:
        """SIGKILL every process of this cluster (and only those), then delete its folder."""
        for _ in range(5):
            pids = with_descendants(pids_with_env(MARKER, self.marker)) | self._orphans
            pids = {pid for pid in pids if is_running(pid)}
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._orphans -= pids
            time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalRayCluster]:
    """A head and two worker nodes of one CPU each on 127.0.0.1, torn down after the module."""
    pytest.importorskip("ray", reason="the Ray backend is an extra: pip install 'mixmag[ray]'")
    cluster = LocalRayCluster(n_workers=2)
    try:
        yield cluster
    finally:
        cluster.stop()
