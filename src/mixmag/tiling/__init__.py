"""Linked multi-magnification region tiling: region spec, grid over tissue, pixel extraction.

``RegionSpec`` is imported eagerly (it is light); the rest loads on first access so that
``import mixmag`` stays cheap.
"""

from __future__ import annotations

from mixmag.tiling.spec import RegionSpec, parse_magnification
from mixmag.utils.lazy import lazy_getattr

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


__getattr__ = lazy_getattr(__name__, _LAZY)
