"""Pixels of linked multi-magnification regions: one read per region, exact target resolutions.

For every region the slide is read **once**, from the pyramid level closest to but not coarser
than the finest target (0.5 µm/px by default), resampled to exactly ``region_px_at_finest`` pixels
(896) with an area filter, and cut into tiles; coarser magnifications are exact integer box
(area) downsamples of those same pixels (2x -> 1.0 µm/px, 4x -> 2.0 µm/px). So the 5x tile is
precisely the average of the 20x pixels it covers, and a region costs one decode.

Resampling filter: ``"box"`` (area average; default) or ``"lanczos"`` (sharper, ~3x slower). The
read level is usually a little finer than the target (0.499 -> 0.5, 0.456 -> 0.5 µm/px), a mild
downscale where an area filter is alias-free and cheapest. The source box is fractional, so the
region's physical extent is exact and no rounding drift accumulates across the grid.
"""

from __future__ import annotations

import logging
import math
from dataclasses import KW_ONLY, dataclass

import numpy as np
from PIL import Image

from mixmag.errors import MixmagValueError
from mixmag.geometry import RegionSpec
from mixmag.io.regions import RegionIndex
from mixmag.slides.base import SlideReader

logger = logging.getLogger(__name__)

RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
}
# Pixels of context read around the region so the filter's support at the region border sees real
# neighbours instead of the read edge (LANCZOS spans 3 source px per side near scale 1).
_MARGIN_PX = {"box": 1, "bilinear": 2, "lanczos": 4}
LEVEL_MPP_TOLERANCE = 1e-3
"""A level up to 0.1 % coarser than the target still counts as "not coarser" (float noise in
downsamples such as 2.000337)."""


@dataclass(frozen=True)
class ReadPlan:
    """How the regions of one slide are read.

    Attributes:
        level: Pyramid level read.
        downsample: That level's downsample relative to level 0.
        read_size_px: Side of the square window read per region, in ``level`` px (margin included).
        achieved_mpps: Target mpp -> µm per output pixel actually produced (from the read geometry).
        level_mpp: Native µm/px of ``level`` (> finest target only when the slide is coarser).
        mpp_level0: Slide level-0 µm/px the plan was made for.
        region_size_level0: Exact region side in level-0 px.
        region_size_at_level: Exact region side in ``level`` px.
        out_px: Side of the finest mosaic (896 by default).
        margin_px: Context read on each side, ``level`` px, when resampling.
        exact: True when the level holds the region at exactly ``out_px`` pixels on an integer
            grid: grid-aligned regions are read at ``out_px`` and used as is, without resampling.
        resample: Resampling filter name.
    """

    level: int
    downsample: float
    read_size_px: int
    achieved_mpps: dict[float, float]
    _: KW_ONLY
    level_mpp: float
    mpp_level0: float
    region_size_level0: float
    region_size_at_level: float
    out_px: int
    margin_px: int
    exact: bool
    resample: str
    finest_mpp: float

    @property
    def upsampled(self) -> bool:
        """True when the slide is coarser than the finest target (pixels are interpolated up)."""
        return self.level_mpp > self.finest_mpp * (1 + LEVEL_MPP_TOLERANCE)

    def window(self, level0_xy: tuple[int, int]) -> tuple[tuple[int, int], int, tuple[float, float, float, float]]:
        """Read window of the region whose top-left is ``level0_xy`` (level-0 px).

        Returns:
            (read origin in level-0 px, read side in ``level`` px, source box
            ``(x0, y0, x1, y1)`` of the region inside the read array, fractional ``level`` px).
        """
        x0, y0 = int(level0_xy[0]), int(level0_xy[1])
        step = round(self.downsample)
        if self.exact and x0 % step == 0 and y0 % step == 0:
            return (x0, y0), self.out_px, (0.0, 0.0, float(self.out_px), float(self.out_px))
        lx, ly = x0 / self.downsample, y0 / self.downsample
        ix, iy = math.floor(lx) - self.margin_px, math.floor(ly) - self.margin_px
        origin = (round(ix * self.downsample), round(iy * self.downsample))
        bx, by = lx - ix, ly - iy
        size = self.region_size_at_level
        read_size = math.ceil(size) + 2 * self.margin_px + 1
        return origin, read_size, (bx, by, bx + size, by + size)


