"""Per-slide claims: exclusive, refreshed, released, and recovered from dead or silent owners."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

from mixmag.embed.claims import ClaimBoard, ClaimOwner


def test_claims_are_exclusive_and_released(tmp_path) -> None:
    a = ClaimBoard(tmp_path, ClaimOwner.current())
    b = ClaimBoard(tmp_path, ClaimOwner(host=a.owner.host, pid=os.getppid(), token="b"))  # a live process
    assert a.try_acquire("s1") and not b.try_acquire("s1")
    assert a.holds("s1") and not b.holds("s1")
    b.release("s1")  # not b's: stays
    assert a.path("s1").exists()
    a.release("s1")
    assert not a.path("s1").exists() and b.try_acquire("s1")


def test_dead_owner_on_this_host_is_recovered_immediately(tmp_path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)  # that process has exited
    ghost = ClaimBoard(tmp_path, ClaimOwner(host=ClaimOwner.current().host, pid=pid, token="ghost"))
    assert ghost.try_acquire("s1")
    me = ClaimBoard(tmp_path, ClaimOwner.current(), stale_after_s=3600)
    assert me.try_acquire("s1") and me.holds("s1")


def test_reused_pid_with_another_token_is_stale(tmp_path) -> None:
    """A killed run whose pid was given to the new run must not block it."""
    me = ClaimOwner.current()
    old = ClaimBoard(tmp_path, ClaimOwner(host=me.host, pid=me.pid, token="previous-run"))
    assert old.try_acquire("s1")
    assert ClaimBoard(tmp_path, me, stale_after_s=3600).try_acquire("s1")


def test_remote_owner_is_stale_only_after_silence(tmp_path) -> None:
    remote = ClaimBoard(tmp_path, ClaimOwner(host="other-node", pid=12345, token="r"))
    assert remote.try_acquire("s1")
    me = ClaimBoard(tmp_path, ClaimOwner.current(), stale_after_s=30)
    assert not me.try_acquire("s1")  # fresh: the remote node may be working
    old = time.time() - 60
    os.utime(remote.path("s1"), (old, old))
    assert me.try_acquire("s1")
    # heartbeats keep a long-running claim fresh
    os.utime(me.path("s1"), (old, old))
    me.heartbeat("s1", force=True)
    assert time.time() - me.path("s1").stat().st_mtime < 5


def _race(folder: str, queue: mp.Queue) -> None:
    board = ClaimBoard(folder, ClaimOwner.current())
    queue.put(board.try_acquire("contested"))
    time.sleep(0.5)  # stay alive so the winner's claim is not stale for the others


def test_a_failed_attempt_of_the_same_ray_run_is_taken_over_at_once(tmp_path) -> None:
    """Backend ray: the driver retries a slide only after its attempt died, possibly on a lost node."""
    lost = ClaimBoard(tmp_path, ClaimOwner(host="lost-node", pid=12345, token="t1", run="run-a"))
    assert lost.try_acquire("s1")
    assert json.loads(lost.path("s1").read_text())["run"] == "run-a"
    other_run = ClaimBoard(tmp_path, ClaimOwner.current(run="run-b"), stale_after_s=3600)
    assert not other_run.try_acquire("s1")  # another run's fresh remote claim: still respected
    local = ClaimBoard(tmp_path, ClaimOwner.current(), stale_after_s=3600)
    assert not local.try_acquire("s1")
    retry = ClaimBoard(tmp_path, ClaimOwner.current(run="run-a"), stale_after_s=3600)
    assert retry.try_acquire("s1") and retry.holds("s1")


def test_exactly_one_of_many_processes_wins(tmp_path) -> None:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), queue)) for _ in range(6)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join()
    assert sum(results) == 1
