"""Give freed heap memory back to the OS during long inference loops (glibc only; no-op elsewhere).

Why: with tile batches arriving from DataLoader worker processes, glibc keeps freed multi-MB
buffers in the heap, and a long ``embed`` run's RSS creeps up (measured ~0.5 MB per region). The
earlier fix, pinning ``M_MMAP_THRESHOLD`` at 128 KiB, kept RSS flat but turned every mid-size
tensor into an mmap/munmap pair: half the throughput for a ViT-S on a CPU, 36 s of system time
per 1,365 tiles, and a slower process for whatever ran after (docs/performance.md, "Embedding").
An occasional ``malloc_trim(0)`` keeps RSS flat at no measurable cost.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)


def _glibc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  (musl has no malloc_trim: AttributeError)
    except (OSError, AttributeError):
        logger.debug("glibc malloc_trim unavailable; heap trimming disabled")
        return None
    return libc


class HeapTrimmer:
    """Call ``malloc_trim(0)`` on every ``every``-th :meth:`tick`.

    Args:
        every: Ticks (e.g. model batches) between trims; 8 batches of 32 tiles cost nothing
            measurable and keep RSS flat.
    """

    def __init__(self, every: int = 8) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.ticks = 0
        self.trims = 0
        self._libc = _glibc()

    @property
    def active(self) -> bool:
        """Whether trimming works on this platform."""
        return self._libc is not None

    def tick(self) -> None:
        """Count one unit of work; trim the heap when ``every`` have passed."""
        self.ticks += 1
        if self._libc is not None and self.ticks % self.every == 0:
            self._libc.malloc_trim(0)
            self.trims += 1
