"""Crash-safe writes: leftovers of killed writers are swept, files of live writers are kept."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixmag.utils.atomic import atomic_write_text, pid_alive, remove_stale_temp_files


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    pid = int(proc.stdout)
    assert not pid_alive(pid)
    return pid


def test_sweep_removes_dead_writers_and_old_files_only(tmp_path: Path) -> None:
    dead, live = _dead_pid(), os.getpid()
    dead_file = tmp_path / f".manifest.csv.abc.{dead}.tmp"
    dead_dir = tmp_path / f".final.xyz.{dead}.tmp"  # a checkpoint folder in the making
    live_file = tmp_path / f".a.h5.def.{live}.tmp"
    old_live = tmp_path / f".b.h5.ghi.{live}.tmp"
    for f in (dead_file, live_file, old_live):
        f.write_text("partial")
    dead_dir.mkdir()
    (dead_dir / "weights.safetensors").write_text("partial")
    hour_ago = time.time() - 3600
    os.utime(old_live, (hour_ago, hour_ago))
    complete = tmp_path / "a.h5"
    atomic_write_text(complete, "whole")

    # without the age rule only dead writers' leftovers go
    assert remove_stale_temp_files(tmp_path, stale_after_s=None) == 2
    assert not dead_file.exists() and not dead_dir.exists()
    assert live_file.exists() and old_live.exists() and complete.read_text() == "whole"
    # with it, a live pid's file untouched for an hour is stale too (pids are reused)
    assert remove_stale_temp_files(tmp_path) == 1
    assert live_file.exists() and not old_live.exists()


def test_sweep_of_a_missing_folder_is_a_no_op(tmp_path: Path) -> None:
    assert remove_stale_temp_files(tmp_path / "nowhere") == 0


def test_failed_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    from mixmag.utils.atomic import atomic_path

    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer crashed")
    assert list(tmp_path.iterdir()) == []
