"""The embedding loop of one process: claimed slides -> decoded tiles -> encoder -> feature files.

:func:`embed_jobs` is the per-slide code path of both backends of
:func:`~mixmag.embed.engine.embed_slides`: the local backend runs it once over the whole cohort, a
Ray worker (:mod:`mixmag.embed.ray_backend`) once per slide it is handed, with a model it built
once. Either way a slide is claimed, checked for resume, decoded, embedded in batches and streamed
into its feature file in exactly the same way, so the files do not depend on the backend.
Also here: how decoding is placed (:func:`plan_decoding`), the ``auto`` precision check, and
:class:`EmbedSummary`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mixmag.cluster.runtime import WorkerUsage
from mixmag.embed.batcher import TileBatcher
from mixmag.embed.claims import ClaimBoard
from mixmag.embed.dataset import RegionTileStream, TileSource, open_region_tiles
from mixmag.embed.estimate import EmbedEstimator, tiles_to_embed
from mixmag.embed.jobs import EmbedJob
from mixmag.embed.split import SplitForward, single_threaded
from mixmag.encoders import TileEncoder
from mixmag.errors import MixmagValueError
from mixmag.io.manifest import Manifest
from mixmag.io.regions import RegionIndex
from mixmag.utils.cpus import THREADS_ENV, ThreadPlan, ThreadPolicy, usable_cpus
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
    """Outcome of one :func:`~mixmag.embed.engine.embed_slides` call (this process, or its Ray workers).

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
            have lowered them from the start count); backend ray: of one worker.
        workers: Backend ray: each Ray worker that embedded slides, with its peak memory.
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
    workers: list[WorkerUsage] = field(default_factory=list)

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


def embed_jobs(encoder: TileEncoder, jobs: list[EmbedJob], out_dir: Path, summary: EmbedSummary, *,
               claims: ClaimBoard, batch_size: int, precision: str, decode: DecodePlan, threads: ThreadPlan,
               overwrite: bool = False, fail_fast: bool = False, progress: bool = True,
               open_tiles: Callable[[RegionIndex], TileSource] = open_region_tiles, estimate: bool = True) -> None:
    """Embed ``jobs`` in this process: claim, resume check, decode, batch, write, record.

    Each slide ends as ``ok``/``empty``/``skipped``/``error`` in ``out_dir/manifest.csv`` (or is
    left to the process holding its claim). The caller has built ``encoder`` (weights already cast
    unless ``precision`` is ``auto``), checked the folder (:func:`~mixmag.embed.jobs.check_folder`)
    and set the compute threads (``threads``).

    Args:
        encoder: The tile encoder, on its device.
        jobs: Slides to embed.
        out_dir: Feature folder.
        summary: Updated in place: slides by outcome, tiles, precision kept, compute threads.
        claims: Claim board of ``out_dir`` with this process's identity.
        batch_size: Tiles per forward pass.
        precision: The requested precision (``auto`` runs the check on the first batch).
        decode: Where regions are decoded (:func:`plan_decoding`).
        threads: The compute-thread plan in effect (stamped into every file; policy ``adapt``).
        overwrite: Recompute slides even if a matching feature file exists.
        fail_fast: Raise on the first failing slide.
        progress: Show a tqdm bar with tiles/s.
        open_tiles: Tile-source factory.
        estimate: Log the estimated remaining wall time after the first batches
            (:mod:`mixmag.embed.estimate`; off for Ray workers, which are handed one slide at a time).

    Raises:
        SlideEmbeddingError: A slide failed and ``fail_fast`` is set.
    """
    logger.info("decoding: %s", f"{decode.workers} worker process(es)" if decode.workers
                else f"in this process, {decode.threads} thread(s)")
    # about one batch of tiles per message (small enough to bound memory, large enough to amortise
    # IPC), and at least one region per decode thread
    stream = RegionTileStream(jobs, claims, encoder.provenance(), overwrite=overwrite, open_tiles=open_tiles,
                              regions_per_chunk=max(math.ceil(batch_size / TOKENS_PER_REGION_HINT), decode.threads),
                              max_workers=decode.workers, decode_threads=decode.threads)
    loader = DataLoader(stream, batch_size=None, num_workers=decode.workers,
                        prefetch_factor=2 if decode.workers > 0 else None,
                        pin_memory=encoder.device.type == "cuda", persistent_workers=False)
    # policy adapt: only the CPU's compute threads are worth adapting (a GPU's forward pass needs
    # one), and never a count the user chose (embed.threads, MIXMAG_THREADS)
    adaptive = (threads.policy is ThreadPolicy.ADAPT and encoder.device.type == "cpu"
                and threads.source not in ("threads argument", THREADS_ENV))
    adapter = ThreadAdapter(cores=threads.budget.cores, max_threads=threads.threads) if adaptive else None
    # policy split (the default): one single-threaded sub-batch per compute thread (mixmag.embed.split)
    # (one worker too: the same sub-batches give the same features on any number of cores)
    split = threads.policy is ThreadPolicy.SPLIT and encoder.device.type == "cpu"
    forward = SplitForward(encoder, threads.threads) if split else None
    if forward is not None:
        logger.info("compute: each batch in sub-batches of %d tiles on %d single-threaded worker(s) (thread "
                    "policy split)", forward.sub_batch, forward.workers)
    trimmer = HeapTrimmer(every=TRIM_EVERY_BATCHES)  # flat RSS over long runs
    estimator = EmbedEstimator(*tiles_to_embed(jobs, overwrite=overwrite), device=str(encoder.device)) \
        if estimate else None

    def after_batch() -> None:
        trimmer.tick()
        if estimator is not None:
            estimator.tick(summary.n_tiles)

    batcher = TileBatcher(encoder, batch_size=batch_size, manifest=Manifest(out_dir / MANIFEST_NAME), claims=claims,
                          jobs=jobs, summary=summary, fail_fast=fail_fast, progress=progress,
                          first_batch_hook=_check_precision if precision == "auto" else None,
                          after_batch=after_batch,
                          on_forward=adapter, run_attrs={"embed_cpu_threads": threads.to_dict()}, forward=forward)
    try:
        with single_threaded() if split else contextlib.nullcontext():
            for msg in loader:
                batcher.handle(msg)
            batcher.flush()
    finally:
        batcher.abort_open()
        batcher.close()
        if forward is not None:
            forward.close()
    summary.precision = encoder.precision
    summary.threads = adapter.threads if adapter is not None else threads.threads
