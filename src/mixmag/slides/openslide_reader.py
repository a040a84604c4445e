"""OpenSlide backend (default): Aperio, Hamamatsu, MIRAX, Leica, Philips, Ventana, DICOM, generic TIFF.

Uses the ``openslide-python`` + ``openslide-bin`` wheels, so no system package is needed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

import numpy as np

from mixmag.slides._common import WindowedPyramidReader, composite_on_white, parse_float
from mixmag.slides.base import (
    READERS,
    LevelInfo,
    ReaderMeta,
    SlideError,
    SlideProperties,
)
from mixmag.slides.mpp import mpp_from_resolution
from mixmag.slides.tiff_tiles import TiffTileReader

logger = logging.getLogger(__name__)

# OpenSlide derives openslide.mpp-* of "generic-tiff" slides from the TIFF resolution tags; we
# attribute those values to the tags so `mixmag info` reports the true source.
_TAG_DERIVED_VENDORS = frozenset({"generic-tiff"})
# Formats whose OpenSlide pixels are exactly the decoded TIFF tiles (no overlaps, no vendor
# compositing), so whole-pixel windows can be read by decoding the tiles directly (tiff_tiles.py).
_DIRECT_TILE_VENDORS = frozenset({"generic-tiff", "aperio"})
# Side of the window compared with OpenSlide before the direct path is trusted for a slide.
_SELF_CHECK_PX = 96


@READERS.register(
    "openslide",
    ReaderMeta(
        extensions=(".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm"),
        priority=10,
        package="openslide-python openslide-bin",
        description="OpenSlide 4 (vendor formats and tiled pyramidal TIFF); default backend",
    ),
)
class OpenSlideReader(WindowedPyramidReader):
    """Slide reader backed by OpenSlide.

    Args:
        path: Slide file (for MIRAX, the ``.mrxs`` file next to its data folder).
    """

    name = "openslide"
    # OpenSlide handles are documented thread-safe; ctypes releases the GIL during the C read.
    thread_safe_reads = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        import openslide

        self._errors: tuple[type[BaseException], ...] = (openslide.OpenSlideError,)
        self._slide = openslide.OpenSlide(str(self.path))
        self._levels = [
            LevelInfo(width=int(w), height=int(h), downsample=float(d))
            for (w, h), d in zip(self._slide.level_dimensions, self._slide.level_downsamples, strict=True)
        ]
        self._properties = self._parse_properties(dict(self._slide.properties))
        self._direct: TiffTileReader | None = None
        if self._properties.vendor in _DIRECT_TILE_VENDORS:
            self._direct = self._verified_direct_reader()

    @classmethod
    def is_available(cls) -> bool:
        """True when ``openslide-python`` (and hence its library) can be imported."""
        return importlib.util.find_spec("openslide") is not None

    @staticmethod
    def _parse_properties(raw: dict[str, Any]) -> SlideProperties:
        vendor = raw.get("openslide.vendor")
        mpp_x, mpp_y = parse_float(raw.get("openslide.mpp-x")), parse_float(raw.get("openslide.mpp-y"))
        metadata_mpp = None
        if mpp_x is not None and vendor not in _TAG_DERIVED_VENDORS:
            metadata_mpp = (mpp_x, mpp_y if mpp_y is not None else mpp_x)
        return SlideProperties(
            vendor=vendor,
            objective_power=parse_float(raw.get("openslide.objective-power")),
            metadata_mpp=metadata_mpp,
            tiff_mpp=mpp_from_resolution(
                raw.get("tiff.XResolution"), raw.get("tiff.YResolution"), raw.get("tiff.ResolutionUnit")
            ),
            raw=raw,
        )

    def _raw_read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        direct = self._direct_window(x, y, level)
        if direct is not None:
            return self._direct_read(level, direct[0], direct[1], w, h)
        return self._openslide_read(x, y, level, w, h)

    def _direct_window(self, x: int, y: int, level: int) -> tuple[int, int] | None:
        """Level pixel of level-0 (x, y) when the direct tile path may serve this read, else None."""
        if self._direct is None:
            return None
        ds = self._levels[level].downsample
        step = round(ds)
        # only where OpenSlide's window starts on a whole pixel of the level: level 0, or an
        # integer downsample and an origin on its grid (fractional origins are resampled there)
        if abs(ds - step) > 1e-9 or x % step or y % step:
            return None
        return x // step, y // step

    def _direct_read(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        assert self._direct is not None
        try:
            return self._direct.read(level, lx, ly, w, h)
        except Exception as exc:  # a corrupt tile: same error contract as OpenSlide's path
            raise SlideError(f"{self.path.name}: cannot decode level {level} at level px ({lx}, {ly}), size "
                             f"{w}x{h}: {type(exc).__name__}: {exc}. The file is probably truncated or corrupt.") from exc

    def _verified_direct_reader(self) -> TiffTileReader | None:
        """The direct tile reader, if the file allows it and it reproduces OpenSlide's bytes.

        Trust, but verify once per slide: a window of level 0 centred on the tile corner nearest
        the image centre (so it spans up to four tiles) is read both ways at open time; any
        difference keeps this slide on OpenSlide.
        """
        direct = TiffTileReader.open(self.path, [(lv.width, lv.height) for lv in self._levels])
        if direct is None:
            return None
        lv0, tiles = self._levels[0], direct.levels[0]
        side_w, side_h = min(_SELF_CHECK_PX, lv0.width), min(_SELF_CHECK_PX, lv0.height)
        corner_x = round(lv0.width / 2 / tiles.tile_w) * tiles.tile_w
        corner_y = round(lv0.height / 2 / tiles.tile_h) * tiles.tile_h
        x = min(max(0, corner_x - side_w // 2), lv0.width - side_w)
        y = min(max(0, corner_y - side_h // 2), lv0.height - side_h)
        try:
            same = np.array_equal(direct.read(0, x, y, side_w, side_h),
                                  composite_on_white(self._openslide_read(x, y, 0, side_w, side_h)))
        except Exception as exc:  # noqa: BLE001 - any failure just means: use OpenSlide
            logger.debug("%s: direct tile read failed (%s)", self.path.name, exc)
            same = False
        if not same:
            logger.info("%s: direct TIFF tile reads differ from OpenSlide's; reading through OpenSlide", self.path.name)
            direct.close()
            return None
        return direct

    def _openslide_read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        try:
            image = self._slide.read_region((int(x), int(y)), level, (w, h))
            # Opaque windows (the usual case) convert to RGB in C: ~3x cheaper than numpy RGBA slicing.
            if image.getchannel("A").getextrema() == (255, 255):
                return np.asarray(image.convert("RGB"))
            return np.asarray(image)  # transparent parts: composited onto white by the caller
        except self._errors as exc:
            raise SlideError(
                f"{self.path.name}: OpenSlide could not read level {level} at level-0 ({x}, {y}), "
                f"size {w}x{h}: {exc}. The file is probably truncated or corrupt."
            ) from exc

    def close(self) -> None:
        """Close the OpenSlide handle (and the direct tile reader's file)."""
        if self._direct is not None:
            self._direct.close()
        self._slide.close()
