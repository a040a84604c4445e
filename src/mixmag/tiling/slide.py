"""One open slide -> its region grid in memory: the per-slide core of ``tile_slides``, no files.

:func:`index_slide` detects tissue on a thumbnail, lays the region grid over it and plans the
reads; ``tile_slides`` writes what it returns (region index, QC picture, tissue GeoJSON), and the
in-memory path (``mixmag.embed_slide``) reads the regions' tiles straight from it with
:class:`~mixmag.tiling.extract.RegionTileReader`. Both therefore index a slide identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mixmag.geometry import RegionSpec
from mixmag.io.regions import RegionIndex
from mixmag.slides.base import SlideReader
from mixmag.slides.tissue import TissueMask, TissueParams, detect_tissue
from mixmag.tiling.extract import ReadPlan, plan_region_read
from mixmag.tiling.grid import build_region_index


@dataclass
class SlideRegions:
    """A slide's regions before anything is written.

    Attributes:
        index: The kept regions (coords in level-0 px, per-token validity and tissue fractions).
        thumbnail: uint8 (h, w, 3) whole-slide thumbnail the tissue was detected on.
        tissue: The tissue mask.
        plan: How the regions are read (pyramid level, window, achieved µm/px per magnification).
    """

    index: RegionIndex
    thumbnail: np.ndarray
    tissue: TissueMask
    plan: ReadPlan


def index_slide(
    reader: SlideReader,
    mpp_level0: float,
    spec: RegionSpec,
    *,
    min_tissue: float,
    valid_min_tissue: float,
    thumbnail_px: int,
    tissue_params: TissueParams | None = None,
    resample: str = "box",
    attrs: dict[str, Any] | None = None,
) -> SlideRegions:
    """Detect tissue, lay the region grid and plan the reads of one open slide.

    Args:
        reader: The open slide.
        mpp_level0: Its resolved level-0 µm/px (:func:`~mixmag.slides.mpp.resolve_mpp`).
        spec: Region geometry.
        min_tissue: Keep a region when its coarsest-magnification tissue fraction is >= this.
        valid_min_tissue: A token is valid when its tile's tissue fraction is >= this.
        thumbnail_px: Longer side of the detection thumbnail, px.
        tissue_params: Tissue-detection settings (default :class:`TissueParams`).
        resample: Filter reaching the exact target mpp (``"box"`` or ``"lanczos"``).
        attrs: Provenance attributes stored on the index.

    Returns:
        The index (possibly without regions), the thumbnail, the tissue mask and the read plan.
    """
    thumbnail = reader.thumbnail(thumbnail_px)
    tissue = detect_tissue(thumbnail, reader.dimensions, mpp_level0, tissue_params)
    plan = plan_region_read(reader, mpp_level0, spec, resample)
    index = build_region_index(tissue, mpp_level0, spec, min_tissue=min_tissue,
                               valid_min_tissue=valid_min_tissue, attrs=attrs)
    return SlideRegions(index=index, thumbnail=thumbnail, tissue=tissue, plan=plan)
