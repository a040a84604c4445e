"""One open slide -> its region grid in memory: the per-slide core of ``tile_slides``, no files.

:func:`index_slide` detects tissue on a thumbnail, lays the region grid over it and plans the
reads; ``tile_slides`` writes what it returns (region index, QC picture, tissue GeoJSON), and the
in-memory path (``mixmag.embed_slide``) reads the regions' tiles straight from it with
:class:`~mixmag.tiling.extract.RegionTileReader`. Both therefore index a slide identically, and both
get the input sanity checks of :mod:`mixmag.slides.sanity` (a slide stored in a format that would be
tiled wrongly is refused; doubtful ones carry warnings).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixmag.geometry import RegionSpec
from mixmag.io.regions import RegionIndex
from mixmag.slides.base import SlideReader
from mixmag.slides.sanity import InputWarning, check_pixel_format, check_tissue, probe_pixel_format
from mixmag.slides.tissue import TissueMask, TissueParams, detect_tissue
from mixmag.tiling.extract import ReadPlan, plan_region_read
from mixmag.tiling.grid import build_region_index

logger = logging.getLogger(__name__)

# Backends whose pixels come straight from the file, so its header says what they hold. A plugin
# reader may convert (e.g. window 16-bit data itself); its file header would then mislead.
PROBED_READERS = frozenset({"openslide", "tiffslide", "image"})


@dataclass
class SlideRegions:
    """A slide's regions before anything is written.

    Attributes:
        index: The kept regions (coords in level-0 px, per-token validity and tissue fractions).
        thumbnail: uint8 (h, w, 3) whole-slide thumbnail the tissue was detected on.
        tissue: The tissue mask.
        plan: How the regions are read (pyramid level, window, achieved µm/px per magnification).
        warnings: Input sanity warnings (greyscale, dark background, almost no tissue ...), also
            stored as the index's ``input_warnings`` attribute.
    """

    index: RegionIndex
    thumbnail: np.ndarray
    tissue: TissueMask
    plan: ReadPlan
    warnings: list[InputWarning] = field(default_factory=list)


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
    log_warnings: bool = True,
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
        log_warnings: Log each input warning (``tile_slides`` records them itself, in its manifest).

    Returns:
        The index (possibly without regions), the thumbnail, the tissue mask, the read plan and the
        input warnings.

    Raises:
        SlideError: The slide's samples are not 8-bit, or it holds several fluorescence channels
            (see :func:`~mixmag.slides.sanity.check_pixel_format`); nothing is read then.
    """
    name = reader.path.name
    fmt = probe_pixel_format(reader.path) if reader.name in PROBED_READERS else None
    warnings = check_pixel_format(fmt, name)  # before the thumbnail: a refused slide costs no decoding
    thumbnail = reader.thumbnail(thumbnail_px)
    tissue = detect_tissue(thumbnail, reader.dimensions, mpp_level0, tissue_params)
    warnings += check_tissue(tissue, tissue_params)
    plan = plan_region_read(reader, mpp_level0, spec, resample)
    index = build_region_index(tissue, mpp_level0, spec, min_tissue=min_tissue,
                               valid_min_tissue=valid_min_tissue, attrs=attrs)
    index.attrs["input_warnings"] = [str(w) for w in warnings]
    if log_warnings:
        for w in warnings:
            logger.warning("%s: %s", name, w)
    return SlideRegions(index=index, thumbnail=thumbnail, tissue=tissue, plan=plan, warnings=warnings)
