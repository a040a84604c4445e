"""Pixel helpers shared by the reader backends: white compositing and edge-safe reads.

Backends disagree on what lies outside a slide (OpenSlide: transparent RGBA, tiffslide: black
zero padding, PIL: an IndexError). mixmag's contract is "outside is white", so every backend
routes its reads through :func:`read_clipped`, which reads only the in-bounds part and places it on
a white canvas; tissue detection then treats the margin as background, as it should.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import numpy as np

from mixmag.slides.base import LevelInfo, SlideProperties, SlideReader
from mixmag.slides.thumbnail import streamed_thumbnail

# (level0_x, level0_y, level, width, height) -> uint8 (height, width, 3 or 4)
RawRead = Callable[[int, int, int, int, int], np.ndarray]


def composite_on_white(pixels: np.ndarray) -> np.ndarray:
    """RGB(A) uint8 (h, w, 3|4) -> RGB uint8 (h, w, 3); transparent pixels become white.

    OpenSlide returns un-premultiplied RGBA where alpha is 0 outside the scanned area (MIRAX,
    bounds of Leica/Ventana slides); compositing keeps those areas from looking like black tissue.
    """
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.shape[2] == 3:
        return pixels
    rgb, alpha = pixels[:, :, :3], pixels[:, :, 3]
    if alpha.min() == 255:  # fast path: fully opaque, just drop alpha (one copy)
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.float32)[:, :, None] / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def read_clipped(
    raw_read: RawRead,
    level0_xy: tuple[int, int],
    level: int,
    size_px: tuple[int, int],
    level_size: tuple[int, int],
    downsample: float,
) -> np.ndarray:
    """Read a window that may extend past the slide; the outside part is white.

    Args:
        raw_read: Backend read of an in-bounds window (level-0 origin, level, width, height).
        level0_xy: Window top-left (x, y) in level-0 px.
        level: Pyramid level to read.
        size_px: Window (width, height) in pixels of ``level``.
        level_size: (width, height) of ``level`` in its own pixels.
        downsample: Downsample of ``level`` relative to level 0.

    Returns:
        uint8 (height, width, 3) RGB.
    """
    w, h = int(size_px[0]), int(size_px[1])
    if w <= 0 or h <= 0:
        raise ValueError(f"read size must be positive, got {size_px}")
    lx, ly = level0_xy[0] / downsample, level0_xy[1] / downsample
    # output column j shows level pixel lx + j; keep the columns whose pixel lies inside the level
    j0, i0 = max(0, math.ceil(-lx)), max(0, math.ceil(-ly))
    j1 = min(w, math.floor(level_size[0] - lx))
    i1 = min(h, math.floor(level_size[1] - ly))
    if (j0, i0, j1, i1) == (0, 0, w, h):
        return composite_on_white(raw_read(level0_xy[0], level0_xy[1], level, w, h))
    out = np.full((h, w, 3), 255, dtype=np.uint8)
    if j1 > j0 and i1 > i0:
        sub = raw_read(
            level0_xy[0] + round(j0 * downsample), level0_xy[1] + round(i0 * downsample), level, j1 - j0, i1 - i0
        )
        out[i0:i1, j0:j1] = composite_on_white(sub)
    return out


def parse_float(value: object) -> float | None:
    """``float(value)`` or None for missing/unparseable/non-finite/non-positive values."""
    if value is None:
        return None
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


class WindowedPyramidReader(SlideReader):
    """Base of backends that read windows of a pyramid through a ``_raw_read`` primitive.

    Subclasses fill ``self._levels`` and ``self._properties`` when they open the file and
    implement ``_raw_read(x, y, level, w, h)``; edge clipping onto white, the level/property
    accessors and the band-streamed thumbnail are shared here.
    """

    _levels: list[LevelInfo]
    _properties: SlideProperties

    @property
    def levels(self) -> list[LevelInfo]:
        """Pyramid levels as the backend reports them (level 0 first)."""
        return self._levels

    @property
    def properties(self) -> SlideProperties:
        """Parsed metadata; ``raw`` holds every property of the backend."""
        return self._properties

    @abc.abstractmethod
    def _raw_read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """In-bounds window of ``level`` at level-0 (x, y): uint8 (h, w, 3 or 4)."""

    def read_region(self, level0_xy: tuple[int, int], level: int, size_px: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) of ``level`` at level-0 origin ``level0_xy``; outside/transparent is white."""
        lv = self._levels[level]
        return read_clipped(self._raw_read, level0_xy, level, size_px, (lv.width, lv.height), lv.downsample)

    def thumbnail(self, max_px: int) -> np.ndarray:
        """Band-streamed thumbnail (bounded memory), longer side ``max_px``."""
        return streamed_thumbnail(self, max_px)
