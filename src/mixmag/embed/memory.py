"""In-memory embedding of one slide's regions: the model side of ``embed_slides`` without files.

:func:`embed_region_tiles` runs a :class:`~mixmag.encoders.TileEncoder` over the tiles of every
region of a :class:`~mixmag.io.regions.RegionIndex`, read by a
:class:`~mixmag.tiling.extract.RegionTileReader` on the open slide (or any object with its
``read_region_tiles``), and returns the (R, T, D) embeddings. Precision follows ``embed_slides``: ``"auto"`` keeps reduced precision only when it
reproduces fp32 on the first tiles (the same check), any other value is final and the weights are
stored in it once. Decoding runs in this process, one region at a time, between forward passes.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from mixmag.embed.core import _check_precision
from mixmag.encoders import TileEncoder
from mixmag.errors import MixmagValueError
from mixmag.io.h5common import FormatError
from mixmag.io.regions import RegionIndex

logger = logging.getLogger(__name__)


class RegionTiles(Protocol):
    """Anything that reads the tiles of region ``r``: uint8 (T, px, px, 3) in token order."""

    def read_region_tiles(self, region: int) -> np.ndarray: ...  # noqa: D102


def embed_region_tiles(index: RegionIndex, tiles: RegionTiles, encoder: TileEncoder, *, batch_size: int = 32,
                       precision: str = "auto", progress: bool = False) -> np.ndarray:
    """Embed every tile (all magnifications, same model) of every region of ``index``, in memory.

    Args:
        index: The regions (R) and their layout (T tokens per region).
        tiles: Reads the uint8 (T, px, px, 3) tiles of region ``r`` in token order, e.g. a
            :class:`~mixmag.tiling.extract.RegionTileReader` on the open slide.
        encoder: The tile encoder (eval mode, on its device).
        batch_size: Tiles per forward pass (tiles of consecutive regions are mixed).
        precision: The precision ``encoder`` was built with: ``"auto"`` checks its reduced
            precision against fp32 on the first batch (as ``embed_slides`` does); any other value
            casts the Linear/Conv weights to it once.
        progress: Show a progress bar over tiles.

    Returns:
        float32 (R, T, D) tile embeddings, D = ``encoder.embed_dim``.

    Raises:
        FormatError: The encoder produced NaN/inf embeddings.
    """
    if batch_size < 1:
        raise MixmagValueError("batch_size must be >= 1")
    n_regions, n_tokens, dim = index.n_regions, index.spec.n_tokens, encoder.embed_dim
    out = np.empty((n_regions * n_tokens, dim), dtype=np.float32)
    check = precision == "auto"
    if not check:
        encoder.cast_weights_for_autocast()  # final precision: store the weights in it (bit-identical)
    pending: list[np.ndarray] = []  # tiles read but not embedded yet, in order
    n_pending = done = 0
    bar = tqdm(total=n_regions * n_tokens, unit="tile", disable=not progress, desc=f"embed {encoder.meta.key}")

    def run(n: int) -> None:
        nonlocal pending, n_pending, done, check
        flat = np.concatenate(pending) if len(pending) > 1 else pending[0]
        batch, rest = flat[:n], flat[n:]
        pending, n_pending = ([rest] if len(rest) else []), len(rest)
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if check:
            emb, check = _check_precision(encoder, x), False
        else:
            emb = encoder.encode(x)
        out[done:done + n] = emb.cpu().numpy()
        done += n
        bar.update(n)

    try:
        for region in range(n_regions):
            pending.append(tiles.read_region_tiles(region))
            n_pending += n_tokens
            while n_pending >= batch_size:
                run(batch_size)
        while n_pending:
            run(min(batch_size, n_pending))
    finally:
        bar.close()
    if not np.isfinite(out).all():
        raise FormatError(f"encoder {encoder.meta.key} produced NaN/inf embeddings for slide "
                          f"{index.slide_id or '?'}; check the weights and precision (try precision='fp32')")
    logger.info("embedded %d regions (%d tiles) with %s in %s", n_regions, n_regions * n_tokens,
                encoder.meta.key, encoder.precision)
    return out.reshape(n_regions, n_tokens, dim)
