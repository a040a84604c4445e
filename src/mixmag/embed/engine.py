"""``embed_slides``: region indexes -> per-slide feature files, streaming, resumable, shareable.

Data flow (one process; run the same command several times, or as a Slurm array, to scale out)::

    DataLoader workers (CPU)                          model process
    claim slide / take a chunk of an open slide
    -> read region -> 21 uint8 tiles              ==>  batch tiles across regions and slides
                                                       -> transform + encoder (autocast, channels-last)
                                                       -> scatter into per-region rows
                                                       -> FeatureWriter (temp file, renamed when complete)

Where decoding runs (``workers="auto"``): with a GPU, in DataLoader worker processes that decode
while the GPU computes. On a CPU-only run the model's threads already use every usable core, so a
concurrent decoder would only preempt them (a preempted OpenMP thread stalls its partners at the
next barrier: a decoder using 6 % of one core cost a two-thread model 6.4 %); there the regions of
each chunk are decoded in this process between forward passes, on one thread per compute thread
(docs/performance.md, "Embedding"). Cores are those this process may use (affinity, cgroup quota,
Slurm, ``MIXMAG_THREADS``: :func:`mixmag.utils.cpus.usable_cpus`), never the machine's count.

Memory is bounded by the loader's prefetch (``workers x 2`` chunks of a few regions) plus one batch:
no slide is ever held whole. All workers help with the slides already open before opening new ones,
so even a one-slide cohort is decoded in parallel. Every slide ends as ``ok``/``empty``/``skipped``/``error`` in
``<out>/manifest.csv``; one bad slide never stops the others unless ``fail_fast``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mixmag.embed.batcher import TileBatcher
from mixmag.embed.claims import DEFAULT_STALE_AFTER_S, ClaimBoard, ClaimOwner
from mixmag.embed.dataset import RegionTileStream, TileSource, open_region_tiles
from mixmag.embed.jobs import RegionSource, check_folder, discover_jobs
from mixmag.embed.settings import EmbedSettings
from mixmag.encoders import TileEncoder, build_encoder
from mixmag.errors import MixmagValueError
from mixmag.io.manifest import Manifest
from mixmag.io.regions import RegionIndex
from mixmag.utils.atomic import remove_stale_temp_files
from mixmag.utils.cpus import THREADS_ENV, ThreadPolicy, thread_budget, usable_cpus
from mixmag.utils.device import resolve_device
from mixmag.utils.malloc import HeapTrimmer
from mixmag.utils.thread_adapt import ThreadAdapter

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
# "auto" precision must reproduce fp32 embeddings at least this closely (cosine, worst tile).
AUTO_PRECISION_MIN_COSINE = 0.999
# Tiles the "auto" check embeds in both precisions (the fp32 pass costs ~3x a bf16 one on a CPU).
AUTO_PRECISION_CHECK_TILES = 16
# Tiles per fp32 reference forward pass of that check: fp32 activations of 16 ViT-S tiles at once
# were the run's peak memory (+150 MB over the steady bf16 state); 4 at a time cost the same time.
AUTO_PRECISION_REFERENCE_SLICE = 4
TOKENS_PER_REGION_HINT = 21
# Forward passes between malloc_trim calls: glibc keeps freed activation memory (~50-80 MB for a
# ViT-S) until trimmed; trimming costs a few page faults afterwards (docs/performance.md).
TRIM_EVERY_BATCHES = 4


# Most DataLoader worker processes "auto" starts next to a GPU (each keeps a slide reader open).
AUTO_MAX_GPU_WORKERS = 8


@dataclass(frozen=True)
class DecodePlan:
    """Where regions are decoded.

    Attributes:
        workers: DataLoader worker processes (0 = in the model process, between forward passes).
        threads: Threads decoding the regions of one chunk at once, in each decoding process.
    """

    workers: int
    threads: int


def plan_decoding(workers: int | str, device: torch.device, threads: int | None = None, *,
                  cpus: int | None = None) -> DecodePlan:
    """Resolve ``workers`` (an int, or ``"auto"``) for a model on ``device``.

    ``"auto"``: on a CPU, decode inline with one thread per torch thread (no process competes with
    the model's threads); on an accelerator, ``min(8, cpus - 1)`` worker processes overlap
    decoding with the forward passes. An explicit ``0`` also decodes inline on one thread per torch
    thread; ``n >= 1`` starts ``n`` single-threaded worker processes. ``threads`` overrides the
    decode threads per process; ``cpus`` the cores of the allocation (default
    :attr:`usable_cpus().cores <mixmag.utils.cpus.CpuBudget.cores>`, not the machine's count).
    """
    if workers == "auto":
        cores = cpus if cpus is not None else usable_cpus().cores
        n = 0 if device.type == "cpu" else max(1, min(AUTO_MAX_GPU_WORKERS, cores - 1))
    else:
        try:
            n = int(workers)
        except (TypeError, ValueError):
            n = -1
        if n < 0:
            raise MixmagValueError(f"workers must be 'auto' or a number >= 0, got {workers!r}")
    if threads is not None and threads < 1:
        raise MixmagValueError(f"decode threads must be >= 1, got {threads}")
    default_threads = torch.get_num_threads() if n == 0 else 1
    return DecodePlan(workers=n, threads=threads or default_threads)


@dataclass
class EmbedSummary:
    """Outcome of one :func:`embed_slides` call (this process only).

    Attributes:
        out_dir: Output folder.
        encoder: Encoder key.
        precision: Precision actually used (fp32/fp16/bf16).
        ok: Slides embedded by this process.
        skipped: Slides already complete with matching provenance.
        claimed_elsewhere: Slides being done by another process at the time.
        errors: slide_id -> error message.
        n_tiles: Tiles embedded by this process.
        seconds: Wall time.
        threads: Compute (torch intra-op) threads at the end of the run (policy ``adapt`` may
            have lowered them from the start count).
    """

    out_dir: Path
    encoder: str
    precision: str = "fp32"
    ok: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    claimed_elsewhere: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    n_tiles: int = 0
    seconds: float = 0.0
    threads: int = 0

    @property
    def tiles_per_s(self) -> float:
        """End-to-end throughput of this process."""
        return self.n_tiles / self.seconds if self.seconds > 0 else 0.0

    @property
    def manifest(self) -> Path:
        """Path of the run's manifest."""
        return self.out_dir / MANIFEST_NAME


def _check_precision(encoder: TileEncoder, tiles: torch.Tensor) -> torch.Tensor:
    """For precision="auto": keep autocast only if it reproduces fp32 on the first real tiles.

    The comparison runs on the first :data:`AUTO_PRECISION_CHECK_TILES` tiles of the first batch
    (in token order: the 5x, 10x and first 20x tiles of a region). Returns the embeddings of all of
    ``tiles`` in the precision kept, so no tile is embedded twice in that precision. When reduced
    precision is kept, the weights are cast to it once (:meth:`TileEncoder.cast_weights_for_autocast`).
    An encoder whose weights were already cast (by an earlier run) keeps its precision unchecked.
    """
    if encoder.autocast_dtype is None or encoder.weights_dtype is not None:
        return encoder.encode(tiles)
    probe, rest = tiles[:AUTO_PRECISION_CHECK_TILES], tiles[AUTO_PRECISION_CHECK_TILES:]
    dtype, encoder.autocast_dtype = encoder.autocast_dtype, None
    step = AUTO_PRECISION_REFERENCE_SLICE
    ref = torch.cat([encoder.encode(probe[i:i + step]) for i in range(0, len(probe), step)])
    encoder.autocast_dtype = dtype
    fast = encoder.encode(probe)
    cos = float(torch.nn.functional.cosine_similarity(fast, ref, dim=-1).min())
    if cos >= AUTO_PRECISION_MIN_COSINE:
        logger.info("precision auto -> %s (min cosine vs fp32 %.5f on %d tiles)", encoder.precision, cos, len(probe))
        encoder.cast_weights_for_autocast()
        kept = fast
    else:
        logger.warning("precision auto: %s embeddings differ from fp32 (min cosine %.4f < %.3f); using fp32",
                       dtype, cos, AUTO_PRECISION_MIN_COSINE)
        encoder.autocast_dtype = None
        kept = ref
    return torch.cat([kept, encoder.encode(rest)]) if len(rest) else kept


def embed_slides(
    region_dir: RegionSource,
    out_dir: str | os.PathLike[str],
    *,
    settings: EmbedSettings | None = None,
    encoder: str | TileEncoder | None = None,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    fail_fast: bool = False,
    progress: bool = True,
    decode_threads: int | None = None,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    open_tiles: Callable[[RegionIndex], TileSource] = open_region_tiles,
    **options: Any,
) -> EmbedSummary:
    """Embed every tile (all magnifications, same model) of every region of every slide.

    Args:
        region_dir: Tiling output folder, folder of region files, list file, or list of paths.
        out_dir: Feature folder: ``<slide_id>.h5`` per slide, ``manifest.csv``, ``embed.json``.
        settings: Encoder, weights, batch size, precision, device and decoding workers
            (:class:`~mixmag.embed.settings.EmbedSettings`; its defaults when None). ``precision``
            ``auto`` is fp16 on GPU; bf16 on CPUs with native bf16 if it matches fp32 to cosine
            >= 0.999 on the first 16 tiles, else fp32. ``workers`` are DataLoader worker processes
            decoding regions; 0 decodes in this process between forward passes (one thread per
            torch thread); ``"auto"`` = 0 on a CPU, up to 8 processes next to a GPU
            (:func:`plan_decoding`).
        encoder: A registry key (sets ``settings.encoder``), or an already built
            :class:`TileEncoder`, used instead of ``settings.encoder``/``weights``/``random_weights``/
            ``device`` (once the run's precision is settled, its Linear/Conv weights are cast to
            that dtype in place, for inference).
        shard: ``(i, n)``: process only slides ``i, i+n, i+2n ...`` of the sorted list.
        overwrite: Recompute slides even if a matching feature file exists.
        fail_fast: Raise on the first failing slide instead of recording it and continuing.
        progress: Show a tqdm bar with tiles/s.
        decode_threads: Threads decoding the regions of a chunk in each decoding process (default:
            one per torch thread when decoding inline, else 1).
        stale_after_s: Claims not refreshed for this long are taken over (dead node).
        open_tiles: Tile-source factory (default: the slide reader + region tile reader).
        **options: Single :class:`~mixmag.embed.settings.EmbedSettings` fields replacing those of
            ``settings`` (e.g. ``batch_size=256, precision="fp32", workers=0``); unknown names and
            invalid values raise :class:`~mixmag.errors.MixmagValueError`.

    Returns:
        What this process did (other processes sharing the folder report their own part).

    Raises:
        EmbedConfigError: ``out_dir`` holds features of another encoder / weights.
        SlideEmbeddingError: A slide failed and ``fail_fast`` is set.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    # settings errors first: before any model is built or anything is written
    built = encoder if isinstance(encoder, TileEncoder) else None
    if encoder is not None and built is None:
        options["encoder"] = encoder
    s = (settings if settings is not None else EmbedSettings()).updated(**options)
    precision, batch_size = s.precision, s.batch_size
    # compute threads from the usable cores (affinity, cgroup quota, Slurm, MIXMAG_THREADS), restored
    # when done; inline decode threads and "auto" worker processes are sized from the same budget
    with thread_budget(s.threads) as threads:
        device = built.device if built is not None else resolve_device(s.device)
        decode = plan_decoding(s.workers, device, decode_threads)
        enc = built if built is not None else build_encoder(
            s.encoder, weights=s.weights, random_weights=s.random_weights, device=s.device, precision=precision)
        if precision != "auto":  # final already: store the weights in the compute dtype (bit-identical, smaller)
            enc.cast_weights_for_autocast()
        jobs = discover_jobs(region_dir, out, shard)
        check_folder(out, enc.provenance(), overwrite=overwrite)
        # leftovers of killed runs (manifest/stamp writes, slides no run will revisit); a live writer's
        # files are kept, and a slide's own temp files are removed again once it is claimed
        if n := remove_stale_temp_files(out, stale_after_s=None):
            logger.info("removed %d unfinished temporary file(s) of killed runs from %s", n, out)
        summary = EmbedSummary(out_dir=out, encoder=enc.meta.key, threads=threads.threads)
        claims = ClaimBoard(out, ClaimOwner.current(), stale_after_s=stale_after_s)
        logger.info("decoding: %s", f"{decode.workers} worker process(es)" if decode.workers
                    else f"in this process, {decode.threads} thread(s)")
        # about one batch of tiles per message (small enough to bound memory, large enough to amortise
        # IPC), and at least one region per decode thread
        stream = RegionTileStream(jobs, claims, enc.provenance(), overwrite=overwrite, open_tiles=open_tiles,
                                  regions_per_chunk=max(math.ceil(batch_size / TOKENS_PER_REGION_HINT), decode.threads),
                                  max_workers=decode.workers, decode_threads=decode.threads)
        loader = DataLoader(stream, batch_size=None, num_workers=decode.workers,
                            prefetch_factor=2 if decode.workers > 0 else None,
                            pin_memory=enc.device.type == "cuda", persistent_workers=False)
        # policy adapt: only the CPU's compute threads are worth adapting (a GPU's forward pass needs
        # one), and never a count the user chose (embed.threads, MIXMAG_THREADS)
        adaptive = (threads.policy is ThreadPolicy.ADAPT and enc.device.type == "cpu"
                    and threads.source not in ("threads argument", THREADS_ENV))
        adapter = ThreadAdapter(cores=threads.budget.cores, max_threads=threads.threads) if adaptive else None
        batcher = TileBatcher(enc, batch_size=batch_size, manifest=Manifest(out / MANIFEST_NAME), claims=claims,
                              jobs=jobs, summary=summary, fail_fast=fail_fast, progress=progress,
                              first_batch_hook=_check_precision if precision == "auto" else None,
                              after_batch=HeapTrimmer(every=TRIM_EVERY_BATCHES).tick,  # flat RSS over long runs
                              on_forward=adapter, run_attrs={"embed_cpu_threads": threads.to_dict()})
        try:
            for msg in loader:
                batcher.handle(msg)
            batcher.flush()
        finally:
            batcher.abort_open()
            batcher.close()
        summary.precision = enc.precision
        summary.threads = adapter.threads if adapter is not None else threads.threads
        summary.seconds = time.perf_counter() - t0
        logger.info("embed: %d ok, %d skipped, %d elsewhere, %d errors; %d tiles in %.1f s (%.1f tiles/s)",
                    len(summary.ok), len(summary.skipped), len(summary.claimed_elsewhere), len(summary.errors),
                    summary.n_tiles, summary.seconds, summary.tiles_per_s)
        return summary
