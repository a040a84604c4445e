"""Work sharing between the DataLoader workers of one process: slides, then chunks of open slides.

A worker first helps with slides already open (takes the next unread chunk of regions); only when
none has chunks left does it open a new slide (resume check, claim, ``SlideStart``) and publish its
chunks. So all workers decode the same large slide in parallel (the GPU is not starved on a
one-slide cohort), few slides are open at once (bounded memory, few open feature files), and each
slide is examined by one worker only. State lives in shared memory created before the workers fork.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

UNVISITED, PREPARING, OPEN, CLOSED = 0, 1, 2, 3


class SlideWorkQueue:
    """Cross-worker state: per-slide status and chunk cursors, plus slots of published slides.

    Args:
        n_jobs: Slides in the run.
        n_slots: Slides that can be published at once (>= number of workers + 1).
    """

    def __init__(self, n_jobs: int, n_slots: int) -> None:
        ctx = mp.get_context()
        self._lock = ctx.Lock()
        self._state: Any = ctx.Array("b", max(1, n_jobs), lock=False)
        self._next: Any = ctx.Array("i", max(1, n_jobs), lock=False)
        self._n_chunks: Any = ctx.Array("i", max(1, n_jobs), lock=False)
        self._slots: Any = ctx.Array("i", [-1] * max(1, n_slots), lock=False)
        self._preparing: Any = ctx.Value("i", 0, lock=False)

    def take_slide(self, j: int) -> bool:
        """Mark slide ``j`` as being prepared by the caller; False if another worker has it."""
        with self._lock:
            if self._state[j] != UNVISITED:
                return False
            self._state[j] = PREPARING
            self._preparing.value += 1
            return True

    def open(self, j: int, n_chunks: int) -> bool:
        """Publish the ``n_chunks`` chunks of slide ``j``; False if no slot is free (caller reads them)."""
        with self._lock:
            self._preparing.value -= 1
            self._state[j] = OPEN if n_chunks else CLOSED
            self._n_chunks[j] = n_chunks
            self._next[j] = 0
            if not n_chunks:
                return True
            for s in range(len(self._slots)):
                if self._slots[s] == -1:
                    self._slots[s] = j
                    return True
            return False

    def close(self, j: int) -> None:
        """Slide ``j`` is finished here (skipped, failed): no more chunks are handed out."""
        with self._lock:
            if self._state[j] == PREPARING:
                self._preparing.value -= 1
            self._state[j] = CLOSED
            for s in range(len(self._slots)):
                if self._slots[s] == j:
                    self._slots[s] = -1

    def take_chunk(self, only: int | None = None) -> tuple[int, int] | None:
        """Next ``(slide, chunk)`` of a published slide (or of slide ``only``), None if none is left."""
        with self._lock:
            candidates = [only] if only is not None else [j for j in self._slots if j != -1]
            for j in candidates:
                if self._state[j] != OPEN or self._next[j] >= self._n_chunks[j]:
                    continue
                c = self._next[j]
                self._next[j] = c + 1
                if c + 1 == self._n_chunks[j]:  # last chunk handed out: free the slot
                    for s in range(len(self._slots)):
                        if self._slots[s] == j:
                            self._slots[s] = -1
                return j, c
            return None

    def preparing(self) -> int:
        """Slides currently being prepared (their chunks may be published soon)."""
        with self._lock:
            return int(self._preparing.value)
