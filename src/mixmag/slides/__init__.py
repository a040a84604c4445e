"""Whole-slide image readers, exact resolution (mpp) resolution, and tissue detection.

Importing this package registers every built-in backend in :data:`READERS` (``openslide``,
``tiffslide``, ``image``); the backends import their third-party libraries lazily.
"""

from __future__ import annotations

from mixmag.slides import image_reader, openslide_reader, tiffslide_reader  # noqa: F401  (register)
from mixmag.slides.base import (
    READERS,
    LevelInfo,
    MppError,
    MppInfo,
    ReaderMeta,
    SlideError,
    SlideProperties,
    SlideReader,
)
from mixmag.slides.mpp import MPP_RANGE, resolve_mpp
from mixmag.slides.opener import open_slide

__all__ = [
    "MPP_RANGE",
    "READERS",
    "LevelInfo",
    "MppError",
    "MppInfo",
    "ReaderMeta",
    "SlideError",
    "SlideProperties",
    "SlideReader",
    "open_slide",
    "resolve_mpp",
]
