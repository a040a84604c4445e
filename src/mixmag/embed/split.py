"""Thread policy ``split``: a CPU embeds each batch as small sub-batches on single-threaded workers.

Why: with intra-op threads, every layer of a forward pass ends at a barrier where all threads
meet; when another process takes one of the cores, the pass waits for the descheduled thread at
every layer, and throughput falls far below the fair share (measured in docs/performance.md). Sub-
batches on single-threaded workers share nothing: a descheduled worker delays only its own part.
It also makes the features reproducible: a model's output changes in the last bits with its
intra-op thread count (EfficientNet-Lite0 fp32: up to 7e-6 between 1 and 2 threads) and with the
shape of its batch, not with the values of the other tiles in it; with one thread and a fixed
sub-batch size, the same slides and ``batch_size`` give bit-identical features on a laptop, a
64-core node and a loaded workstation.

torch's intra-op thread count is process-wide: :func:`single_threaded` sets it to 1 for the run
(restored afterwards); each worker thread of the pool then runs its sub-batch on one core, with
the GIL released inside the operators.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from mixmag.encoders import TileEncoder

logger = logging.getLogger(__name__)


#: Tiles per sub-batch. Fixed, not batch / workers: a tile's embedding can change in the last bits
#: with the shape of the batch it is computed in (the kernels chosen depend on it; measured on the
#: tiny test encoders), so sub-batches of one size keep features identical for any worker count.
#: 8 was also the fastest of 4, 8, 16 for EfficientNet-Lite0 on 2 cores (docs/performance.md).
SUB_BATCH_TILES = 8


class SplitForward:
    """Embed a batch of tiles as sub-batches of :data:`SUB_BATCH_TILES`, spread over worker threads.

    Args:
        encoder: The tile encoder (on a CPU).
        workers: Worker threads (the usable cores); 1 runs the sub-batches one after the other.
        sub_batch: Tiles per sub-batch.
    """

    def __init__(self, encoder: TileEncoder, workers: int, sub_batch: int = SUB_BATCH_TILES) -> None:
        self.encoder = encoder
        self.workers = max(1, int(workers))
        self.sub_batch = max(1, int(sub_batch))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mixmag-embed") if self.workers > 1 else None

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)`` uint8 tiles -> ``(B, D)`` embeddings, in the order of ``tiles``."""
        parts = tiles.split(self.sub_batch)
        if self._pool is None or len(parts) < 2:
            return torch.cat([self.encoder.encode(p) for p in parts])
        return torch.cat(list(self._pool.map(self.encoder.encode, parts)))

    def close(self) -> None:
        """Stop the worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """One torch intra-op thread in this process for the ``with`` block (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
