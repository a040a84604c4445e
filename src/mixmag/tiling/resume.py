"""Resume and crash-safety helpers of ``mixmag tile``.

A slide counts as done only when its region file under the final name opens, has the right
artifact/version and carries the same slide hash and parameter fingerprint as the current run.
Temporary files of killed writers are removed by
:func:`mixmag.utils.atomic.remove_stale_temp_files`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py

from mixmag.io.h5common import from_attr
from mixmag.io.regions import REGION_INDEX_ARTIFACT, REGION_INDEX_VERSION

logger = logging.getLogger(__name__)


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


def recorded_warnings(path: Path) -> list[str]:
    """The ``input_warnings`` attribute of a region file (empty when absent: files older than it)."""
    try:
        with h5py.File(path, "r") as f:
            value = from_attr(f.attrs.get("input_warnings", "[]"))
    except (OSError, KeyError, ValueError):
        return []
    return [str(w) for w in value] if isinstance(value, list) else []
