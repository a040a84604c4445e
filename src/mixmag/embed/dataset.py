"""CPU side of the extraction engine: workers claim slides and decode their regions into tiles.

:class:`RegionTileStream` is a torch ``IterableDataset``. DataLoader workers share the cohort
through a :class:`~mixmag.embed.workqueue.SlideWorkQueue`: a worker helps decoding the chunks of a
slide that is already open, or else opens the next slide (resume check, atomic claim, see
:mod:`mixmag.embed.claims`). Each worker keeps one slide reader open. Messages to the model process:

``SlideStart`` (with the region index) and ``TileChunk`` (uint8 tiles of a few regions; chunks of
one slide may come from several workers, in any order), or ``SlideSkip`` / ``SlideFailed``. Pixels
travel as uint8 tensors (shared memory between processes); normalisation happens on the model's
device.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mixmag.embed.claims import ClaimBoard
from mixmag.embed.jobs import EmbedJob, existing_encoder, expected_provenance, is_done
from mixmag.embed.workqueue import SlideWorkQueue
from mixmag.errors import MixmagFileNotFoundError, one_line
from mixmag.io.regions import RegionIndex, read_region_index
from mixmag.slides import open_slide
from mixmag.tiling.extract import RegionTileReader
from mixmag.utils.hashing import sha256_file

logger = logging.getLogger(__name__)


class TileSource(Protocol):
    """Reads the T tiles of one region: ``read_region_tiles(r) -> uint8 (T, px, px, 3)`` in token order.

    A source may also set ``thread_safe = True`` when ``read_region_tiles`` can run on several
    threads at once; otherwise parallel decoding opens one source per thread.
    """

    def read_region_tiles(self, region: int) -> np.ndarray: ...  # noqa: D102

    def close(self) -> None: ...  # noqa: D102


def open_region_tiles(index: RegionIndex) -> TileSource:
    """Default :class:`TileSource`: open the slide recorded in the index with its recorded reader."""
    slide_path = index.attrs.get("slide_path")
    if not slide_path:
        raise MixmagFileNotFoundError("the region index records no slide_path; re-run `mixmag tile`")
    reader = open_slide(slide_path, reader=index.attrs.get("reader") or None)

    class _Source:
        thread_safe = reader.thread_safe_reads

        def __init__(self) -> None:
            # the same resampling filter as the tiler used when it verified the reads
            self.tiles = RegionTileReader(reader, index, resample=str(index.attrs.get("resample", "box")))

        def read_region_tiles(self, region: int) -> np.ndarray:
            return self.tiles.read_region_tiles(region)

        def close(self) -> None:
            reader.close()

    return _Source()


# ---- messages from workers to the model process ------------------------------------------------
@dataclass
class SlideStart:
    """A slide was claimed; its feature file can be opened."""

    job: int
    index: RegionIndex
    provenance: dict[str, Any]


@dataclass
class TileChunk:
    """Tiles of regions ``start .. start + n - 1`` of slide ``job``: uint8 (n * T, px, px, 3)."""

    job: int
    start: int
    n_regions: int
    tiles: torch.Tensor

    def pin_memory(self) -> TileChunk:
        """Pinned copy for fast host->GPU transfer (called by DataLoader(pin_memory=True))."""
        return TileChunk(self.job, self.start, self.n_regions, self.tiles.pin_memory())


@dataclass
class SlideSkip:
    """Slide ``job`` needs no work here: ``reason`` is "complete" or "claimed"."""

    job: int
    reason: str


@dataclass
class SlideFailed:
    """Slide ``job`` cannot be embedded; ``claimed`` says whether a claim must be released."""

    job: int
    error: str
    claimed: bool


Message = SlideStart | TileChunk | SlideSkip | SlideFailed


class RegionTileStream(IterableDataset):
    """Iterable of :data:`Message` over a cohort, shared out between DataLoader workers by claims.

    Args:
        jobs: Slides of the run (already sharded).
        claims: Claim board of the output folder (carries the main process's identity).
        encoder_attrs: Provenance of the encoder (for the resume check).
        regions_per_chunk: Regions decoded per message (about one model batch of tiles).
        overwrite: Recompute slides even when a matching feature file exists.
        max_workers: DataLoader workers that will share the stream (sizes the work queue).
        open_tiles: Factory of a :class:`TileSource` for a region index (tests inject fakes).
        decode_threads: Threads decoding the regions of one chunk at once (each iterating process
            has its own). On a CPU-only run the engine decodes between forward passes with one
            thread per compute thread (sized from the usable cores, not the machine's), so decoding
            and the model never compete for the same cores.
    """

    def __init__(self, jobs: list[EmbedJob], claims: ClaimBoard, encoder_attrs: dict[str, Any], *,
                 regions_per_chunk: int, overwrite: bool = False, max_workers: int = 1,
                 open_tiles: Callable[[RegionIndex], TileSource] = open_region_tiles,
                 decode_threads: int = 1) -> None:
        super().__init__()
        self.jobs = jobs
        self.claims = claims
        self.encoder_attrs = encoder_attrs
        self.regions_per_chunk = max(1, int(regions_per_chunk))
        self.overwrite = overwrite
        self.open_tiles = open_tiles
        self.decode_threads = max(1, int(decode_threads))
        # created before the DataLoader starts its workers, which inherit it
        self.queue = SlideWorkQueue(len(jobs), n_slots=max_workers + 2)
        self._source: TileSource | None = None
        self._source_job = -1
        self._index: RegionIndex | None = None
        # sources of the current slide for decode threads 1.. (thread 0 uses _source); only
        # opened when _source is not thread-safe
        self._thread_sources: list[TileSource] = []
        self._pool: ThreadPoolExecutor | None = None  # made in the iterating process (threads do not fork)

    def _order(self) -> list[int]:
        info = get_worker_info()
        n = len(self.jobs)
        if info is None or n == 0:
            return list(range(n))
        # start each worker at its own offset so they rarely race for the same claim
        offset = (info.id * n) // info.num_workers
        return [(offset + k) % n for k in range(n)]

    def __iter__(self) -> Iterator[Message]:
        order = self._order()
        cursor = 0
        try:
            while True:
                got = self.queue.take_chunk()
                if got is not None:
                    yield from self._chunk(*got)
                    continue
                while cursor < len(order) and not self.queue.take_slide(order[cursor]):
                    cursor += 1
                if cursor < len(order):
                    yield from self._open(order[cursor])
                    cursor += 1
                elif self.queue.preparing():
                    time.sleep(0.01)  # another worker is opening a slide: help with it when published
                else:
                    return
        finally:
            self._close_source()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    # ---- opening a slide ---------------------------------------------------------------------
    def _prepare(self, j: int) -> tuple[RegionIndex, dict[str, Any]] | Message:
        job = self.jobs[j]
        try:
            index = read_region_index(job.region_path)
            prov = expected_provenance(self.encoder_attrs, index.attrs, sha256_file(job.region_path))
        except (OSError, ValueError, KeyError) as exc:
            return SlideFailed(j, one_line(exc), claimed=False)
        if not self.overwrite:
            if is_done(job.out_path, prov):
                self.claims.clear_stale(job.slide_id)  # left by a run killed between rename and release
                return SlideSkip(j, "complete")
            found = existing_encoder(job.out_path)
            if found is not None and found != (self.encoder_attrs["encoder"], self.encoder_attrs["embed_dim"]):
                return SlideFailed(j, f"{job.out_path} holds features of encoder {found[0]!r} (D={found[1]}); "
                                      "refusing to replace them without --overwrite", claimed=False)
        return index, prov

    def _open(self, j: int) -> Iterator[Message]:
        job = self.jobs[j]
        prepared = self._prepare(j)
        if not isinstance(prepared, tuple):
            self.queue.close(j)
            yield prepared
            return
        index, prov = prepared
        if not self.claims.try_acquire(job.slide_id):
            self.queue.close(j)
            yield SlideSkip(j, "claimed")
            return
        # re-check under the claim: another process may have finished the slide in between
        if not self.overwrite and is_done(job.out_path, prov):
            self.claims.release(job.slide_id)
            self.queue.close(j)
            yield SlideSkip(j, "complete")
            return
        # temp files of a killed writer of this slide: safe to delete now that we hold the claim
        for tmp in Path(job.out_path.parent).glob(f".{job.out_path.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        try:
            self._use_source(j, index)
        except Exception as exc:  # any reader failure (missing file, codec, permissions) is per-slide
            self.queue.close(j)
            yield SlideFailed(j, f"cannot open slide: {one_line(exc)}", claimed=True)
            return
        yield SlideStart(j, index, prov)
        n_chunks = math.ceil(index.n_regions / self.regions_per_chunk)
        if not self.queue.open(j, n_chunks):
            # no free slot (more open slides than workers): read this slide alone
            while (got := self.queue.take_chunk(only=j)) is not None:
                yield from self._chunk(*got)

    # ---- reading chunks ------------------------------------------------------------------------
    def _use_source(self, j: int, index: RegionIndex | None = None) -> TileSource:
        if self._source is not None and self._source_job == j:
            return self._source
        self._close_source()
        if index is None:
            index = read_region_index(self.jobs[j].region_path)
        self._source, self._source_job, self._index = self.open_tiles(index), j, index
        return self._source

    def _close_source(self) -> None:
        for source in [self._source, *self._thread_sources]:
            if source is not None:
                source.close()
        self._source, self._source_job, self._index = None, -1, None
        self._thread_sources = []

    def _read_regions(self, source: TileSource, regions: range) -> np.ndarray:
        """uint8 (len(regions) * T, px, px, 3): the tiles of ``regions``, on several threads if allowed.

        The regions are split into one contiguous run per thread, so no source is ever used by two
        threads at once unless it declares itself thread-safe.
        """
        n_threads = min(self.decode_threads, len(regions))
        if n_threads <= 1:
            return np.concatenate([source.read_region_tiles(r) for r in regions])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.decode_threads, thread_name_prefix="mixmag-decode")
        if getattr(source, "thread_safe", False):
            sources = [source] * n_threads
        else:
            assert self._index is not None
            while len(self._thread_sources) < n_threads - 1:
                self._thread_sources.append(self.open_tiles(self._index))
            sources = [source, *self._thread_sources[: n_threads - 1]]
        bounds = np.linspace(0, len(regions), n_threads + 1).round().astype(int)
        runs = [regions[bounds[k]:bounds[k + 1]] for k in range(n_threads)]
        futures = [self._pool.submit(lambda k: np.concatenate([sources[k].read_region_tiles(r) for r in runs[k]]), k)
                   for k in range(n_threads)]
        # every thread is done before an error propagates: the caller then closes the sources
        wait(futures)
        return np.concatenate([f.result() for f in futures])

    def _chunk(self, j: int, c: int) -> Iterator[Message]:
        try:
            source = self._use_source(j)
            assert self._index is not None
            start = c * self.regions_per_chunk
            stop = min(start + self.regions_per_chunk, self._index.n_regions)
            tiles = self._read_regions(source, range(start, stop))
        except Exception as exc:  # a corrupt region (or a slide gone missing) fails this slide only
            logger.debug("region read failed:\n%s", traceback.format_exc())
            self.queue.close(j)
            self._close_source()
            yield SlideFailed(j, f"reading chunk {c} (regions from {c * self.regions_per_chunk}) failed: "
                                 f"{one_line(exc)}", claimed=True)
            return
        yield TileChunk(j, start, stop - start, torch.from_numpy(np.ascontiguousarray(tiles)))
