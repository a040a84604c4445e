"""A throw-away Ray cluster on 127.0.0.1: one head and worker nodes, each started with ``ray start``.

For trying the ``ray`` backend on one machine, for the tests of :mod:`mixmag.cluster` and for
``benchmarks/ray_backend.py``: every node is a real ``ray start`` process tree, so a run sees the
same scheduling, object transfer and node failures as on a cluster (docs/cluster.md).

Every process of the cluster inherits a marker variable with a random value; :meth:`stop`
SIGKILLs, by pid, exactly the processes that carry it and the processes below them (Ray workers
and agents rename themselves, which overwrites the environment the marker is read from). ``ray
stop`` would kill every Ray process of this user on the machine, including clusters that are not
this one.

Example::

    with LocalRayCluster(n_workers=2) as cluster:
        embed_slides(tiles, out, backend="ray", ray_address=cluster.address)
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
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from mixmag.errors import MixmagRuntimeError
from mixmag.utils.proctree import (
    free_port,
    is_running,
    pids_with_env,
    process_name,
    with_descendants,
)

#: The environment variable every process of a :class:`LocalRayCluster` inherits (value: the cluster's marker).
MARKER = "MIXMAG_LOCAL_RAY_CLUSTER"

#: Ray settings that declare a killed node dead after about 3 s instead of 30 s or more
#: (period x failure threshold): for tests that kill nodes.
FAST_HEALTH_CHECKS: dict[str, str] = {
    "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def _ray_cli() -> str:
    """The ``ray`` command of this interpreter's environment (found beside ``python`` when not on PATH)."""
    return shutil.which("ray") or str(Path(sys.executable).with_name("ray"))


class LocalRayCluster:
    """Head + ``n_workers`` worker nodes of ``num_cpus`` CPUs each, on 127.0.0.1.

    Args:
        n_workers: Worker nodes besides the head (0: a one-node cluster).
        num_cpus: CPUs each node offers to Ray's scheduler.
        env: Environment of the nodes (default: this process's). The directory that holds the
            imported ``mixmag`` package is put first on ``PYTHONPATH``, so Ray's workers run the
            same mixmag as the driver (a source checkout included).
        fast_health_checks: Declare a killed node dead within seconds (:data:`FAST_HEALTH_CHECKS`).
        object_store_mb: Object store of each node in MiB (None: Ray's default, a share of memory).
        start_timeout: Seconds each ``ray start`` may take.

    Raises:
        MixmagRuntimeError: A ``ray start`` failed (its output is in the message); nothing of the
            cluster is left running.

    Attributes:
        address: ``127.0.0.1:<port>`` of the head (the ``ray_address`` of a run).
        env: The nodes' environment (with the marker), for a driver that should look like them.
        worker_raylets: Pid of each worker node's raylet, in start order.
    """

    def __init__(self, n_workers: int = 0, *, num_cpus: int = 1, env: Mapping[str, str] | None = None,
                 fast_health_checks: bool = False, object_store_mb: int | None = None,
                 start_timeout: float = 120) -> None:
        import mixmag

        # short: Ray's unix sockets live below it (108-byte path limit)
        self.root = Path(tempfile.mkdtemp(prefix="mmray", dir="/tmp"))
        self.marker = uuid.uuid4().hex
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        base = dict(os.environ if env is None else env)
        package_parent = str(Path(mixmag.__file__).resolve().parents[1])
        self.env = {**base, MARKER: self.marker, "RAY_USAGE_STATS_ENABLED": "0",
                    **(FAST_HEALTH_CHECKS if fast_health_checks else {}),
                    "PYTHONPATH": os.pathsep.join(p for p in (package_parent, base.get("PYTHONPATH")) if p)}
        self.num_cpus = num_cpus
        self.object_store_mb = object_store_mb
        self.start_timeout = start_timeout
        self.worker_raylets: list[int] = []
        self._orphans: set[int] = set()
        self._start(["--head", "--port", str(self.port), "--temp-dir", str(self.root / "t"),
                     "--include-dashboard", "false", "--dashboard-port", str(free_port())])
        for _ in range(n_workers):
            before = set(self._raylets())
            self._start(["--address", self.address])
            new = sorted(set(self._raylets()) - before)
            if len(new) != 1:
                self.stop()
                raise MixmagRuntimeError(f"a worker node of the local Ray cluster started {len(new)} raylets "
                                         f"instead of one ({new})")
            self.worker_raylets.append(new[0])

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def _raylets(self) -> list[int]:
        return [p for p in pids_with_env(MARKER, self.marker) if process_name(p) == "raylet"]

    def _start(self, args: list[str]) -> None:
        store = ["--object-store-memory", str(self.object_store_mb * 2**20)] if self.object_store_mb else []
        cmd = [_ray_cli(), "start", "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.num_cpus), *store,
               "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats", *args]
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=self.start_timeout,
                             check=False)
        if res.returncode != 0:
            self.stop()
            raise MixmagRuntimeError(f"`{' '.join(cmd)}` failed:\n{res.stdout}\n{res.stderr}")

    def processes(self) -> set[int]:
        """Pids of every live process of this cluster (nodes, their services and Ray workers)."""
        return {pid for pid in with_descendants(pids_with_env(MARKER, self.marker)) | self._orphans
                if is_running(pid)}

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
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._orphans -= pids
            time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)