def plan_region_read(
    reader: SlideReader, mpp_level0: float, spec: RegionSpec, resample: str = "box"
) -> ReadPlan:
    """Choose the read level and window geometry for ``spec`` regions on ``reader``'s slide.

    The level is the coarsest one whose resolution is still at least as fine as
    ``spec.finest_mpp`` (within :data:`LEVEL_MPP_TOLERANCE`); a slide coarser than the target is
    read at level 0 and upsampled, with a warning.

    Args:
        reader: Open slide.
        mpp_level0: Resolved level-0 µm/px.
        spec: Region geometry.
        resample: Filter name in :data:`RESAMPLE_FILTERS`.
    """
    if resample not in RESAMPLE_FILTERS:
        raise MixmagValueError(f"unknown resample filter {resample!r}; choose one of {sorted(RESAMPLE_FILTERS)}")
    finest = spec.finest_mpp
    levels = reader.levels
    fine_enough = [
        i for i, lv in enumerate(levels) if mpp_level0 * lv.downsample <= finest * (1 + LEVEL_MPP_TOLERANCE)
    ]
    level = max(fine_enough, key=lambda i: levels[i].downsample) if fine_enough else 0
    downsample = float(levels[level].downsample)
    level_mpp = mpp_level0 * downsample
    if not fine_enough:
        logger.warning(
            "%s: slide resolution %.4g µm/px is coarser than the finest target %.4g µm/px; "
            "tiles are upsampled %.2fx (recorded as read_mpp)", reader.path.name, level_mpp, finest, level_mpp / finest,
        )
    out_px = spec.region_px_at_finest
    region_level0 = spec.region_size_level0(mpp_level0)
    region_at_level = region_level0 / downsample
    # Exact path: integer downsample and a whole region of exactly out_px level pixels, so every
    # region origin (a multiple of region_level0) lands on a level pixel and no resampling is needed.
    exact = (
        math.isclose(downsample, round(downsample), abs_tol=1e-9)
        and math.isclose(region_level0, round(region_level0), abs_tol=1e-6)
        and math.isclose(region_at_level, out_px, abs_tol=1e-6)
    )
    margin = _MARGIN_PX[resample]
    read_size = out_px if exact else math.ceil(region_at_level) + 2 * margin + 1
    achieved = {
        mpp: region_at_level * level_mpp / (spec.tiles_per_side(mpp) * spec.tile_px) for mpp in spec.mpps
    }
    return ReadPlan(
        level=level, downsample=downsample, read_size_px=read_size, achieved_mpps=achieved,
        level_mpp=level_mpp, mpp_level0=mpp_level0, region_size_level0=region_level0,
        region_size_at_level=region_at_level, out_px=out_px, margin_px=margin, exact=exact,
        resample=resample, finest_mpp=finest,
    )


def cut_tiles(mosaic: np.ndarray, spec: RegionSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Cut a finest-resolution region mosaic into the tiles of every magnification.

    Args:
        mosaic: uint8 (P, P, 3), P = ``spec.region_px_at_finest`` (896), at ``spec.finest_mpp``.
        spec: Region geometry.
        out: Optional uint8 (T, tile_px, tile_px, 3) buffer to fill (e.g. one slot of a batch),
            which saves an allocation and a later copy.

    Returns:
        uint8 (T, tile_px, tile_px, 3) in token order (coarsest magnification first, row-major).
        A tile at ``mpp`` is the exact ``mpp / finest`` integer box average of the mosaic (rounded).
    """
    side = spec.region_px_at_finest
    if mosaic.shape != (side, side, 3) or mosaic.dtype != np.uint8:
        raise ValueError(f"mosaic must be uint8 ({side}, {side}, 3), got {mosaic.dtype} {mosaic.shape}")
    return _cut_tiles(mosaic, spec, None, out)


def _cut_tiles(
    mosaic: np.ndarray, spec: RegionSpec, image: Image.Image | None, out: np.ndarray | None = None
) -> np.ndarray:
    """:func:`cut_tiles` reusing ``image`` (the same pixels as a PIL image) when the caller has it."""
    tp = spec.tile_px
    shape = (spec.n_tokens, tp, tp, 3)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {shape}, got {out.dtype} {out.shape}")
    for mpp, sl in spec.token_slices().items():
        factor = spec.downsample_from_finest(mpp)
        if factor == 1:
            level = mosaic
        else:
            if image is None:
                image = Image.fromarray(mosaic)
            level = np.asarray(image.reduce(factor))  # exact box average (rounded), C implementation
        n = spec.tiles_per_side(mpp)
        # (n*tp, n*tp, 3) -> (n, tp, n, tp, 3) -> (row, col, y, x, c): row-major tiles, copied
        # straight into the output without a temporary
        out[sl].reshape(n, n, tp, tp, 3)[...] = level.reshape(n, tp, n, tp, 3).transpose(0, 2, 1, 3, 4)
    return out


class RegionTileReader:
    """Read the pixels of the regions of a :class:`RegionIndex` from an open slide.

    Args:
        reader: The slide the index was made from (any backend).
        index: Region index (uses ``index.mpp_level0`` and ``index.spec``).
        resample: Resampling filter (see module docstring).
    """

    def __init__(self, reader: SlideReader, index: RegionIndex, resample: str = "box") -> None:
        self.reader = reader
        self.index = index
        self.spec = index.spec
        self.plan = plan_region_read(reader, index.mpp_level0, index.spec, resample)
        self._filter = RESAMPLE_FILTERS[resample]

    @property
    def n_regions(self) -> int:
        """Number of regions in the index."""
        return self.index.n_regions

    def _mosaic(self, region: int) -> tuple[np.ndarray, Image.Image | None]:
        x0, y0 = (int(v) for v in self.index.coords[region])
        origin, size, box = self.plan.window((x0, y0))
        pixels = self.reader.read_region(origin, self.plan.level, (size, size))
        out = self.plan.out_px
        if size == out and box == (0.0, 0.0, float(out), float(out)):
            return pixels, None  # exact path: the level already has the target resolution and alignment
        image = Image.fromarray(pixels).resize((out, out), self._filter, box=box)
        return np.asarray(image), image

    def read_region_mosaic(self, region: int) -> np.ndarray:
        """uint8 (P, P, 3) pixels of region ``region`` at exactly the finest target mpp (P = 896)."""
        return self._mosaic(region)[0]

    def read_region_tiles(self, region: int, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 (T, tile_px, tile_px, 3) tiles of region ``region`` in token order.

        Args:
            region: Row of the index.
            out: Optional buffer of that shape to fill instead of allocating (see :func:`cut_tiles`).
        """
        mosaic, image = self._mosaic(region)
        return _cut_tiles(mosaic, self.spec, image, out)
