"""Thumbnails read in horizontal bands, so memory stays bounded whatever the slide size.

Reading a whole pyramid level at once (what ``openslide.get_thumbnail`` does) costs gigabytes on
slides without a coarse level (single-level stripped TIFFs, 2-level scans); this reads the coarsest
adequate level band by band and area-resizes each band into its exact rows of the output.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from mixmag.slides.base import SlideReader

BAND_PIXELS = 16 * 1024 * 1024
"""Level pixels read per band (x3 bytes): ~48 MB of RGB whatever the slide size."""


def thumbnail_size(level0_size: tuple[int, int], max_px: int) -> tuple[int, int]:
    """(width, height) of a thumbnail whose longer side is ``max_px`` (never upscaled)."""
    w0, h0 = level0_size
    scale = min(1.0, max_px / max(w0, h0))
    return max(1, round(w0 * scale)), max(1, round(h0 * scale))


def streamed_thumbnail(reader: SlideReader, max_px: int, band_pixels: int = BAND_PIXELS) -> np.ndarray:
    """RGB uint8 (h, w, 3) thumbnail, longer side ``max_px``, covering the whole level-0 extent.

    The coarsest level still at least as large as the thumbnail is read in bands of about
    ``band_pixels`` pixels; each band is box-filtered (area average) into its output rows, with a
    fractional source box so band seams do not shift the picture.
    """
    if max_px < 1:
        raise ValueError(f"max_px must be >= 1, got {max_px}")
    tw, th = thumbnail_size(reader.dimensions, max_px)
    levels = reader.levels
    adequate = [i for i, lv in enumerate(levels) if lv.width >= tw and lv.height >= th]
    level = max(adequate, key=lambda i: levels[i].downsample) if adequate else 0
    lv = levels[level]
    fy = lv.height / th  # level rows per output row
    rows_per_band = max(1, int(band_pixels // max(1.0, lv.width * fy)))
    out = np.empty((th, tw, 3), dtype=np.uint8)
    for r0 in range(0, th, rows_per_band):
        r1 = min(th, r0 + rows_per_band)
        y_start, y_stop = r0 * fy, r1 * fy
        iy0 = math.floor(y_start)
        iy1 = min(lv.height, max(iy0 + 1, math.ceil(y_stop)))
        band = reader.read_region((0, round(iy0 * lv.downsample)), level, (lv.width, iy1 - iy0))
        box = (0.0, y_start - iy0, float(lv.width), min(y_stop, iy1) - iy0)
        resized = Image.fromarray(band).resize((tw, r1 - r0), Image.Resampling.BOX, box=box)
        out[r0:r1] = np.asarray(resized)
    return out
