"""``embed_slides(..., backend="ray")``: Ray actors that each load the model once and embed slides.

Layout of a run::

    driver (this process)                          Ray actor x ray_workers (1 GPU or CPU slot each)
    list slides, check the folder, clean up        build the encoder once (weights, precision)
    hand the next slide to an idle actor    ==>    embed_jobs(encoder, [slide]): claim, resume check,
    record lost slides, retry, count               decode, batch, write the feature file, manifest row

Every slide runs through :func:`mixmag.embed.core.embed_jobs`, the loop of the local backend, so a
slide's feature file, provenance, manifest row and resume decision are those of a local run.

Decoding stays inside the actor (inline between forward passes on a CPU worker, in DataLoader
processes on the same node next to a GPU, as locally), not in separate Ray tasks: the decoded
tiles of a region are 3.2 MB of uint8 against 0.1 MB of features, so shipping pixels through Ray's
object store (possibly across nodes) would cost more than decoding them where the model is, and
the local decode/compute overlap is already the one measured in docs/performance.md.

Failures: a slide error with a reason (unreadable slide, corrupt region) is recorded by the actor
as locally and is final. A slide whose actor died (killed, out of memory, node lost) is queued
again for any live actor, up to ``ray_max_retries`` times, then recorded as ``error``; a
replacement actor is started for the lost one. Its claim (made for this run, ``ClaimOwner.run``)
is taken over by the next attempt at once, even when the dead actor was on another node.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from tqdm.auto import tqdm

from mixmag.cluster.runtime import (
    RayUnavailableError,
    WorkerUsage,
    current_usage,
    describe_failure,
    merge_usage,
    ray_session,
)
from mixmag.cluster.scheduler import WORKER_START_TIMEOUT_S, ActorPool
from mixmag.embed.claims import ClaimBoard, ClaimOwner
from mixmag.embed.core import (
    AUTO_MAX_GPU_WORKERS,
    MANIFEST_NAME,
    EmbedSummary,
    embed_jobs,
    plan_decoding,
)
from mixmag.embed.dataset import TileSource
from mixmag.embed.errors import SlideEmbeddingError
from mixmag.embed.jobs import EmbedJob, RegionSource, check_folder, discover_jobs
from mixmag.embed.settings import EmbedSettings
from mixmag.errors import MixmagError, MixmagRuntimeError
from mixmag.io.manifest import Manifest, Status
from mixmag.io.regions import RegionIndex
from mixmag.utils.atomic import remove_stale_temp_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    """What an embedding actor needs (sent to it once, when it starts).

    Attributes:
        settings: The run's embedding settings.
        out_dir: Feature folder (on a filesystem every node sees).
        run_id: This run's id, written into claims (:class:`~mixmag.embed.claims.ClaimOwner`).
        cpus: CPU cores the actor reserved: its compute threads (unless ``settings.threads``), and
            next to a GPU the decoding processes of ``workers="auto"``.
        overwrite: Recompute slides that are complete.
        fail_fast: Raise on the first failing slide.
        decode_threads: Decode threads per decoding process (None: the engine's default).
        stale_after_s: Claims not refreshed for this long are taken over.
        open_tiles: Tile-source factory (importable by reference on every node).
    """

    settings: EmbedSettings
    out_dir: Path
    run_id: str
    cpus: int
    overwrite: bool
    fail_fast: bool
    decode_threads: int | None
    stale_after_s: float
    open_tiles: Callable[[RegionIndex], TileSource]


@dataclass
class SlideOutcome:
    """What an actor returns for one slide: its part of the summary and its own memory report."""

    summary: EmbedSummary
    usage: WorkerUsage


class SlideEmbedder:
    """Body of the Ray actor: builds the encoder once, then embeds one slide per :meth:`embed` call.

    A failure to build (weights missing on this node, no GPU) is kept and raised by every call, so
    the driver sees the original exception (as the ``cause`` of Ray's task error) rather than a
    dead actor.

    Args:
        config: The run's settings for this actor.
    """

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.error: Exception | None = None
        try:
            self._build()
        except Exception as exc:  # reported by the calls, see the class docstring
            self.error = exc

    def _build(self) -> None:
        import torch

        from mixmag.encoders import build_encoder
        from mixmag.utils.cpus import apply_thread_budget, plan_threads

        c, s = self.config, self.config.settings
        n_threads = s.threads or c.cpus  # the CPUs Ray reserved, not the node's
        apply_thread_budget(n_threads)
        self.threads = plan_threads(n_threads)
        self.encoder = build_encoder(s.encoder, weights=s.weights, random_weights=s.random_weights, device=s.device,
                                     precision=s.precision)
        if s.precision != "auto":
            self.encoder.cast_weights_for_autocast()
        self.decode = plan_decoding(s.workers, self.encoder.device, c.decode_threads, cpus=c.cpus)
        logger.info("Ray worker %d: %s on %s, %d threads (torch %s)", os.getpid(), s.encoder, self.encoder.device,
                    self.threads.threads, torch.__version__)

    def provenance(self) -> dict[str, Any]:
        """The encoder's provenance attributes (what the folder check compares)."""
        if self.error is not None:
            raise self.error
        return self.encoder.provenance()

    def embed(self, job: EmbedJob) -> SlideOutcome:
        """Embed one slide with the local loop (:func:`~mixmag.embed.core.embed_jobs`)."""
        if self.error is not None:
            raise self.error
        c = self.config
        summary = EmbedSummary(out_dir=c.out_dir, encoder=self.encoder.meta.key, threads=self.threads.threads)
        claims = ClaimBoard(c.out_dir, ClaimOwner.current(run=c.run_id), stale_after_s=c.stale_after_s)
        embed_jobs(self.encoder, [job], c.out_dir, summary, claims=claims, batch_size=c.settings.batch_size,
                   precision=c.settings.precision, decode=self.decode, threads=self.threads,
                   overwrite=c.overwrite, fail_fast=c.fail_fast, progress=False, open_tiles=c.open_tiles,
                   estimate=False)
        return SlideOutcome(summary=summary, usage=current_usage())


def worker_resources(settings: EmbedSettings, resources: dict[str, float]) -> tuple[float, int, int]:
    """``(gpus, cpus, workers)`` of the run's actors on a cluster with ``resources``.

    ``ray_gpus_per_worker`` null: 1 when the cluster has GPUs, else 0. ``ray_cpus_per_worker``
    null: 1 for a CPU worker; next to a GPU the cluster's CPUs per GPU, at most one more than the
    decoding processes ``workers="auto"`` starts. ``ray_workers`` null: as many as fit.

    Raises:
        RayUnavailableError: The cluster cannot hold a single worker.
    """
    cluster_gpus, cluster_cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    gpus = settings.ray_gpus_per_worker
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 else 0.0
    cpus = settings.ray_cpus_per_worker
    if cpus is None:
        cpus = 1 if gpus == 0 else max(1, min(AUTO_MAX_GPU_WORKERS + 1, int(cluster_cpus // max(cluster_gpus, 1))))
    if gpus > cluster_gpus or cpus > cluster_cpus:
        raise RayUnavailableError(
            f"a Ray worker needs {gpus:g} GPU(s) and {cpus} CPU(s), and the cluster has {cluster_gpus:g} GPU(s) and "
            f"{cluster_cpus:g} CPU(s); lower --gpus-per-worker / --cpus-per-worker or add nodes")
    fit = math.floor(cluster_gpus / gpus) if gpus > 0 else math.floor(cluster_cpus / cpus)
    return gpus, cpus, settings.ray_workers or max(1, fit)


def _raise_start_error(exc: BaseException) -> NoReturn:
    """Re-raise why no worker started: the encoder's own error when it is one for a person."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, MixmagError):
        raise cause from None
    if isinstance(exc, TimeoutError):
        raise MixmagRuntimeError(f"{exc}; the cluster has no room for a worker (see `ray status`)") from None
    raise MixmagRuntimeError(f"no Ray worker could build the encoder: {describe_failure(exc)}") from None


def embed_on_ray(region_dir: RegionSource, out_dir: Path, settings: EmbedSettings, *,
                 shard: tuple[int, int] | None, overwrite: bool, fail_fast: bool, progress: bool,
                 decode_threads: int | None, stale_after_s: float,
                 open_tiles: Callable[[RegionIndex], TileSource]) -> EmbedSummary:
    """Embed the slides of ``region_dir`` on the Ray cluster at ``settings.ray_address``.

    Arguments as for :func:`~mixmag.embed.engine.embed_slides` (``settings`` already resolved).

    Returns:
        The run's summary, merged from every slide's actor call (``workers``: each actor with its
        slide count and peak memory).

    Raises:
        EmbedConfigError: ``out_dir`` holds features of another encoder / weights.
        SlideEmbeddingError: A slide failed and ``fail_fast`` is set (slides already being
            embedded by other actors are finished first).
        RayUnavailableError: No cluster answers, or it cannot hold one worker.
    """
    t0 = time.perf_counter()
    jobs = discover_jobs(region_dir, out_dir, shard)  # input errors before joining anything
    with ray_session(settings.ray_address) as ray:
        gpus, cpus, n_workers = worker_resources(settings, ray.cluster_resources())
        n_workers = min(n_workers, len(jobs))
        config = WorkerConfig(settings=settings, out_dir=out_dir, run_id=uuid.uuid4().hex, cpus=cpus,
                              overwrite=overwrite, fail_fast=fail_fast, decode_threads=decode_threads,
                              stale_after_s=stale_after_s, open_tiles=open_tiles)
        # max_restarts=0: the pool replaces a lost actor itself (see mixmag.cluster.scheduler)
        actor_class = ray.remote(SlideEmbedder).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0,
                                                        max_task_retries=0)
        logger.info("embedding %d slides on %d Ray workers (%g GPU, %d CPU each)", len(jobs), n_workers, gpus, cpus)
        pool: ActorPool[EmbedJob] = ActorPool(ray, lambda: actor_class.remote(config),
                                              lambda actor: actor.provenance.remote(), n_workers,
                                              start_timeout_s=WORKER_START_TIMEOUT_S)
        try:
            try:
                provenance = pool.wait_first()
            except (ray.exceptions.RayError, TimeoutError) as exc:
                _raise_start_error(exc)
            check_folder(out_dir, provenance, overwrite=overwrite)
            if n := remove_stale_temp_files(out_dir, stale_after_s=None):
                logger.info("removed %d unfinished temporary file(s) of killed runs from %s", n, out_dir)
            summary = _run(ray, pool, jobs, out_dir, settings, provenance["encoder"], fail_fast, progress)
        finally:
            pool.shutdown()
    summary.seconds = time.perf_counter() - t0
    logger.info("embed (ray): %d ok, %d skipped, %d elsewhere, %d errors; %d tiles in %.1f s (%.1f tiles/s)",
                len(summary.ok), len(summary.skipped), len(summary.claimed_elsewhere), len(summary.errors),
                summary.n_tiles, summary.seconds, summary.tiles_per_s)
    return summary


def _run(ray: Any, pool: ActorPool[EmbedJob], jobs: list[EmbedJob], out_dir: Path, settings: EmbedSettings,
         encoder_key: str, fail_fast: bool, progress: bool) -> EmbedSummary:
    """Hand every slide to the pool; merge the outcomes; record the slides whose actors kept dying."""
    summary = EmbedSummary(out_dir=out_dir, encoder=encoder_key)
    manifest = Manifest(out_dir / MANIFEST_NAME)
    usage: list[WorkerUsage] = []
    stop_error: list[SlideEmbeddingError] = []
    bar = tqdm(total=len(jobs), unit="slide", disable=not progress, desc=f"embed {encoder_key} (ray)")

    def on_result(job: EmbedJob, outcome: SlideOutcome) -> bool:
        part = outcome.summary
        summary.ok += part.ok
        summary.skipped += part.skipped
        summary.claimed_elsewhere += part.claimed_elsewhere
        summary.errors.update(part.errors)
        summary.n_tiles += part.n_tiles
        summary.precision, summary.threads = part.precision, part.threads
        usage.append(outcome.usage)
        bar.update(1)
        return False

    def on_failure(job: EmbedJob, exc: BaseException) -> bool:
        cause = getattr(exc, "cause", None)
        bar.update(1)
        if isinstance(cause, SlideEmbeddingError):  # fail_fast: the actor recorded the slide already
            summary.errors[job.slide_id] = str(cause)
            stop_error.append(cause)
            return True
        error = f"its Ray worker failed {settings.ray_max_retries + 1} time(s): {describe_failure(exc)}"
        logger.error("slide %s failed: %s", job.slide_id, error)
        summary.errors[job.slide_id] = error
        manifest.update(job.slide_id, status=Status.ERROR, path=job.region_path, error=error)
        if fail_fast:
            stop_error.append(SlideEmbeddingError(f"slide {job.slide_id}: {error}"))
        return fail_fast

    def retryable(exc: BaseException) -> bool:
        # a mixmag error raised by the call is a message for a person, the same on every node
        return not isinstance(getattr(exc, "cause", None), MixmagError)

    try:
        pool.map(jobs, lambda actor, job: actor.embed.remote(job), max_retries=settings.ray_max_retries,
                 on_result=on_result, on_failure=on_failure, retryable=retryable, label=lambda job: job.slide_id)
    finally:
        bar.close()
    summary.workers = merge_usage(usage)
    if stop_error:
        raise stop_error[0]
    return summary
