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

The loop itself (claim, decode, batch, write) is :func:`mixmag.embed.core.embed_jobs`; with
``backend="ray"`` Ray workers run it slide by slide instead (:mod:`mixmag.embed.ray_backend`).

Memory is bounded by the loader's prefetch (``workers x 2`` chunks of a few regions) plus one batch:
no slide is ever held whole. All workers help with the slides already open before opening new ones,
so even a one-slide cohort is decoded in parallel. Every slide ends as ``ok``/``empty``/``skipped``/``error`` in
``<out>/manifest.csv``; one bad slide never stops the others unless ``fail_fast``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mixmag.cluster.runtime import import_ray
from mixmag.cluster.settings import Backend
from mixmag.embed.claims import DEFAULT_STALE_AFTER_S, ClaimBoard, ClaimOwner
from mixmag.embed.core import MANIFEST_NAME, DecodePlan, EmbedSummary, embed_jobs, plan_decoding
from mixmag.embed.dataset import TileSource, open_region_tiles
from mixmag.embed.jobs import RegionSource, check_folder, discover_jobs
from mixmag.embed.settings import EmbedSettings
from mixmag.encoders import TileEncoder, build_encoder
from mixmag.errors import MixmagValueError
from mixmag.io.regions import RegionIndex
from mixmag.utils.atomic import remove_stale_temp_files
from mixmag.utils.cpus import thread_budget
from mixmag.utils.device import resolve_device

logger = logging.getLogger(__name__)

# re-exported: they lived here before the loop moved to mixmag.embed.core
__all__ = ["MANIFEST_NAME", "DecodePlan", "EmbedSummary", "embed_slides", "plan_decoding"]


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
        settings: Encoder, weights, batch size, precision, device, decoding workers and the
            backend (:class:`~mixmag.embed.settings.EmbedSettings`; its defaults when None).
            ``backend="ray"`` embeds on Ray workers that each build the model once
            (:mod:`mixmag.embed.ray_backend`); files, manifest and resume rules are the same. ``precision``
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
        What this process (backend ray: its Ray workers) did; other processes sharing the folder
        report their own part.

    Raises:
        EmbedConfigError: ``out_dir`` holds features of another encoder / weights.
        SlideEmbeddingError: A slide failed and ``fail_fast`` is set.
        RayUnavailableError: Backend ray, and Ray is not installed or no cluster answers.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    # settings errors first: before any model is built or anything is written
    built = encoder if isinstance(encoder, TileEncoder) else None
    if encoder is not None and built is None:
        options["encoder"] = encoder
    s = (settings if settings is not None else EmbedSettings()).updated(**options)
    precision, batch_size = s.precision, s.batch_size
    if s.backend == Backend.RAY:
        if built is not None:
            raise MixmagValueError("backend ray builds the encoder in each Ray worker: give it as a registry key "
                                   "(encoder=..., weights=...), not as a built TileEncoder")
        import_ray()  # missing: one line naming the extra, before anything is read or written
        from mixmag.embed.ray_backend import embed_on_ray

        return embed_on_ray(region_dir, out, s, shard=shard, overwrite=overwrite, fail_fast=fail_fast,
                            progress=progress, decode_threads=decode_threads, stale_after_s=stale_after_s,
                            open_tiles=open_tiles)
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
        embed_jobs(enc, jobs, out, summary, claims=claims, batch_size=batch_size, precision=precision, decode=decode,
                   threads=threads, overwrite=overwrite, fail_fast=fail_fast, progress=progress,
                   open_tiles=open_tiles)
        summary.seconds = time.perf_counter() - t0
        logger.info("embed: %d ok, %d skipped, %d elsewhere, %d errors; %d tiles in %.1f s (%.1f tiles/s)",
                    len(summary.ok), len(summary.skipped), len(summary.claimed_elsewhere), len(summary.errors),
                    summary.n_tiles, summary.seconds, summary.tiles_per_s)
        return summary
