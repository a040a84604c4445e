"""Linked multi-magnification region tiling: region spec, grid over tissue, pixel extraction.

``RegionSpec`` is imported eagerly (it is light); the rest loads on first access so that
``import mixmag`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from mixmag.tiling.spec import RegionSpec, parse_magnification

_LAZY: dict[str, str] = {
    "tile_slides": "mixmag.tiling.tile",
    "TileSummary": "mixmag.tiling.tile",
    "build_region_index": "mixmag.tiling.grid",
    "RegionTileReader": "mixmag.tiling.extract",
    "ReadPlan": "mixmag.tiling.extract",
    "plan_region_read": "mixmag.tiling.extract",
    "cut_tiles": "mixmag.tiling.extract",
}

__all__ = ["RegionSpec", "parse_magnification", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mixmag.tiling' has no attribute {name!r}")
