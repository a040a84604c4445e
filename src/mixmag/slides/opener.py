"""Choose a reader backend for a file: by explicit name, else by extension and priority.

Backends claiming a file's extension are tried in ascending :attr:`ReaderMeta.priority` (OpenSlide
first, tiffslide as the fallback for TIFFs OpenSlide refuses). The first one that opens the file
and reports a sane level 0 wins; when none does, one :class:`SlideError` names the file, every
backend tried and its error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mixmag.slides.base import READERS, SlideError, SlideReader

logger = logging.getLogger(__name__)

# Multi-part suffixes matched before the plain suffix (".ome.tiff" is claimed via ".tiff").
_COMPOUND_SUFFIXES = (".ome.tiff", ".ome.tif")


def slide_suffix(path: str | os.PathLike[str]) -> str:
    """Lower-case extension used for backend matching (``.ome.tiff`` counts as ``.tiff``)."""
    return Path(path).suffix.lower()


def known_extensions() -> list[str]:
    """Every extension claimed by a registered backend, sorted."""
    return sorted({ext for key in READERS for ext in READERS.meta(key).extensions})


def slide_stem(path: str | os.PathLike[str]) -> str:
    """File name without its slide extension (``a.ome.tiff`` -> ``a``)."""
    name = Path(path).name
    for compound in _COMPOUND_SUFFIXES:
        if name.lower().endswith(compound):
            return name[: -len(compound)]
    return Path(name).stem


def candidate_readers(path: str | os.PathLike[str]) -> list[str]:
    """Registry keys of the backends claiming ``path``'s extension, in priority order."""
    suffix = slide_suffix(path)
    keys = [k for k in READERS if suffix in READERS.meta(k).extensions]
    return sorted(keys, key=lambda k: (READERS.meta(k).priority, k))


def _open_with(key: str, path: Path) -> SlideReader:
    cls = READERS.get(key)
    if not cls.is_available():
        raise SlideError(f"backend not installed (pip install {READERS.meta(key).package})")
    reader = cls(path)
    try:
        w, h = reader.dimensions
        if w <= 0 or h <= 0:
            raise SlideError(f"level 0 has no pixels ({w}x{h})")
    except BaseException:
        reader.close()
        raise
    return reader


def open_slide(path: str | os.PathLike[str], reader: str | None = None) -> SlideReader:
    """Open a slide with the named backend, or the first backend (by priority) that accepts it.

    Args:
        path: Slide file.
        reader: Registry key (``"openslide"``, ``"tiffslide"``, ``"image"`` ...) or None to choose by
            extension.

    Returns:
        An open :class:`SlideReader` (use it as a context manager to close it).

    Raises:
        SlideError: The file is missing or empty, no backend claims its extension, or every backend
            tried failed (the message lists each backend's error).
        KeyError: ``reader`` is not a registered backend (lists close matches).
    """
    p = Path(path)
    if not p.exists():
        raise SlideError(f"{p}: file not found")
    if p.is_file() and p.stat().st_size == 0:
        raise SlideError(f"{p}: the file is empty (0 bytes); re-copy or re-export the slide")
    if reader is not None:
        READERS.entry(reader)  # raises KeyError with close matches for a typo
        keys = [reader]
    else:
        keys = candidate_readers(p)
        if not keys:
            raise SlideError(
                f"{p}: no slide reader handles '{slide_suffix(p) or '(no extension)'}' files; supported: "
                f"{', '.join(known_extensions())}. Pass --reader NAME to force a backend."
            )
    errors: list[str] = []
    for key in keys:
        try:
            slide = _open_with(key, p)
        except Exception as exc:  # any backend failure is reported, then the next backend is tried
            errors.append(f"{key}: {type(exc).__name__}: {exc}")
            logger.debug("%s could not open %s: %s", key, p, exc)
            continue
        if errors:
            logger.info("%s: opened with %s after %s", p.name, key, "; ".join(errors))
        return slide
    raise SlideError(
        f"{p}: cannot be opened as a slide (tried {', '.join(keys)}): {' | '.join(errors)}. "
        "The file may be corrupt, truncated or not an image: copy or export it again."
    )
