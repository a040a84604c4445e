"""Thread policy ``adapt``: compute threads follow the cores other processes leave free."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mixmag.utils.thread_adapt import CoreLoad, ThreadAdapter, threads_for


class FakeMachine:
    """Two cores: a wall clock, this process's CPU seconds and the cores' busy seconds, advanced by hand."""

    def __init__(self, cores: int = 2) -> None:
        self.cpus = frozenset(range(cores))
        self.wall = self.own = self.busy = 0.0

    def busy_seconds(self) -> float:
        return self.busy

    def run(self, seconds: float, *, own_cores: float, other_cores: float) -> None:
        self.wall += seconds
        self.own += own_cores * seconds
        self.busy += (own_cores + other_cores) * seconds


def _adapter(machine: FakeMachine, applied: list[int], **kw: float) -> ThreadAdapter:
    return ThreadAdapter(cores=len(machine.cpus), max_threads=2, load=machine, clock=lambda: machine.wall,  # type: ignore[arg-type]
                         own_cpu=lambda: machine.own, set_threads=applied.append, **kw)


def test_threads_for_free_cores() -> None:
    assert [threads_for(f) for f in (0.0, 0.5, 1.0, 1.4, 1.5, 1.7, 2.0, 3.2)] == [1, 1, 1, 1, 2, 2, 2, 3]


def test_an_idle_machine_keeps_every_thread() -> None:
    machine, applied = FakeMachine(), []
    adapter = _adapter(machine, applied)
    for _ in range(20):
        machine.run(0.5, own_cores=2.0, other_cores=0.0)
        adapter()
    assert adapter.threads == 2 and applied == [] and adapter.others == 0.0


def test_a_busy_core_from_the_start_leaves_one_thread_and_its_end_brings_two_back() -> None:
    """The case throughput hill-climbing misses: the other load is there before the first batch."""
    machine, applied = FakeMachine(), []
    adapter = _adapter(machine, applied, smoothing=1.0)
    for _ in range(4):
        machine.run(0.5, own_cores=1.2, other_cores=1.0)  # two threads sharing one core with another job
        adapter()
    assert adapter.threads == 1 and applied == [1]
    for _ in range(4):
        machine.run(0.5, own_cores=1.0, other_cores=0.0)  # the other job ended
        adapter()
    assert adapter.threads == 2 and applied == [1, 2]
    assert [t for _, t in adapter.changes] == [1, 2]


def test_light_other_load_and_short_intervals_change_nothing() -> None:
    machine, applied = FakeMachine(), []
    adapter = _adapter(machine, applied, interval_s=1.0)
    for _ in range(10):
        machine.run(0.5, own_cores=1.7, other_cores=0.3)  # a shell, a log tail
        adapter()
    assert applied == []
    machine.run(0.2, own_cores=0.0, other_cores=2.0)  # a burst shorter than one interval is not read
    adapter()
    assert applied == []


def test_an_allocation_smaller_than_its_mask_counts_free_cores_within_it() -> None:
    """A cgroup quota of 4 cores on a 16-core mask: other jobs on the rest of the mask do not count."""
    machine, applied = FakeMachine(cores=16), []
    adapter = ThreadAdapter(cores=4, max_threads=4, load=machine, clock=lambda: machine.wall,  # type: ignore[arg-type]
                            own_cpu=lambda: machine.own, set_threads=applied.append, smoothing=1.0)
    machine.run(1.0, own_cores=4.0, other_cores=10.0)
    adapter()
    assert applied == [] and adapter.threads == 4
    machine.run(1.0, own_cores=2.0, other_cores=14.0)  # other jobs now hold 14 of the 16: 2 left for us
    adapter()
    assert applied == [2]


def test_no_proc_stat_means_no_adapting(tmp_path: Path) -> None:
    load = CoreLoad(cpus=[0, 1], stat_path=tmp_path / "missing")
    assert load.busy_seconds() is None
    applied: list[int] = []
    adapter = ThreadAdapter(cores=2, max_threads=2, load=load, set_threads=applied.append, interval_s=0.0)
    adapter()
    assert applied == [] and adapter.threads == 2


def test_core_load_sums_only_the_cores_of_the_mask(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  900 0 900 9000 0 0 0 0 0 0\n"
                    "cpu0 100 10 200 5000 40 3 7 0 0 0\n"
                    "cpu1 400 0 300 4000 0 0 0 0 0 0\n"
                    "intr 1 2 3\n", encoding="ascii")
    load = CoreLoad(cpus=[0], stat_path=stat)
    load.ticks_per_s = 100.0
    assert load.busy_seconds() == pytest.approx((100 + 10 + 200 + 3 + 7) / 100)
    both = CoreLoad(cpus=[0, 1], stat_path=stat)
    both.ticks_per_s = 100.0
    assert both.busy_seconds() == pytest.approx((320 + 700) / 100)


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="Linux /proc/stat")
def test_the_real_proc_stat_counts_this_process_busy_time() -> None:
    load = CoreLoad()
    assert load.cpus == frozenset(os.sched_getaffinity(0))
    before, own0 = load.busy_seconds(), time.process_time()
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:  # spin: this process's CPU time shows up in the cores' busy time
        pass
    after, own1 = load.busy_seconds(), time.process_time()
    assert before is not None and after is not None
    assert after - before >= 0.5 * (own1 - own0) > 0
