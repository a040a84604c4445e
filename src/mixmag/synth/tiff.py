"""Write an RGB image as a tiled, pyramidal TIFF with resolution tags (readable by OpenSlide and tiffslide)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from mixmag.errors import MixmagValueError
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
        raise MixmagValueError(f"unknown compression {compression!r}; use one of {sorted(codecs)}")
    comp, comp_args = codecs[compression]
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        for i, level in enumerate(levels):
            # resolution tags in px/cm so readers report mpp exactly; none at all for mpp=None
            px_per_cm = None if mpp is None else 1e4 / (mpp * (2**i))
            tif.write(
                level, photometric="rgb", tile=(tile_px, tile_px), compression=comp, compressionargs=comp_args,
                subfiletype=0 if i == 0 else 1, description=description if i == 0 else None,
                metadata=None, resolution=None if px_per_cm is None else (px_per_cm, px_per_cm),
                resolutionunit=None if px_per_cm is None else "CENTIMETER",
            )
    return Path(path)


def write_plain_image(path: str | os.PathLike[str], rgb: np.ndarray, quality: int = 95) -> Path:
    """Write a non-pyramidal PNG/JPEG (format from the suffix), atomically."""
    p = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}[p.suffix.lower()]
    with atomic_path(p) as tmp:
        Image.fromarray(rgb).save(tmp, format=fmt, quality=quality)
    return p


# --- synthetic tissue layouts (tests) and streamed large pyramids (benchmarks) -----------------

BACKGROUND_RGB = (242, 241, 244)  # slightly blue-grey glass, as scanners render it


def _he_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """H&E-like texture: pink stroma with purple nuclei and fine noise, uint8 (h, w, 3)."""
    h, w = shape
    base = np.empty((h, w, 3), dtype=np.int16)
    base[:] = (224, 150, 190)  # eosin pink
    # luminance + chroma noise; uniform integers are ~10x cheaper than normals and look the same
    base += rng.integers(-15, 16, size=(h, w, 1), dtype=np.int16)
    base += rng.integers(-6, 7, size=(h, w, 3), dtype=np.int16)
    n_nuclei = max(1, h * w // 600)
    ys, xs = rng.integers(0, h, n_nuclei), rng.integers(0, w, n_nuclei)
    nuclei = np.zeros((h, w), dtype=bool)
    for dy in (-2, -1, 0, 1, 2):
        for dx in (-2, -1, 0, 1, 2):
            if dx * dx + dy * dy <= 5:
                nuclei[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)] = True
    base[nuclei] = (110, 60, 150)  # hematoxylin purple
    return np.clip(base, 0, 255).astype(np.uint8)


def ellipse_mask(
    shape: tuple[int, int], blobs: list[tuple[float, float, float, float]], origin: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
) -> np.ndarray:
    """bool (h, w) union of axis-aligned ellipses ``(cx, cy, rx, ry)`` given in level-0 px.

    Pixel ``(r, c)`` of the output sits at level-0 ``origin + (c + 0.5, r + 0.5) * scale``, so the
    same blobs can be rasterised at any pyramid level or for any tile.
    """
    h, w = shape
    ys = origin[1] + (np.arange(h, dtype=np.float64) + 0.5) * scale
    xs = origin[0] + (np.arange(w, dtype=np.float64) + 0.5) * scale
    mask = np.zeros((h, w), dtype=bool)
    for cx, cy, rx, ry in blobs:
        dy = ((ys - cy) / ry) ** 2
        dx = ((xs - cx) / rx) ** 2
        mask |= (dy[:, None] + dx[None, :]) <= 1.0
    return mask


def draw_tissue_layout(
    size: tuple[int, int],
    blobs: list[tuple[float, float, float, float]],
    *,
    seed: int = 0,
    ink_strokes: list[tuple[float, float, float, float, tuple[int, int, int]]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a synthetic slide with known tissue: H&E-textured ellipses on glass.

    Args:
        size: (width, height) in px.
        blobs: Tissue ellipses ``(cx, cy, rx, ry)`` in px.
        seed: Texture seed.
        ink_strokes: Optional pen lines ``(x0, y0, x1, y1, rgb)``, 1.5 % of the short side thick,
            drawn over everything (they are *not* tissue).

    Returns:
        (rgb uint8 (h, w, 3), tissue bool (h, w)): pixels and the true tissue mask.
    """
    from PIL import ImageDraw

    w, h = size
    rng = np.random.default_rng(seed)
    mask = ellipse_mask((h, w), blobs)
    rgb = np.empty((h, w, 3), dtype=np.uint8)
    rgb[:] = BACKGROUND_RGB
    rgb[mask] = _he_texture((h, w), rng)[mask]
    if ink_strokes:
        img = Image.fromarray(rgb)
        draw = ImageDraw.Draw(img)
        width = max(2, round(0.015 * min(w, h)))
        for x0, y0, x1, y1, colour in ink_strokes:
            draw.line([(x0, y0), (x1, y1)], fill=tuple(colour), width=width)
        rgb = np.asarray(img).copy()
    return rgb, mask


