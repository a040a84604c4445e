"""QC picture per slide: thumbnail, tissue outline, region grid and invalid tokens.

Green line: detected tissue boundary. Blue squares: kept regions. Red shading: finest-magnification
tiles (20x) that are invalid (too little tissue); they stay in the index, masked. A caption gives
the slide id, resolution, region count and the share of valid tokens.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from mixmag.io.regions import RegionIndex
from mixmag.slides.tissue import TissueMask
from mixmag.tiling.grid import token_boxes_level0
from mixmag.utils.atomic import atomic_write_bytes

TISSUE_RGB = (0, 200, 0)
REGION_RGBA = (30, 90, 255, 255)
INVALID_RGBA = (255, 0, 0, 90)


def render_qc(thumbnail: np.ndarray, tissue: TissueMask, index: RegionIndex, caption: str = "") -> Image.Image:
    """Draw the QC overlay on ``thumbnail`` (uint8 (h, w, 3) covering the whole slide)."""
    h, w = thumbnail.shape[:2]
    w0, h0 = tissue.level0_size
    sx, sy = w / w0, h / h0
    base = Image.fromarray(thumbnail).convert("RGBA")

    # tissue outline: mask edge at thumbnail resolution, thickened to 2 px for visibility
    mask = np.asarray(Image.fromarray(tissue.mask).resize((w, h), Image.Resampling.NEAREST))
    edge = mask & ~ndimage.binary_erosion(mask, iterations=1, border_value=0)
    edge = ndimage.binary_dilation(edge, iterations=1)
    pixels = np.asarray(base).copy()
    pixels[edge] = (*TISSUE_RGB, 255)
    base = Image.fromarray(pixels)

    overlay = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    spec = index.spec
    finest = spec.token_slices()[spec.finest_mpp]
    boxes = token_boxes_level0(index.coords, spec, index.mpp_level0)[:, finest]  # (R, n, 4)
    invalid = ~index.tile_valid[:, finest]
    for x0, y0, x1, y1 in boxes[invalid]:
        draw.rectangle([x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1], fill=INVALID_RGBA)
    size = index.region_size_level0
    width = max(1, round(min(w, h) / 400))
    for x, y in index.coords:
        draw.rectangle([x * sx, y * sy, (x + size) * sx - 1, (y + size) * sy - 1], outline=REGION_RGBA, width=width)
    out = Image.alpha_composite(base, overlay).convert("RGB")

    if caption:
        draw = ImageDraw.Draw(out)
        font = ImageFont.load_default(size=max(10, round(w / 70)))
        left, top, right, bottom = draw.textbbox((4, 4), caption, font=font)
        draw.rectangle([left - 3, top - 3, right + 3, bottom + 3], fill=(255, 255, 255))
        draw.text((4, 4), caption, fill=(0, 0, 0), font=font)
    return out


def write_qc(
    path: str | os.PathLike[str], thumbnail: np.ndarray, tissue: TissueMask, index: RegionIndex, caption: str = ""
) -> Path:
    """Render the QC picture and write it atomically as PNG."""
    buf = io.BytesIO()
    render_qc(thumbnail, tissue, index, caption).save(buf, format="PNG", compress_level=1)  # fast; QC files are looked at, not archived
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
