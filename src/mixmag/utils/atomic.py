"""Crash-safe file writes: write to a temporary sibling, fsync, then ``os.replace``.

A reader (or a resumed run) therefore sees either the previous complete file or the new complete
file, never a half-written one. Temporary files carry a ``.tmp`` suffix plus the writer's pid so that
concurrent writers never share one, and leftovers from killed processes are recognisable.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARKER = ".tmp"


def _read_umask() -> int:
    # os.umask can only be read by setting it; do that once at import, never while other
    # threads may be creating files
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``final_path``; on success rename it into place.

    The caller writes the whole file to the yielded path (e.g. with ``h5py.File(tmp, "w")``). If the
    block raises, the temporary file is removed and ``final_path`` is left untouched.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=f".{os.getpid()}{TMP_MARKER}", dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would have
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # flush file contents before the rename makes them visible
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (non-JSON values are stringified)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


STALE_TMP_SECONDS = 60.0
"""A temporary file untouched this long is stale even if a process with its pid is alive (pids are
reused, and writers on other hosts of a shared filesystem are invisible)."""

_TMP_PID = re.compile(r"\.(\d+)" + re.escape(TMP_MARKER) + "$")


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists on this host (also when another user owns it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike[str], *,
                            stale_after_s: float | None = STALE_TMP_SECONDS) -> int:
    """Delete ``.*.tmp`` leftovers of killed writers in ``folder``; return how many.

    A temporary file (or checkpoint folder) is a leftover when the pid in its name is not alive on
    this host, or, unless ``stale_after_s`` is None, when it was untouched for ``stale_after_s``
    seconds. Files of a live writer on this machine are kept, so two runs may share a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        return 0
    removed = 0
    now = time.time()
    for tmp in root.glob(f".*{TMP_MARKER}"):
        match = _TMP_PID.search(tmp.name)
        with contextlib.suppress(FileNotFoundError):
            dead = match is None or not pid_alive(int(match.group(1)))
            if dead or (stale_after_s is not None and now - tmp.stat().st_mtime > stale_after_s):
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink()
                removed += 1
    return removed