def write_synthetic_wsi(
    path: str | os.PathLike[str],
    size: tuple[int, int],
    *,
    mpp: float,
    blobs: list[tuple[float, float, float, float]] | None = None,
    n_levels: int = 5,
    tile_px: int = 256,
    quality: int = 80,
    seed: int = 0,
) -> Path:
    """Stream a large tiled pyramidal TIFF tile by tile (memory independent of ``size``).

    Tissue = ``blobs`` (level-0 ellipses; default: three large ones covering ~45 % of the slide)
    textured with a few precomputed H&E-like patches; each level is rasterised directly at its own
    resolution (levels are 2**i downsamples), so no level is ever held in memory.

    Args:
        path: Output ``.tiff`` (BigTIFF).
        size: Level-0 (width, height) in px, e.g. (40_000, 30_000).
        mpp: Level-0 µm/px written to the resolution tags.
        blobs: Tissue ellipses ``(cx, cy, rx, ry)`` in level-0 px.
        n_levels: Pyramid levels.
        tile_px: TIFF tile side.
        quality: JPEG quality.
        seed: Texture seed.
    """
    import tifffile

    w0, h0 = size
    if blobs is None:
        blobs = [(0.30 * w0, 0.40 * h0, 0.22 * w0, 0.30 * h0), (0.68 * w0, 0.55 * h0, 0.20 * w0, 0.33 * h0),
                 (0.50 * w0, 0.85 * h0, 0.15 * w0, 0.10 * h0)]
    rng = np.random.default_rng(seed)
    patches = [_he_texture((tile_px, tile_px), rng) for _ in range(8)]
    white = np.empty((tile_px, tile_px, 3), dtype=np.uint8)
    white[:] = BACKGROUND_RGB

    def tiles(level: int, lw: int, lh: int) -> Iterator[np.ndarray]:  # consumed lazily by tifffile
        scale = float(2**level)
        for ty in range(0, lh, tile_px):
            for tx in range(0, lw, tile_px):
                mask = ellipse_mask((tile_px, tile_px), blobs, origin=(tx * scale, ty * scale), scale=scale)
                if not mask.any():
                    yield white
                    continue
                tile = white.copy()
                tile[mask] = patches[(tx // tile_px * 7 + ty // tile_px * 13 + level) % len(patches)][mask]
                yield tile

    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for level in range(n_levels):
            lw, lh = max(1, w0 >> level), max(1, h0 >> level)
            if level and min(lw, lh) < tile_px:
                break
            px_per_cm = 1e4 / (mpp * 2**level)
            tif.write(
                tiles(level, lw, lh), shape=(lh, lw, 3), dtype=np.uint8, photometric="rgb",
                tile=(tile_px, tile_px), compression="jpeg", compressionargs={"level": quality},
                subfiletype=0 if level == 0 else 1, resolution=(px_per_cm, px_per_cm),
                resolutionunit="CENTIMETER", description="mixmag synthetic wsi" if level == 0 else None,
                metadata=None,
            )
    return Path(path)
