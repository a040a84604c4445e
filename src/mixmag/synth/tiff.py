"""Write an RGB image as a tiled, pyramidal TIFF with resolution tags (readable by OpenSlide and tiffslide)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from mixmag.utils.atomic import atomic_path


def _downsample2(img: np.ndarray) -> np.ndarray:
    """Exact 2x box downsampling (odd trailing row/column dropped)."""
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    x = img[:h, :w].astype(np.float32)
    x = (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def write_pyramidal_tiff(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    *,
    mpp: float | None,
    n_levels: int = 3,
    tile_px: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
    description: str = "mixmag synthetic slide",
) -> Path:
    """Write ``rgb`` (H, W, 3 uint8) as a generic tiled pyramidal TIFF, atomically.

    Level ``i`` is a 2**i box-downsample of level 0. Resolution tags are written in centimetres so
    OpenSlide/tiffslide report ``mpp`` (µm/px) exactly; ``mpp=None`` writes no resolution (for
    missing-mpp tests).

    Args:
        path: Output ``.tiff`` path.
        rgb: Level-0 pixels, uint8 (H, W, 3), indexed [row=y, col=x].
        mpp: Level-0 resolution in µm/px, or None.
        n_levels: Number of pyramid levels (stops early when a level would be < 1 tile).
        tile_px: TIFF tile side (multiple of 16).
        compression: "jpeg", "zlib" (lossless) or "none".
        quality: JPEG quality.
        description: ImageDescription tag.
    """
    import tifffile

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    levels = [rgb]
    while len(levels) < n_levels and min(levels[-1].shape[:2]) >= 2 * tile_px:
        levels.append(_downsample2(levels[-1]))
    codecs: dict[str, tuple[str | None, dict[str, int] | None]] = {
        "jpeg": ("jpeg", {"level": quality}),
        "zlib": ("zlib", None),
        "none": (None, None),
    }
    if compression not in codecs:
        raise ValueError(f"unknown compression {compression!r}; use one of {sorted(codecs)}")
    comp, comp_args = codecs[compression]
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        for i, level in enumerate(levels):
            kwargs: dict[str, object] = {}
            if mpp is not None:
                px_per_cm = 1e4 / (mpp * (2**i))
                kwargs["resolution"] = (px_per_cm, px_per_cm)
                kwargs["resolutionunit"] = "CENTIMETER"
            tif.write(
                level, photometric="rgb", tile=(tile_px, tile_px), compression=comp, compressionargs=comp_args,
                subfiletype=0 if i == 0 else 1, description=description if i == 0 else None,
                metadata=None, **kwargs,
            )
    return Path(path)


def write_plain_image(path: str | os.PathLike[str], rgb: np.ndarray, quality: int = 95) -> Path:
    """Write a non-pyramidal PNG/JPEG (format from the suffix), atomically."""
    p = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}[p.suffix.lower()]
    with atomic_path(p) as tmp:
        Image.fromarray(rgb).save(tmp, format=fmt, quality=quality)
    return p
