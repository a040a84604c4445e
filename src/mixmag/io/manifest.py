"""``manifest.csv``: the per-stage index of what happened to every slide.

Columns: ``slide_id, path, status, n_items, seconds, error, output`` (+ free-form extras).
``status`` is one of :class:`Status`. Updates are read-modify-write under an exclusive ``fcntl``
lock and written atomically, so several worker processes (or Slurm array tasks on a shared
filesystem) can record results in the same manifest without losing each other's rows.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
from collections.abc import Collection, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

from mixmag.utils.atomic import atomic_write_text

BASE_COLUMNS = ["slide_id", "path", "status", "n_items", "seconds", "error", "output"]


class Status(str, Enum):
    """Outcome of one slide in one stage."""

    OK = "ok"
    SKIPPED = "skipped"  # already complete and valid from an earlier run
    ERROR = "error"
    EMPTY = "empty"  # processed fine but nothing to keep (e.g. no tissue)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as lock_fh:
        fcntl.flock(lock_fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_fh.fileno(), fcntl.LOCK_UN)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """Rows of a manifest keyed by ``slide_id`` (empty dict when the file does not exist)."""
    p = Path(path)
    if not p.exists():
        return {}
    with open(p, newline="", encoding="utf-8") as fh:
        return {row["slide_id"]: row for row in csv.DictReader(fh)}


def _write(path: Path, rows: dict[str, dict[str, Any]]) -> None:
    extra = sorted({k for r in rows.values() for k in r} - set(BASE_COLUMNS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=BASE_COLUMNS + extra, extrasaction="ignore")
    writer.writeheader()
    for slide_id in sorted(rows):
        writer.writerow({k: ("" if v is None else v) for k, v in rows[slide_id].items()})
    atomic_write_text(path, buf.getvalue())


class Manifest:
    """Append/update rows of one stage's ``manifest.csv``.

    Args:
        path: CSV file to maintain (created on the first update).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def update(
        self,
        slide_id: str,
        *,
        status: Status | str,
        path: str | os.PathLike[str] | None = None,
        n_items: int | None = None,
        seconds: float | None = None,
        error: str | None = None,
        output: str | os.PathLike[str] | None = None,
        keep_if: Collection[Status] = (),
        **extra: Any,
    ) -> None:
        """Insert or replace the row for ``slide_id`` (atomic, lock-protected).

        ``keep_if``: leave an existing row alone when its status is one of these (checked under
        the lock, so a concurrent process's "ok" is never overwritten by this one's "skipped").
        """
        row: dict[str, Any] = {
            "slide_id": slide_id,
            "path": "" if path is None else str(path),
            "status": Status(status).value,
            "n_items": "" if n_items is None else int(n_items),
            "seconds": "" if seconds is None else f"{seconds:.3f}",
            # one line per error so the CSV stays readable in a spreadsheet
            "error": "" if not error else " ".join(str(error).split()),
            "output": "" if output is None else str(output),
        }
        row.update({k: v for k, v in extra.items()})
        with _locked(self.path):
            rows: dict[str, dict[str, Any]] = dict(read_manifest(self.path))
            if rows.get(slide_id, {}).get("status") in {Status(k).value for k in keep_if}:
                return
            rows[slide_id] = row
            _write(self.path, rows)

    def rows(self) -> dict[str, dict[str, str]]:
        """Current rows keyed by ``slide_id``."""
        return read_manifest(self.path)

    def count(self, status: Status | str) -> int:
        """Number of rows with ``status``."""
        value = Status(status).value
        return sum(1 for r in self.rows().values() if r["status"] == value)
