"""CPU cores this process may use, and the compute-thread plan every stage applies.

Why: sizing threads from the machine (``os.cpu_count()``, torch's default intra-op threads) is
wrong under a Slurm allocation, a container quota or a shared node: the OpenMP threads of each
forward pass meet at a barrier, and one descheduled thread stalls all the others (measured: an
EfficientNet-Lite0 slide took 119.6 s next to one busy process, 9.9 s with one thread, ~7 s idle).

:func:`usable_cpus` detects the cores once per process, from the tightest of: ``MIXMAG_THREADS``
(an explicit override that wins over everything), ``OMP_NUM_THREADS``, ``SLURM_CPUS_PER_TASK``, the
cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``) and the affinity
mask; else ``os.cpu_count()``. :func:`apply_thread_budget` / :func:`thread_budget` set torch's
threads from it under a policy (:class:`ThreadPolicy`; ``MIXMAG_THREAD_POLICY``), an internal knob
to compare how each behaves on a contended CPU (``benchmarks/embed.py --contention``).

Importing this module does not import torch (the tiling workers use it).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from mixmag.errors import MixmagValueError

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
THREADS_ENV = "MIXMAG_THREADS"
POLICY_ENV = "MIXMAG_THREAD_POLICY"
# Mount points of the cgroup v1 cpu controller (distributions name the joint mount either way).
_V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


@dataclass(frozen=True)
class CpuBudget:
    """Cores this process may use.

    Attributes:
        n: Compute threads one process should run (>= 1).
        source: The constraint that set ``n``: ``MIXMAG_THREADS``, ``OMP_NUM_THREADS``,
            ``SLURM_CPUS_PER_TASK``, ``cgroup cpu.max``, ``cgroup cpu.cfs_quota_us``,
            ``affinity`` or ``cpu_count``.
        cores: Cores of the allocation (Slurm, cgroup quota, affinity, else the machine), which
            caps worker *processes*: the thread variables (``MIXMAG_THREADS``,
            ``OMP_NUM_THREADS``) size one process's threads, not how many processes fit.
        machine: ``os.cpu_count()``, for the record.
    """

    n: int
    source: str
    cores: int
    machine: int

    def describe(self) -> str:
        """E.g. ``"cgroup cpu.max: 4 of 64 cores"``."""
        return f"{self.source}: {self.n} of {self.machine} cores"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (provenance)."""
        return {"n": self.n, "source": self.source, "cores": self.cores, "machine": self.machine}


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    """Positive integer of ``name`` (the first entry of a list such as ``OMP_NUM_THREADS=4,2``)."""
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw.split(",")[0])
    except ValueError:
        value = 0
    if value >= 1:
        return value
    if name == THREADS_ENV:  # our own setting: a typo must not silently fall back
        raise MixmagValueError(f"{THREADS_ENV} must be a whole number >= 1, got {raw!r}")
    logger.warning("ignoring %s=%r (not a whole number >= 1)", name, raw)
    return None


def _quota_cores(quota: float, period: float) -> int | None:
    # floor: 1.5 cores of quota run 1 thread without throttling; 2 threads would be throttled
    # every period and stall each other at barriers like a shared core does
    return max(1, math.floor(quota / period)) if quota > 0 and period > 0 else None


def _read_v2(folder: Path) -> int | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else _quota_cores(float(quota), float(period))


