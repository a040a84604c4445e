"""Direct windowed reads of tiled TIFF pyramids: whole tiles decoded by tifffile/imagecodecs, pasted.

Why: for an 896-px region of a JPEG-tiled TIFF, OpenSlide spends about four fifths of its
``read_region`` outside the JPEG decoder (painting tiles through cairo in premultiplied ARGB,
un-premultiplying, then RGBA -> RGB here): 34 ms per region where decoding its 16 tiles takes 7 ms
on this project's CPU (docs/performance.md, "Embedding"). Where OpenSlide's pixels *are* the decoded
tiles (generic tiled TIFF and Aperio SVS, JPEG or lossless compression, a window starting on a whole
pixel of the level), reading the tiles directly returns the same bytes several times faster.
:class:`~mixmag.slides.openslide_reader.OpenSlideReader` uses this path only then, and checks its
first read against OpenSlide's before trusting it.

Reads use ``os.pread`` on one file descriptor (no shared file position) and decoding releases the
GIL, so several threads can read one slide at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# TIFF compression codes whose decoded tiles equal what OpenSlide paints: JPEG (libjpeg-turbo in
# both), and the lossless codecs (any correct decoder gives the same bytes).
_COMPRESSIONS = frozenset({1, 5, 7, 8, 32946})  # none, LZW, JPEG, Adobe deflate, deflate
_PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR = 2, 6
_JPEG = 7
_WHITE = 255  # what a missing (sparse) tile becomes: OpenSlide leaves it transparent -> white here


@dataclass
class _Level:
    """One tiled page: where its tiles are in the file and how to decode one."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    tiles_across: int
    offsets: Sequence[int]
    bytecounts: Sequence[int]
    decode: Callable[..., Any]
    jpegtables: bytes | None


def _supported(page: Any) -> str | None:
    """None when ``page`` can be read tile by tile here, else the reason it cannot."""
    checks = {
        "not tiled": not page.is_tiled,
        "not 8-bit": page.dtype != np.uint8 or page.bitspersample != 8,
        "not 3 samples": page.samplesperpixel != 3,
        "planar layout": page.planarconfig != 1,
        "volumetric tiles": getattr(page, "tiledepth", 1) != 1,
        f"compression {int(page.compression)}": int(page.compression) not in _COMPRESSIONS,
        "colour space": int(page.photometric) not in (_PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR)
        or (int(page.photometric) == _PHOTOMETRIC_YCBCR and int(page.compression) != _JPEG),
    }
    reasons = [k for k, bad in checks.items() if bad]
    return ", ".join(reasons) if reasons else None


class TiffTileReader:
    """Reads windows of the levels of a tiled TIFF pyramid by decoding whole tiles.

    Build it with :meth:`open`, which returns None for files it cannot read exactly.

    Args:
        path: The TIFF/SVS file.
        levels: One entry per pyramid level, level 0 first.
    """

    def __init__(self, path: Path, levels: list[_Level]) -> None:
        self.path = path
        self.levels = levels
        self._fd = os.open(path, os.O_RDONLY)

    @classmethod
    def open(cls, path: str | os.PathLike[str], level_sizes: Sequence[tuple[int, int]]) -> TiffTileReader | None:
        """A reader for ``path`` whose levels have exactly ``level_sizes`` (w, h), or None.

        None (logged at debug level) when the file is not a tiled TIFF pyramid of 8-bit RGB with
        a supported compression, or when its first series' levels do not match ``level_sizes``
        (the levels another backend reports), so the caller keeps its own path.
        """
        import tifffile

        p = Path(path)
        try:
            with tifffile.TiffFile(p) as tif:
                series = tif.series[0]
                pages = [lv.keyframe for lv in series.levels]
                sizes = [(int(pg.imagewidth), int(pg.imagelength)) for pg in pages]
                if sizes != [tuple(s) for s in level_sizes]:
                    logger.debug("%s: TIFF levels %s differ from the reader's %s", p.name, sizes, list(level_sizes))
                    return None
                levels = []
                for pg in pages:
                    reason = _supported(pg)
                    if reason is not None:
                        logger.debug("%s: no direct tile reads (%s)", p.name, reason)
                        return None
                    levels.append(_Level(
                        width=int(pg.imagewidth), height=int(pg.imagelength), tile_w=int(pg.tilewidth),
                        tile_h=int(pg.tilelength), tiles_across=-(-int(pg.imagewidth) // int(pg.tilewidth)),
                        offsets=tuple(pg.dataoffsets), bytecounts=tuple(pg.databytecounts),
                        decode=pg.decode,  # a closure over the page's tags; reentrant, no file access
                        jpegtables=pg.jpegtables,
                    ))
        except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
            logger.debug("%s: not readable as a tiled TIFF (%s)", p.name, exc)
            return None
        return cls(p, levels)

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 (h, w, 3) RGB of ``level`` at level pixel (x, y); the window must lie inside the level."""
        lv = self.levels[level]
        if x < 0 or y < 0 or x + w > lv.width or y + h > lv.height or w <= 0 or h <= 0:
            raise ValueError(f"window ({x}, {y}, {w}, {h}) is not inside level {level} ({lv.width}x{lv.height})")
        out = np.empty((h, w, 3), dtype=np.uint8)
        for ty in range(y // lv.tile_h, (y + h - 1) // lv.tile_h + 1):
            for tx in range(x // lv.tile_w, (x + w - 1) // lv.tile_w + 1):
                tile = self._tile(lv, ty * lv.tiles_across + tx)
                # intersection of the tile (origin tx*tw, ty*th) with the window, in level pixels
                x0, y0 = max(x, tx * lv.tile_w), max(y, ty * lv.tile_h)
                x1, y1 = min(x + w, (tx + 1) * lv.tile_w), min(y + h, (ty + 1) * lv.tile_h)
                dst = out[y0 - y:y1 - y, x0 - x:x1 - x]
                if tile is None:
                    dst[...] = _WHITE
                else:
                    dst[...] = tile[y0 - ty * lv.tile_h:y1 - ty * lv.tile_h, x0 - tx * lv.tile_w:x1 - tx * lv.tile_w]
        return out

    def _tile(self, lv: _Level, index: int) -> np.ndarray | None:
        count = lv.bytecounts[index]
        if not count:
            return None  # sparse TIFF: tile never written
        data = os.pread(self._fd, count, lv.offsets[index])
        segment, _, _ = lv.decode(data, index, jpegtables=lv.jpegtables)
        return segment[0]  # (depth=1, tile_h, tile_w, 3) -> (tile_h, tile_w, 3)

    def close(self) -> None:
        """Close the file descriptor."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
