"""The ``SlideReader`` contract and the reader registry.

Every backend (OpenSlide, tiffslide, plain images) implements :class:`SlideReader`. Readers are
picked by explicit name or by trying the registered backends in priority order for a file's
extension (see :func:`mixmag.slides.open_slide`), never through an if/elif chain.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mixmag.errors import MixmagRuntimeError
from mixmag.registry import Registry


class SlideError(MixmagRuntimeError):
    """A slide cannot be opened or read; the message says what is wrong and what to do."""


class MppError(SlideError):
    """A slide's resolution is missing or implausible; the message names the override to use."""


@dataclass(frozen=True)
class ReaderMeta:
    """Registry metadata of a slide-reader backend.

    Attributes:
        extensions: Lower-case file suffixes the backend claims (".svs", ".tiff" ...).
        priority: Lower tries first among backends claiming an extension.
        package: pip package providing the backend (for "install X" hints).
        description: One line for ``mixmag list readers``.
    """

    extensions: tuple[str, ...]
    priority: int
    package: str
    description: str


@dataclass(frozen=True)
class MppInfo:
    """Resolved level-0 resolution and where it came from.

    Attributes:
        mpp: Level-0 µm/px (x and y assumed equal; ``mpp_y`` records y when they differ).
        source: "override", "vendor-metadata", "tiff-resolution-tags", "objective-power".
        mpp_y: y resolution when reported separately.
    """

    mpp: float
    source: str
    mpp_y: float | None = None


@dataclass(frozen=True)
class LevelInfo:
    """One pyramid level: size in its own pixels and downsample relative to level 0."""

    width: int
    height: int
    downsample: float


@dataclass
class SlideProperties:
    """Metadata read from the file, before mpp resolution (raw values may be None)."""

    vendor: str | None = None
    objective_power: float | None = None
    metadata_mpp: tuple[float, float] | None = None  # (x, y) from vendor metadata
    tiff_mpp: tuple[float, float] | None = None  # (x, y) from TIFF resolution tags
    raw: dict[str, Any] = field(default_factory=dict)


class SlideReader(abc.ABC):
    """Read access to one slide in level-0 coordinates.

    Subclasses set :attr:`name` (registry key) and implement the abstract methods. Coordinates are
    level-0 pixels ``(x, y)``, top-left; returned arrays are ``uint8 (H, W, 3)`` RGB, indexed
    ``[row=y, col=x]``, with transparent/outside-slide pixels composited onto white.
    """

    name: ClassVar[str] = ""
    #: True when :meth:`read_region` may run on several threads at once on one open reader
    #: (the embedding engine then decodes a chunk's regions in parallel through one handle and one
    #: tile cache instead of opening the slide once per thread).
    thread_safe_reads: ClassVar[bool] = False

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def is_available(cls) -> bool:
        """Whether the backend's third-party package can be imported (checked before opening)."""
        return True

    @property
    @abc.abstractmethod
    def levels(self) -> list[LevelInfo]:
        """Pyramid levels, level 0 first."""

    @property
    @abc.abstractmethod
    def properties(self) -> SlideProperties:
        """Vendor, objective power, metadata/TIFF mpp and the raw property dict."""

    @abc.abstractmethod
    def read_region(self, level0_xy: tuple[int, int], level: int, size_px: tuple[int, int]) -> np.ndarray:
        """Read ``size_px`` = (w, h) pixels of ``level`` whose top-left is ``level0_xy`` in level-0 px.

        Returns:
            uint8 (h, w, 3) RGB. Parts outside the slide are white.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release file handles."""

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        lv = self.levels[0]
        return lv.width, lv.height

    def thumbnail(self, max_px: int) -> np.ndarray:
        """RGB uint8 thumbnail whose longer side is <= ``max_px``, read from the coarsest adequate level.

        The default implementation reads the smallest level that is still >= the requested size and
        area-resizes it; backends may override with a faster native path.
        """
        from PIL import Image

        w0, h0 = self.dimensions
        scale = max_px / max(w0, h0)
        target = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
        candidates = [i for i, lv in enumerate(self.levels) if lv.width >= target[0] and lv.height >= target[1]]
        level = max(candidates, key=lambda i: self.levels[i].downsample) if candidates else 0
        lv = self.levels[level]
        img = self.read_region((0, 0), level, (lv.width, lv.height))
        return np.asarray(Image.fromarray(img).resize(target, Image.Resampling.BOX))

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


READERS: Registry[type[SlideReader]] = Registry("slide reader", entry_point_group="mixmag.readers")
