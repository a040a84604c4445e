"""Thread policy ``adapt``: compute threads follow the cores that other processes leave free.

Why: the OpenMP threads of one forward pass meet at a barrier, so when another process takes one
of two cores, a pass with two threads waits for the descheduled one and runs at a third of its
idle speed (measured: docs/performance.md), where one thread would keep about two thirds.
Trying thread counts and keeping the faster one (hill climbing on throughput) never acts when the
other load was there from the start, and per-batch throughput on a shared machine is too noisy to
judge a one-window trial. So :class:`ThreadAdapter` *measures* the load instead: every
``interval_s`` it reads the busy time of the cores this process may run on (``/proc/stat``, Linux),
subtracts this process's own CPU time, and sets the compute threads to the cores left free:
``round(free)`` clipped to ``[1, planned threads]``. On an idle machine nothing changes (one
``/proc/stat`` read a second); when the other load goes, the threads come back.

"Other processes" includes this run's own decoding workers: compute then leaves them their cores.
Where ``/proc/stat`` cannot be read (macOS, Windows, a restricted sandbox) the adapter does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Collection
from pathlib import Path

logger = logging.getLogger(__name__)

PROC_STAT = Path("/proc/stat")
# /proc/stat cpuN columns: user nice system idle iowait irq softirq steal [guest guest_nice]; guest
# time is already inside user/nice, idle and iowait are the idle ones
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)
# free cores are rounded half up: a core other processes keep busy less than half the time is ours
_ROUND_UP_FROM = 0.5


class CoreLoad:
    """Cumulative busy seconds of a set of cores, from ``/proc/stat``.

    Args:
        cpus: Core ids to sum (default: this process's affinity mask).
        stat_path: The ``/proc/stat`` file (tests give another).
    """

    def __init__(self, cpus: Collection[int] | None = None, stat_path: Path = PROC_STAT) -> None:
        if cpus is None:
            try:
                cpus = os.sched_getaffinity(0)
            except (AttributeError, OSError):  # no affinity API outside Linux
                cpus = range(os.cpu_count() or 1)
        self.cpus = frozenset(int(c) for c in cpus)
        self.stat_path = stat_path
        self.ticks_per_s = 100.0
        with contextlib.suppress(AttributeError, ValueError, OSError):
            self.ticks_per_s = float(os.sysconf("SC_CLK_TCK"))

    def busy_seconds(self) -> float | None:
        """Busy CPU seconds of :attr:`cpus` since boot; None when ``/proc/stat`` cannot be read."""
        try:
            text = self.stat_path.read_text(encoding="ascii")
        except OSError:
            return None
        busy, seen = 0, 0
        for line in text.splitlines():
            name, _, rest = line.partition(" ")
            if not name.startswith("cpu") or name == "cpu":
                continue
            try:
                cpu = int(name[3:])
                if cpu not in self.cpus:
                    continue
                values = [int(v) for v in rest.split()]
            except ValueError:
                return None
            busy += sum(values[i] for i in _BUSY_COLUMNS if i < len(values))
            seen += 1
        return busy / self.ticks_per_s if seen else None


def threads_for(free: float) -> int:
    """Compute threads for ``free`` idle cores (a fraction from ``_ROUND_UP_FROM`` up counts as a core; >= 1)."""
    return max(1, int(free + (1.0 - _ROUND_UP_FROM)))


class ThreadAdapter:
    """Set torch's compute threads to the cores other processes leave free; call after every forward pass.

    Args:
        cores: Usable cores (:attr:`mixmag.utils.cpus.CpuBudget.cores`); the free cores are
            counted within them.
        max_threads: The most threads to use (the stage's plan; default torch's current count).
        interval_s: Seconds between two load readings (a reading costs one ``/proc/stat`` read).
        smoothing: Weight of the newest reading in the running load estimate (1 = no smoothing).
        load: Busy-time source of the cores this process may run on.
        clock: Wall clock (seconds). own_cpu: this process's CPU seconds (all threads).
        set_threads: Applies a thread count (default ``torch.set_num_threads``).
    """

    def __init__(self, *, cores: int, max_threads: int | None = None, interval_s: float = 1.0,
                 smoothing: float = 0.5, load: CoreLoad | None = None,
                 clock: Callable[[], float] = time.monotonic, own_cpu: Callable[[], float] = time.process_time,
                 set_threads: Callable[[int], None] | None = None) -> None:
        if set_threads is None or max_threads is None:
            import torch

            set_threads = set_threads or torch.set_num_threads
            max_threads = max_threads or torch.get_num_threads()
        self.cores, self.max_threads, self.threads = int(cores), int(max_threads), int(max_threads)
        self.interval_s, self.smoothing = float(interval_s), float(smoothing)
        self.load = load if load is not None else CoreLoad()
        # the free cores are counted among the cores measured: an allocation smaller than its mask
        # (a cgroup quota) caps them, other processes on the rest of the mask do not count against it
        self.measured_cores = len(self.load.cpus)
        self.clock, self.own_cpu, self._set_threads = clock, own_cpu, set_threads
        self.others: float | None = None  # smoothed cores busy with other processes
        self.changes: list[tuple[float, int]] = []  # (seconds since start, threads) after each change
        self._start = self.clock()
        self._last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        busy = self.load.busy_seconds()
        return None if busy is None else (self.clock(), busy, self.own_cpu())

    def __call__(self, n_items: int = 0, seconds: float = 0.0) -> None:
        """Record one forward pass (the arguments are accepted for the batcher's hook and unused)."""
        if self._last is None or self.clock() - self._last[0] < self.interval_s:
            return
        now = self._read()
        if now is None:
            return
        wall, busy, own = (b - a for a, b in zip(self._last, now, strict=True))
        self._last = now
        if wall <= 0:
            return
        others = max(0.0, (busy - own) / wall)
        self.others = others if self.others is None else self.smoothing * others + (1 - self.smoothing) * self.others
        target = min(self.max_threads, threads_for(min(self.cores, self.measured_cores - self.others)))
        if target != self.threads:
            logger.info("thread policy adapt: %d -> %d compute threads (other processes keep %.1f of %d cores busy)",
                        self.threads, target, self.others, self.measured_cores)
            self._set_threads(target)
            self.threads = target
            self.changes.append((round(now[0] - self._start, 3), target))