def _read_v1(folder: Path) -> int | None:
    try:
        quota = float((folder / "cpu.cfs_quota_us").read_text())
        period = float((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return _quota_cores(quota, period)  # quota -1 = unlimited


def _up_to(base: Path, cgroup_path: str) -> list[Path]:
    """``base/<cgroup_path>`` and each of its ancestors up to ``base`` (a parent's quota binds too).

    Inside a container the own cgroup is mounted at ``base`` and the host path does not exist
    below it; then only ``base`` is read.
    """
    parts = PurePosixPath(cgroup_path).parts[1:]
    folders = [base.joinpath(*parts[:k]) for k in range(len(parts), -1, -1)]
    return [f for f in folders if f.is_dir()]


def _cgroup_cores(root: Path, proc_self_cgroup: Path) -> tuple[int, str] | None:
    """Tightest CPU quota of this process's cgroup and its ancestors (v2, then v1), in whole cores."""
    v2_path = v1_path = "/"
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:  # "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1)
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:
            v2_path = path or "/"
        elif "cpu" in controllers.split(","):
            v1_path = path or "/"
    found = [(n, "cgroup cpu.max") for f in _up_to(root, v2_path) if (n := _read_v2(f)) is not None]
    for mount in _V1_CPU_MOUNTS:
        if (root / mount).is_dir():
            found += [(n, "cgroup cpu.cfs_quota_us") for f in _up_to(root / mount, v1_path)
                      if (n := _read_v1(f)) is not None]
            break
    return min(found, key=lambda t: t[0]) if found else None


def detect_cpu_budget(*, environ: Mapping[str, str] | None = None, cgroup_root: Path | None = None,
                      proc_self_cgroup: Path | None = None) -> CpuBudget:
    """Usable cores now (uncached; :func:`usable_cpus` is the cached form every stage uses).

    Args:
        environ: Environment to read (default ``os.environ``).
        cgroup_root: Where the cgroup file systems are mounted (default :data:`CGROUP_ROOT`;
            tests point it at a fake tree).
        proc_self_cgroup: This process's cgroup membership file (default :data:`PROC_SELF_CGROUP`).

    Returns:
        ``n``: ``MIXMAG_THREADS`` when set; otherwise the minimum of ``OMP_NUM_THREADS``,
        ``SLURM_CPUS_PER_TASK``, the cgroup quota (floored, at least 1) and the affinity mask,
        whichever apply (named in that order on a tie); else ``os.cpu_count()``. ``cores``: the
        same without the two thread variables.
    """
    env = os.environ if environ is None else environ
    machine = os.cpu_count() or 1
    limits: list[tuple[int, str]] = []  # of the allocation, in order of precedence on a tie
    if (slurm := _env_int(env, "SLURM_CPUS_PER_TASK")) is not None:
        limits.append((slurm, "SLURM_CPUS_PER_TASK"))
    quota = _cgroup_cores(cgroup_root or CGROUP_ROOT, proc_self_cgroup or PROC_SELF_CGROUP)
    if quota is not None:
        limits.append(quota)
    with contextlib.suppress(AttributeError, OSError):  # no affinity API outside Linux
        limits.append((len(os.sched_getaffinity(0)), "affinity"))
    cores, cores_source = min(limits, key=lambda t: t[0]) if limits else (machine, "cpu_count")
    cores = max(1, cores)
    explicit = _env_int(env, THREADS_ENV)
    if explicit is not None:
        return CpuBudget(explicit, THREADS_ENV, cores, machine)
    omp = _env_int(env, "OMP_NUM_THREADS")
    if omp is not None and omp <= cores:
        return CpuBudget(omp, "OMP_NUM_THREADS", cores, machine)
    return CpuBudget(cores, cores_source, cores, machine)


@functools.cache
def usable_cpus(cgroup_root: Path | None = None, proc_self_cgroup: Path | None = None) -> CpuBudget:
    """:func:`detect_cpu_budget` once per process (``usable_cpus.cache_clear()`` re-detects)."""
    return detect_cpu_budget(cgroup_root=cgroup_root, proc_self_cgroup=proc_self_cgroup)


class ThreadPolicy(StrEnum):
    """How a stage runs its compute threads on its :class:`CpuBudget` (``MIXMAG_THREAD_POLICY``).

    ``split`` is the default (measured: docs/performance.md, ``benchmarks/embed.py --contention``).
    """

    SPLIT = "split"
    """(e) Embedding on a CPU: each of the usable cores embeds its share of every batch with one
    thread (:class:`~mixmag.embed.split.SplitForward`), so no thread waits at a barrier for a
    descheduled sibling, and the features are bit-identical whatever the core count or the load
    (a model's results change in the last bits with its intra-op thread count). Other stages run
    as ``all``."""
    ALL = "all"
    """(a) One compute thread per usable core (at most torch's own default)."""
    SPARE = "spare"
    """(b) One core fewer (when >= 2), left to decoding, the loader or another process."""
    PASSIVE = "passive"
    """(c) As ``all``; idle OpenMP threads sleep instead of spinning. Needs ``OMP_WAIT_POLICY=PASSIVE``
    before torch loads OpenMP (:func:`prepare_openmp_env`); afterwards it cannot be changed."""
    ADAPT = "adapt"
    """(d) As ``all``, then :class:`~mixmag.utils.thread_adapt.ThreadAdapter` keeps the compute
    threads at the cores other processes leave free, measured every second (embedding on a CPU;
    other stages run as ``all``)."""


def thread_policy(policy: str | None = None) -> ThreadPolicy:
    """``policy``, else ``MIXMAG_THREAD_POLICY``, else ``split``."""
    raw = policy if policy is not None else os.environ.get(POLICY_ENV, "") or ThreadPolicy.SPLIT.value
    try:
        return ThreadPolicy(raw.strip().lower())
    except ValueError:
        raise MixmagValueError(f"thread policy must be one of {', '.join(p.value for p in ThreadPolicy)}, "
                               f"got {raw!r} ({POLICY_ENV})") from None


@dataclass(frozen=True)
class ThreadPlan:
    """Compute threads of one stage.

    Attributes:
        threads: torch intra-op threads.
        source: Why: ``threads argument``, or the budget's constraint (``affinity``, ...), or
            ``torch default`` when torch's own count (physical cores, or a caller's
            ``torch.set_num_threads``) was lower than the budget.
        policy: The :class:`ThreadPolicy` applied.
        budget: The usable cores.
    """

    threads: int
    source: str
    policy: ThreadPolicy
    budget: CpuBudget

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (provenance)."""
        return {"threads": self.threads, "source": self.source, "policy": self.policy.value,
                "budget": self.budget.to_dict()}


# torch's thread count before mixmag changed it, and the count mixmag set last: a caller who calls
# torch.set_num_threads in between is respected (the base is read again), and repeated plans do
# not compound (``spare`` twice is still one core fewer)
_torch_state: dict[str, int | None] = {"base": None, "set": None}
_logged: set[tuple[int, str, str]] = set()
_interop_tried = False
_warned_passive = False


def _torch_base_threads() -> int:
    import torch

    current = torch.get_num_threads()
    if _torch_state["base"] is None or current != _torch_state["set"]:
        _torch_state["base"] = current
    base = _torch_state["base"]
    assert base is not None
    return base


def plan_threads(threads: int | None = None, *, policy: str | None = None) -> ThreadPlan:
    """The compute threads a stage should use now (nothing is changed; see :func:`apply_thread_budget`).

    Args:
        threads: Explicit count (a ``threads`` setting); used as given, no policy applied.
        policy: :class:`ThreadPolicy` value (default ``MIXMAG_THREAD_POLICY``, else ``all``).
    """
    budget = usable_cpus()
    pol = thread_policy(policy)
    if threads is not None:
        if threads < 1:
            raise MixmagValueError(f"threads must be >= 1, got {threads}")
        return ThreadPlan(int(threads), "threads argument", pol, budget)
    if budget.source == THREADS_ENV:
        return ThreadPlan(budget.n, budget.source, pol, budget)
    # never above torch's own count: its default is the physical cores (hyperthreads slow GEMMs
    # down), and a caller may have lowered it on purpose
    base = _torch_base_threads()
    n, source = (budget.n, budget.source) if budget.n <= base else (base, "torch default")
    if pol is ThreadPolicy.SPARE and n >= 2:
        n, source = n - 1, f"{source}, one core spare"
    return ThreadPlan(n, source, pol, budget)


def _apply(threads: int | None, policy: str | None) -> ThreadPlan:
    global _interop_tried, _warned_passive
    import torch

    plan = plan_threads(threads, policy=policy)
    if torch.get_num_threads() != plan.threads:
        torch.set_num_threads(plan.threads)
    _torch_state["set"] = plan.threads
    if not _interop_tried:  # settable once per process, and only before any inter-op work
        _interop_tried = True
        try:
            torch.set_num_interop_threads(plan.threads)
        except RuntimeError:
            logger.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())
    key = (plan.threads, plan.source, plan.policy.value)
    if key not in _logged:
        _logged.add(key)
        logger.info("using %d CPU threads (%s; %s; policy %s)", plan.threads, plan.source,
                    plan.budget.describe(), plan.policy.value)
    if (plan.policy is ThreadPolicy.PASSIVE and not _warned_passive
            and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"):
        _warned_passive = True
        logger.warning("thread policy passive needs OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP; start the "
                       "process as `OMP_WAIT_POLICY=PASSIVE mixmag ...` (idle threads keep spinning in this run)")
    return plan


def apply_thread_budget(threads: int | None = None, *, policy: str | None = None) -> int:
    """Set torch's intra-op threads (and inter-op threads, while still settable) from :func:`plan_threads`.

    Logs ``using N CPU threads (why)`` at INFO the first time a plan is applied. Mutates torch's
    process-wide thread settings; :func:`thread_budget` restores them afterwards.

    Returns:
        The intra-op thread count now in effect.
    """
    return _apply(threads, policy).threads


@contextlib.contextmanager
def thread_budget(threads: int | None = None, *, policy: str | None = None) -> Iterator[ThreadPlan]:
    """Apply :func:`apply_thread_budget` for the ``with`` block; restore torch's thread count after it."""
    import torch

    before = torch.get_num_threads()
    plan = _apply(threads, policy)
    try:
        yield plan
    finally:
        torch.set_num_threads(before)
        _torch_state["set"] = None


def prepare_openmp_env(policy: str | None = None) -> bool:
    """For policy ``passive``: set ``OMP_WAIT_POLICY=PASSIVE`` in this process if OpenMP is not loaded yet.

    libgomp reads the variable once, when ``import torch`` loads it; there is no call to change it
    later. So this works only before torch is imported (e.g. first thing in the CLI entry point);
    otherwise the variable must be in the environment the process starts with.

    Returns:
        Whether passive waiting is (or will be) in effect.
    """
    if thread_policy(policy) is not ThreadPolicy.PASSIVE:
        return False
    current = os.environ.get("OMP_WAIT_POLICY", "")
    if current:
        return current.upper() == "PASSIVE"
    if "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
