"""Resume and crash-safety helpers of ``mixmag tile``.

A slide counts as done only when its region file under the final name opens, has the right
artifact/version and carries the same slide hash and parameter fingerprint as the current run.
Temporary files of killed writers are recognised by the ``.<pid>.tmp`` suffix that
:func:`mixmag.utils.atomic.atomic_path` gives them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from pathlib import Path

import h5py

from mixmag.io.h5common import from_attr
from mixmag.io.regions import REGION_INDEX_ARTIFACT, REGION_INDEX_VERSION
from mixmag.utils.atomic import TMP_MARKER

logger = logging.getLogger(__name__)

STALE_TMP_SECONDS = 60.0
"""A temporary file untouched this long is stale even if a process with its pid is alive (pids are
reused, and writers on other hosts of a shared filesystem are invisible)."""


def complete_region_count(path: Path, slide_hash: str, params_hash: str) -> int | None:
    """Number of regions of an existing, complete, matching region file; None to (re)compute it."""
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: from_attr(f.attrs.get(k)) for k in ("artifact", "format_version", "slide_hash", "params_hash")}
            n = int(f["coords"].shape[0]) if "coords" in f and "tile_valid" in f else None
    except (OSError, KeyError, ValueError):
        logger.warning("%s is unreadable; recomputing it", path)
        return None
    ok = (
        attrs["artifact"] == REGION_INDEX_ARTIFACT and attrs["format_version"] == REGION_INDEX_VERSION
        and attrs["slide_hash"] == slide_hash and attrs["params_hash"] == params_hash
    )
    return n if ok else None


_TMP_PID = re.compile(r"\.(\d+)" + re.escape(TMP_MARKER) + "$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(folder: Path) -> int:
    """Delete ``.*.tmp`` leftovers of killed writers: writer pid gone or untouched for a minute.

    Files of a live writer on this machine are kept, so two runs may share a run folder.
    """
    removed = 0
    if not folder.is_dir():
        return 0
    now = time.time()
    for tmp in folder.glob(f".*{TMP_MARKER}"):
        match = _TMP_PID.search(tmp.name)
        with contextlib.suppress(FileNotFoundError):
            dead = match is None or not _pid_alive(int(match.group(1)))
            if dead or now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                tmp.unlink()
                removed += 1
    return removed
