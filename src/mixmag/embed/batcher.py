"""Model side of the extraction engine: batch tiles across regions and slides, write feature files.

:class:`TileBatcher` receives the worker messages of :mod:`mixmag.embed.dataset`, keeps a FIFO of
tile chunks, runs the encoder whenever ``batch_size`` tiles are queued (a batch may mix regions and
slides), scatters the embeddings back into per-chunk buffers and writes each finished chunk to its
slide's :class:`~mixmag.io.features.FeatureWriter`. A slide's file is renamed into place only when
all its regions are written; failures abort that slide's temp file and nothing else.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mixmag._version import __version__
from mixmag.embed.claims import ClaimBoard
from mixmag.embed.dataset import Message, SlideFailed, SlideSkip, SlideStart, TileChunk
from mixmag.embed.errors import SlideEmbeddingError
from mixmag.embed.jobs import EmbedJob
from mixmag.encoders import TileEncoder
from mixmag.io.features import FeatureWriter
from mixmag.io.h5common import FormatError
from mixmag.io.manifest import Manifest, Status

logger = logging.getLogger(__name__)


@dataclass
class _Chunk:
    job: int
    start: int
    n_regions: int
    tiles: torch.Tensor  # uint8 (n * T, px, px, 3)
    out: np.ndarray  # float32 (n * T, D), filled batch by batch
    taken: int = 0  # tiles handed to the model so far
    done: int = 0  # tiles whose embeddings are back


@dataclass
class _Slide:
    job: EmbedJob
    writer: FeatureWriter
    n_tokens: int
    n_regions: int
    t0: float = field(default_factory=time.perf_counter)
    written_regions: int = 0
    failed: bool = False


class TileBatcher:
    """Batches tiles through an encoder and streams results into per-slide feature files.

    Args:
        encoder: The tile encoder (eval mode, on its device).
        batch_size: Tiles per forward pass.
        manifest: The run's manifest (one row per slide).
        claims: Claim board (claims are refreshed while writing and released when done).
        jobs: The run's slides (messages refer to them by position).
        summary: :class:`~mixmag.embed.core.EmbedSummary` updated in place.
        fail_fast: Raise :class:`~mixmag.embed.errors.SlideEmbeddingError` on the first failure.
        progress: Show a tqdm bar (tiles, tiles/s).
        first_batch_hook: Embeds the first batch instead of :meth:`TileEncoder.encode`, called
            once with (encoder, uint8 tiles) and returning (B, D) embeddings (the "auto" precision
            check, which may change the encoder's precision for the rest of the run).
        after_batch: Called after every forward pass (e.g. :meth:`HeapTrimmer.tick`).
        on_forward: Called after every forward pass with (tiles, seconds of the pass) (e.g. the
            :class:`~mixmag.utils.cpus.ThreadAdapter` of thread policy ``adapt``).
        run_attrs: Extra attrs stamped into every feature file (e.g. the run's thread plan).
        forward: Embeds a batch of tiles (default ``encoder.encode``; thread policy ``split``:
            :class:`~mixmag.embed.split.SplitForward`). The first batch of an ``auto``
            precision run goes through ``first_batch_hook`` instead.
    """

    def __init__(self, encoder: TileEncoder, *, batch_size: int, manifest: Manifest, claims: ClaimBoard,
                 jobs: list[EmbedJob], summary: Any, fail_fast: bool = False, progress: bool = True,
                 first_batch_hook: Callable[[TileEncoder, torch.Tensor], torch.Tensor] | None = None,
                 after_batch: Callable[[], None] | None = None,
                 on_forward: Callable[[int, float], None] | None = None,
                 run_attrs: dict[str, Any] | None = None,
                 forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.encoder = encoder
        self.batch_size = int(batch_size)
        self.manifest = manifest
        self.claims = claims
        self.jobs = jobs
        self.summary = summary
        self.fail_fast = fail_fast
        self.first_batch_hook = first_batch_hook
        self.after_batch = after_batch
        self.on_forward = on_forward
        self.forward = forward if forward is not None else encoder.encode
        self.run_attrs = dict(run_attrs or {})
        self._slides: dict[int, _Slide] = {}
        self._failed: set[int] = set()
        # chunks that overtook their slide's SlideStart (they come from other workers)
        self._orphans: dict[int, list[TileChunk]] = {}
        self._queue: deque[_Chunk] = deque()
        self._queued = 0
        self._known_ok = {k for k, r in manifest.rows().items() if r.get("status") == Status.OK.value}
        self._bar = tqdm(total=0, unit="tile", disable=not progress, desc=f"embed {encoder.meta.key}",
                         dynamic_ncols=True)
        self._handlers: dict[type, Callable[[Any], None]] = {
            SlideStart: self.start_slide, TileChunk: self.add_chunk, SlideSkip: self.skip_slide, SlideFailed: lambda m: self.fail_slide(m.job, m.error, claimed=m.claimed),
        }

    # ---- messages ------------------------------------------------------------------------------
    def handle(self, msg: Message) -> None:
        """Route one worker message."""
        self._handlers[type(msg)](msg)

    def start_slide(self, msg: SlideStart) -> None:
        """Open the slide's feature file (a temp file until complete)."""
        if msg.job in self._failed:  # a worker already reported it broken
            return
        job = self.jobs[msg.job]
        index = msg.index
        attrs = dict(self.encoder.provenance(), **msg.provenance, **self.run_attrs,
                     source_region_index=str(job.region_path.resolve()), embed_mixmag_version=__version__)
        writer = FeatureWriter(job.out_path, index, embed_dim=self.encoder.embed_dim, attrs=attrs)
        writer.__enter__()
        self._slides[msg.job] = _Slide(job=job, writer=writer, n_tokens=index.spec.n_tokens,
                                       n_regions=index.n_regions)
        self._bar.total += index.n_regions * index.spec.n_tokens
        self._bar.refresh()
        self._maybe_finish(msg.job)  # a slide without regions is complete at once
        for chunk in self._orphans.pop(msg.job, []):
            self.add_chunk(chunk)

    def add_chunk(self, msg: TileChunk) -> None:
        """Queue a chunk of tiles; run the model while a full batch is available."""
        if msg.job in self._failed:
            return
        if msg.job not in self._slides:
            self._orphans.setdefault(msg.job, []).append(msg)
            return
        n_tiles = msg.tiles.shape[0]
        self._queue.append(_Chunk(msg.job, msg.start, msg.n_regions, msg.tiles,
                                  np.empty((n_tiles, self.encoder.embed_dim), dtype=np.float32)))
        self._queued += n_tiles
        while self._queued >= self.batch_size:
            self._run(self.batch_size)

    def skip_slide(self, msg: SlideSkip) -> None:
        """Record a slide that needs no work ("complete") or is another process's ("claimed")."""
        slide_id = self.jobs[msg.job].slide_id
        if msg.reason != "complete":
            self.summary.claimed_elsewhere.append(slide_id)
            return
        self.summary.skipped.append(slide_id)
        if slide_id not in self._known_ok:  # keep the row of the run (maybe running now) that made the file
            self.manifest.update(slide_id, status=Status.SKIPPED, path=self.jobs[msg.job].region_path,
                                 output=self.jobs[msg.job].out_path, keep_if=(Status.OK,))

    def fail_slide(self, job: int, error: str, *, claimed: bool = True) -> None:
        """Abort ``job``: remove its temp file, release its claim, record the error."""
        if job in self._failed:
            return
        self._failed.add(job)
        self._orphans.pop(job, None)
        sj = self.jobs[job]
        slide = self._slides.pop(job, None)
        if slide is not None:
            slide.failed = True
            self._queued -= sum(c.tiles.shape[0] - c.taken for c in self._queue if c.job == job)
            self._queue = deque(c for c in self._queue if c.job != job)
            slide.writer.__exit__(FormatError, FormatError(error), None)  # deletes the temp file
        if claimed or slide is not None:
            self.claims.release(sj.slide_id)
        logger.error("slide %s failed: %s", sj.slide_id, error)
        self.summary.errors[sj.slide_id] = error
        self.manifest.update(sj.slide_id, status=Status.ERROR, path=sj.region_path, error=error)
        if self.fail_fast:
            raise SlideEmbeddingError(f"slide {sj.slide_id}: {error}")

    # ---- model ---------------------------------------------------------------------------------
    def _run(self, n: int) -> None:
        parts: list[tuple[_Chunk, int, int]] = []
        need = n
        while need > 0 and self._queue:
            chunk = self._queue[0]
            lo = chunk.taken
            hi = min(chunk.tiles.shape[0], lo + need)
            parts.append((chunk, lo, hi))
            chunk.taken = hi
            need -= hi - lo
            if chunk.taken == chunk.tiles.shape[0]:
                self._queue.popleft()
        if not parts:
            return
        tiles = torch.cat([c.tiles[lo:hi] for c, lo, hi in parts]) if len(parts) > 1 else \
            parts[0][0].tiles[parts[0][1]:parts[0][2]]
        self._queued -= tiles.shape[0]
        t_forward = time.perf_counter()
        if self.first_batch_hook is not None:
            hook, self.first_batch_hook = self.first_batch_hook, None
            emb = hook(self.encoder, tiles).cpu().numpy()
        else:
            emb = self.forward(tiles).cpu().numpy()
        if self.on_forward is not None:  # .cpu() above waited for an accelerator, so this is the pass's time
            self.on_forward(tiles.shape[0], time.perf_counter() - t_forward)
        offset = 0
        for chunk, lo, hi in parts:
            chunk.out[lo:hi] = emb[offset: offset + hi - lo]
            offset += hi - lo
            chunk.done += hi - lo
            if chunk.done == chunk.tiles.shape[0]:
                self._write(chunk)
        self.summary.n_tiles += tiles.shape[0]
        self._bar.update(tiles.shape[0])
        if self.after_batch is not None:
            self.after_batch()

    def _write(self, chunk: _Chunk) -> None:
        slide = self._slides.get(chunk.job)
        if slide is None or slide.failed:
            return
        try:
            slide.writer.write(chunk.start, chunk.out.reshape(chunk.n_regions, slide.n_tokens, -1))
        except FormatError as exc:  # NaN/inf or shape problems: this slide only
            self.fail_slide(chunk.job, str(exc))
            return
        slide.written_regions += chunk.n_regions
        self.claims.heartbeat(slide.job.slide_id)
        self._maybe_finish(chunk.job)

    def _maybe_finish(self, job: int) -> None:
        slide = self._slides[job]
        if slide.failed or slide.written_regions < slide.n_regions:
            return
        slide.writer.attrs["precision"] = self.encoder.precision  # final after the auto check
        try:
            slide.writer.__exit__(None, None, None)  # verifies every region was written, renames
        except FormatError as exc:
            slide.writer = _Closed()  # type: ignore[assignment]
            self.fail_slide(job, str(exc))
            return
        del self._slides[job]
        sj = slide.job
        self.claims.release(sj.slide_id)
        seconds = time.perf_counter() - slide.t0
        status = Status.OK if slide.n_regions else Status.EMPTY
        self.manifest.update(sj.slide_id, status=status, path=sj.region_path, n_items=slide.n_regions,
                             seconds=seconds, output=sj.out_path, n_tiles=slide.n_regions * slide.n_tokens,
                             encoder=self.encoder.meta.key)
        self.summary.ok.append(sj.slide_id)
        logger.info("slide %s: %d regions embedded in %.1f s", sj.slide_id, slide.n_regions, seconds)

    def flush(self) -> None:
        """Embed whatever is queued (last partial batch) and finish ended slides."""
        while self._queued > 0 and self._queue:
            self._run(min(self.batch_size, self._queued))

    def abort_open(self) -> None:
        """Drop unfinished slides (after an error/interrupt): temp files removed, claims released."""
        for job, slide in list(self._slides.items()):
            if not slide.failed:
                slide.failed = True
                slide.writer.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self.claims.release(slide.job.slide_id)
            del self._slides[job]
        self._orphans.clear()

    def close(self) -> None:
        """Close the progress bar."""
        self._bar.close()


class _Closed:
    """Stand-in for a writer whose context was already exited."""

    def __exit__(self, *exc: object) -> None:
        return None
