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
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import mixmag

MARKER = "MIXMAG_TEST_RAY_CLUSTER"
SRC = Path(mixmag.__file__).resolve().parents[1]
RAY_CLI = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
# a killed node is declared dead after about period x threshold (defaults: 30 s or more)
FAST_HEALTH_CHECKS = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
                      "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _marked_pids(marker: str) -> list[int]:
    """Pids of the live processes whose environment carries ``MARKER=marker``."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
    return pids


def _with_descendants(pids: list[int]) -> set[int]:
    """``pids`` and every process below them (Ray workers and agents rename themselves, which
    overwrites their environment, so only their parent links tie them to the cluster)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(pids), list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _running(pid: int) -> bool:
    """True for a live process (not gone, not a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


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
        return [p for p in _marked_pids(self.marker) if _comm(p) == "raylet"]

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
        for pid in _marked_pids(self.marker):
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
        self._orphans |= _with_descendants([self.worker_raylets[i]]) - {self.worker_raylets[i]}
        os.kill(self.worker_raylets[i], signal.SIGKILL)

    def stop(self) -> None:
        """SIGKILL every process of this cluster (and only those), then delete its folder."""
        for _ in range(5):
            pids = _with_descendants(_marked_pids(self.marker)) | self._orphans
            pids = {pid for pid in pids if _running(pid)}
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
