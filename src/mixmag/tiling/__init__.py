"""Linked multi-magnification region tiling: grid over tissue, pixel extraction, the tiling run.

``RegionSpec`` and ``parse_magnification`` live in :mod:`mixmag.geometry` (re-exported here, they
are light); the rest loads on first access so that ``import mixmag.tiling`` stays cheap.
"""

from __future__ import annotations

from mixmag.geometry import RegionSpec, parse_magnification
from mixmag.utils.lazy import lazy_getattr

#: Smallest thumbnail (longer side, px) for tissue detection and QC (``tiling.thumbnail_px``).
MIN_THUMBNAIL_PX = 64

_LAZY: dict[str, str] = {
    "tile_slides": "mixmag.tiling.tile",
    "TilingSettings": "mixmag.tiling.settings",
    "TileSummary": "mixmag.tiling.tile",
    "build_region_index": "mixmag.tiling.grid",
    "RegionTileReader": "mixmag.tiling.extract",
    "ReadPlan": "mixmag.tiling.extract",
    "plan_region_read": "mixmag.tiling.extract",
    "cut_tiles": "mixmag.tiling.extract",
    "index_slide": "mixmag.tiling.slide",
    "SlideRegions": "mixmag.tiling.slide",
}

__all__ = ["MIN_THUMBNAIL_PX", "RegionSpec", "parse_magnification", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY)
