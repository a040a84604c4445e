"""A JSON-friendly description of a slide (what ``mixmag info`` prints)."""

from __future__ import annotations

import os
from typing import Any

from mixmag.slides.base import MppError
from mixmag.slides.mpp import resolve_mpp
from mixmag.slides.opener import open_slide
from mixmag.slides.sanity import probe_pixel_format


def slide_info(
    path: str | os.PathLike[str], reader: str | None = None, mpp_override: float | None = None
) -> dict[str, Any]:
    """Levels, resolution (or the reason it is unknown), objective and vendor of a slide.

    Returns:
        Dict with ``path, reader, vendor, objective_power, mpp, mpp_y, mpp_source, mpp_error,
        metadata_mpp, tiff_mpp, pixel_format, level0_width, level0_height, levels`` where each level
        is ``{level, width, height, downsample, mpp}`` (mpp None when the resolution is unknown) and
        ``pixel_format`` describes the stored samples (``8-bit, 3 samples (RGB)``; None when the
        file type has no header mixmag reads).

    Raises:
        MppError: ``mpp_override`` is not a plausible µm/px (a missing or implausible resolution in
            the file is reported in ``mpp_error`` instead).
    """
    with open_slide(path, reader) as slide:
        props = slide.properties
        try:
            info = resolve_mpp(slide, mpp_override)
            mpp, mpp_y, source, error = info.mpp, info.mpp_y, info.source, None
        except MppError as exc:
            if mpp_override is not None:  # the value the caller gave is wrong, not the slide: say so
                raise
            mpp, mpp_y, source, error = None, None, None, str(exc)
        w, h = slide.dimensions
        return {
            "path": str(slide.path),
            "reader": slide.name,
            "vendor": props.vendor,
            "objective_power": props.objective_power,
            "mpp": mpp,
            "mpp_y": mpp_y,
            "mpp_source": source,
            "mpp_error": error,
            "metadata_mpp": props.metadata_mpp,
            "tiff_mpp": props.tiff_mpp,
            "pixel_format": None if (fmt := probe_pixel_format(slide.path)) is None else fmt.describe(),
            "level0_width": w,
            "level0_height": h,
            "levels": [
                {"level": i, "width": lv.width, "height": lv.height, "downsample": lv.downsample,
                 "mpp": None if mpp is None else mpp * lv.downsample}
                for i, lv in enumerate(slide.levels)
            ],
        }
