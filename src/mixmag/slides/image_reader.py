"""Plain-image backend (PIL): PNG and JPEG crops, TMA cores, screenshots of tissue.

Such files carry no trustworthy resolution (PNG/JPEG density fields hold 72/96-dpi defaults), so
the reader reports none and :func:`~mixmag.slides.resolve_mpp` requires an explicit ``--mpp``.
The image is decoded once, on the first read, and kept in memory (plain images are small).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import numpy as np
from PIL import Image

from mixmag.slides._common import composite_on_white, read_clipped
from mixmag.slides.base import (
    READERS,
    LevelInfo,
    ReaderMeta,
    SlideError,
    SlideProperties,
    SlideReader,
)
from mixmag.slides.thumbnail import streamed_thumbnail

MAX_IMAGE_PIXELS = 2_000_000_000
"""Largest plain image accepted (~6 GB decoded); bigger images belong in a pyramidal TIFF."""


@contextlib.contextmanager
def _allow_large_images() -> Iterator[None]:
    # PIL refuses images above ~179 MP as "decompression bombs"; slides legitimately exceed that.
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


@READERS.register(
    "image",
    ReaderMeta(
        extensions=(".png", ".jpg", ".jpeg"),
        priority=30,
        package="pillow",
        description="Plain PNG/JPEG via PIL (single level, no mpp in the file: pass --mpp)",
    ),
)
class ImageReader(SlideReader):
    """Single-level reader for plain images.

    Args:
        path: PNG or JPEG file.
    """

    name = "image"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        with _allow_large_images(), Image.open(self.path) as img:  # reads the header only
            self._size = (int(img.width), int(img.height))
            self._format = img.format
            self._mode = img.mode
        if self._size[0] * self._size[1] > MAX_IMAGE_PIXELS:
            raise SlideError(
                f"{self.path.name}: {self._size[0]}x{self._size[1]} px is too large for a plain image; "
                "convert it to a tiled pyramidal TIFF (e.g. with vips tiffsave --tile --pyramid)"
            )
        self._pixels: np.ndarray | None = None

    @classmethod
    def is_available(cls) -> bool:
        """True when Pillow is importable (always, it is a core dependency)."""
        return importlib.util.find_spec("PIL") is not None

    def _load(self) -> np.ndarray:
        if self._pixels is None:
            try:
                with _allow_large_images(), Image.open(self.path) as img:
                    img.draft("RGB", img.size)  # no-op for PNG; avoids a YCbCr round trip for JPEG
                    rgba = img.convert("RGBA") if "A" in img.getbands() or img.mode == "P" else img.convert("RGB")
                    self._pixels = composite_on_white(np.asarray(rgba))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise SlideError(f"{self.path.name}: PIL could not decode the image: {exc}") from exc
        return self._pixels

    @property
    def levels(self) -> list[LevelInfo]:
        """One level: the image itself."""
        return [LevelInfo(width=self._size[0], height=self._size[1], downsample=1.0)]

    @property
    def properties(self) -> SlideProperties:
        """No vendor, objective or resolution (plain images need an mpp override)."""
        return SlideProperties(vendor=None, raw={"format": self._format, "mode": self._mode})

    def _raw_read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        return self._load()[y : y + h, x : x + w]

    def read_region(self, level0_xy: tuple[int, int], level: int, size_px: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) crop; outside the image is white. Only level 0 exists."""
        if level != 0:
            raise SlideError(f"{self.path.name}: plain images have only level 0, got level {level}")
        return read_clipped(self._raw_read, level0_xy, 0, size_px, self._size, 1.0)

    def thumbnail(self, max_px: int) -> np.ndarray:
        """Area-resized thumbnail, longer side ``max_px``."""
        return streamed_thumbnail(self, max_px)

    def close(self) -> None:
        """Drop the decoded pixels."""
        self._pixels = None
