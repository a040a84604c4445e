"""``mixmag tile``: region indices for a batch of slides, resumable and crash-safe.

Per slide ``<id>`` the run folder receives::

    regions/<id>.h5          region index (docs/formats/region-index.md), written atomically
    regions/manifest.csv     one row per slide: status ok/skipped/error/empty, n_items = regions,
                             warnings = input sanity warnings ("code: message | ...")
    qc/<id>.png              thumbnail + tissue outline + region grid + invalid 20x tiles
    tissue/<id>.geojson      tissue polygons in level-0 px (QuPath: File > Import objects)
    tile_run.json            parameters and environment of the last run

A slide is skipped when its region file is complete and carries the same slide hash and
parameter fingerprint (an empty slide: when its manifest row does). A killed run leaves only
``.*.tmp`` files, never a partial ``.h5``; they are removed at the next start. One bad slide never
stops the batch: it gets status ``error`` (or ``empty``) with a one-line reason.

Input sanity (:mod:`mixmag.slides.sanity`): a slide whose pixels would be tiled wrongly (16-bit
samples, several fluorescence channels) is an ``error``; a doubtful one (greyscale, a dark
fluorescence-like background, almost no tissue) is tiled and its warnings are logged, written to
the manifest's ``warnings`` column and the region index's ``input_warnings`` attribute, and counted
by :attr:`TileSummary.n_warned`.

Slides run in this process, in ``workers`` local processes, or (``backend="ray"``) as one Ray task
each on a cluster (docs/cluster.md); every way runs :func:`tile_one_slide` and records its result
here, so files, manifest and resume rules do not depend on the backend.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mixmag._version import __version__
from mixmag.cluster.runtime import (
    WorkerUsage,
    call_with_usage,
    describe_failure,
    import_ray,
    merge_usage,
    ray_session,
)
from mixmag.cluster.scheduler import run_tasks
from mixmag.cluster.settings import Backend
from mixmag.errors import MixmagValueError, one_line
from mixmag.geometry import RegionSpec, magnification_label
from mixmag.io.manifest import Manifest, Status, read_manifest
from mixmag.io.regions import RegionIndex, write_region_index
from mixmag.slides import READERS  # the package registers every built-in backend
from mixmag.slides.base import MppInfo, SlideError, SlideReader
from mixmag.slides.geojson import write_tissue_geojson
from mixmag.slides.mpp import resolve_mpp
from mixmag.slides.opener import open_slide
from mixmag.slides.sanity import check_pixel_format, probe_pixel_format
from mixmag.slides.tissue import TissueMask, TissueParams
from mixmag.tiling.extract import ReadPlan, RegionTileReader
from mixmag.tiling.grid import grid_coords
from mixmag.tiling.inputs import TilingJob, collect_slides, read_mpp_csv
from mixmag.tiling.qc import write_qc
from mixmag.tiling.resume import complete_region_count, recorded_warnings
from mixmag.tiling.settings import GEOMETRY_FIELDS, TilingSettings
from mixmag.tiling.slide import PROBED_READERS, index_slide
from mixmag.utils.atomic import atomic_write_json, remove_stale_temp_files
from mixmag.utils.cpus import usable_cpus
from mixmag.utils.env import git_sha
from mixmag.utils.hashing import quick_file_hash, sha256_text

logger = logging.getLogger(__name__)

#: Joins a slide's input warnings in the manifest's ``warnings`` column.
WARNING_SEPARATOR = " | "
#: CPUs a slide's Ray task reserves (backend ray): one slide is tiled on one thread.
RAY_CPUS_PER_SLIDE = 1


@dataclass(frozen=True)
class TileOptions:
    """Everything that determines a slide's region index (picklable for worker processes)."""

    spec: RegionSpec
    min_tissue: float
    valid_min_tissue: float
    reader: str | None
    thumbnail_px: int
    tissue: TissueParams
    resample: str = "box"
    verify_reads: int = 3
    overwrite: bool = False

    def fingerprint(self, mpp_override: float | None) -> str:
        """Hash of the parameters that change the output (resume compares it)."""
        payload = {
            "spec": self.spec.to_dict(), "min_tissue": self.min_tissue, "valid_min_tissue": self.valid_min_tissue,
            "reader": self.reader, "thumbnail_px": self.thumbnail_px, "tissue": self.tissue.to_dict(),
            "resample": self.resample, "mpp_override": mpp_override,
        }
        return sha256_text(json.dumps(payload, sort_keys=True))[:16]


@dataclass
class SlideResult:
    """Outcome of one slide (one manifest row)."""

    slide_id: str
    path: str
    status: Status
    n_regions: int | None = None
    seconds: float = 0.0
    error: str = ""
    output: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # "code: message" (mixmag.slides.sanity.InputWarning)


@dataclass
class TileSummary:
    """What a :func:`tile_slides` run did.

    Attributes:
        out_dir: Run folder.
        results: One entry per slide processed in this run (in completion order).
        n_inputs: Slides found in the inputs.
        stopped_early: True when ``fail_fast`` stopped the batch at the first error.
        workers: Backend ray: each Ray worker process that tiled slides, with its peak memory.
    """

    out_dir: Path
    results: list[SlideResult]
    n_inputs: int
    stopped_early: bool = False
    workers: list[WorkerUsage] = field(default_factory=list)

    def count(self, status: Status) -> int:
        """Number of slides with ``status``."""
        return sum(r.status == status for r in self.results)

    @property
    def n_regions(self) -> int:
        """Regions indexed over all ok/skipped slides."""
        return sum(r.n_regions or 0 for r in self.results if r.status in (Status.OK, Status.SKIPPED))

    @property
    def n_warned(self) -> int:
        """Slides (of any status) that carry input sanity warnings."""
        return sum(bool(r.warnings) for r in self.results)

    @property
    def all_failed(self) -> bool:
        """True when there were slides and every one of them ended in ``error``."""
        return bool(self.results) and all(r.status == Status.ERROR for r in self.results)

    @property
    def manifest_path(self) -> Path:
        """``<out>/regions/manifest.csv``."""
        return self.out_dir / "regions" / "manifest.csv"


def _verify_reads(reader: SlideReader, index: RegionIndex, options: TileOptions, n: int) -> None:
    """Decode ``n`` regions spread over the slide, so a damaged file fails now, not at embed time."""
    if n <= 0 or index.n_regions == 0:
        return
    tiles = RegionTileReader(reader, index, resample=options.resample)
    picks = sorted({round(i * (index.n_regions - 1) / max(1, n - 1)) for i in range(n)})
    for region in picks:
        tiles.read_region_mosaic(region)


def tile_one_slide(
    job: TilingJob, options: TileOptions, out_dir: Path, previous: dict[str, str] | None = None
) -> SlideResult:
    """Tile one slide (runs in a worker process); never raises for a bad slide.

    Args:
        job: The slide and its mpp override.
        options: Tiling parameters.
        out_dir: Run folder.
        previous: This slide's row of an earlier manifest (to resume ``empty`` slides).
    """
    start = time.perf_counter()
    result = SlideResult(slide_id=job.slide_id, path=str(job.path), status=Status.ERROR)
    try:
        _tile(job, options, out_dir, previous, result)
    except SlideError as exc:  # includes MppError: messages are written for the user
        result.status, result.error = Status.ERROR, str(exc)
    except Exception as exc:  # any other failure of this slide is recorded; the batch goes on
        logger.debug("%s failed", job.slide_id, exc_info=True)
        result.status, result.error = Status.ERROR, f"{job.path.name}: {one_line(exc)}"
    result.seconds = time.perf_counter() - start
    return result


def _index_attrs(
    job: TilingJob, reader: SlideReader, mpp: MppInfo, plan: ReadPlan, tissue: TissueMask, options: TileOptions,
    hashes: dict[str, Any],
) -> dict[str, Any]:
    """Provenance attributes of a region index (documented in docs/formats/region-index.md)."""
    props = reader.properties
    w, h = reader.dimensions
    return {
        "slide_id": job.slide_id, "slide_path": str(job.path.resolve()), "slide_hash": hashes["slide_hash"],
        "params_hash": hashes["params_hash"], "reader": reader.name, "vendor": props.vendor,
        "objective_power": props.objective_power, "mpp_source": mpp.source,
        "mpp_level0_y": mpp.mpp_y if mpp.mpp_y is not None else mpp.mpp,
        "achieved_mpps": [plan.achieved_mpps[m] for m in options.spec.mpps], "read_level": plan.level,
        "read_downsample": plan.downsample, "read_mpp": plan.level_mpp, "resample": options.resample,
        "level0_width": w, "level0_height": h,
        "tissue_params": {
            **options.tissue.to_dict(), "min_tissue": options.min_tissue,
            "valid_min_tissue": options.valid_min_tissue, "thumbnail_px": options.thumbnail_px,
            "detected_background": tissue.background, "threshold": tissue.threshold, "mask_mpp_actual": tissue.mpp,
        },
        "tissue_fraction_slide": tissue.tissue_fraction_total,
    }


def _tile(job: TilingJob, options: TileOptions, out_dir: Path, previous: dict[str, str] | None, result: SlideResult) -> None:
    region_path = out_dir / "regions" / f"{job.slide_id}.h5"
    if not job.path.is_file():
        raise SlideError(f"{job.path}: file not found")
    slide_hash = quick_file_hash(job.path)
    params_hash = options.fingerprint(job.mpp_override)
    result.extra.update(slide_hash=slide_hash, params_hash=params_hash)
    if options.reader is None or options.reader in PROBED_READERS:
        try:  # also before resuming: an index written before this check existed would be wrong
            check_pixel_format(probe_pixel_format(job.path), job.path.name)
        except SlideError:
            region_path.unlink(missing_ok=True)
            raise
    if not options.overwrite:
        n_done = complete_region_count(region_path, slide_hash, params_hash)
        if n_done is not None:
            result.status, result.n_regions, result.output = Status.SKIPPED, n_done, str(region_path)
            result.warnings = recorded_warnings(region_path)
            return
        if (
            previous and previous.get("status") == Status.EMPTY.value
            and previous.get("slide_hash") == slide_hash and previous.get("params_hash") == params_hash
        ):
            result.status, result.n_regions, result.error = Status.EMPTY, 0, previous.get("error", "")
            result.warnings = [w for w in previous.get("warnings", "").split(WARNING_SEPARATOR) if w]
            return

    spec = options.spec
    with open_slide(job.path, options.reader) as reader:
        mpp = resolve_mpp(reader, job.mpp_override)
        w, h = reader.dimensions
        result.extra.update(reader=reader.name, mpp=f"{mpp.mpp:.6g}", mpp_source=mpp.source)
        if len(grid_coords((w, h), spec.region_size_level0(mpp.mpp))) == 0:
            region_path.unlink(missing_ok=True)
            result.status, result.n_regions = Status.EMPTY, 0
            result.error = (
                f"slide is {w * mpp.mpp:.0f} x {h * mpp.mpp:.0f} µm ({w} x {h} px at {mpp.mpp:.4g} µm/px), "
                f"smaller than one {spec.region_um:g} µm region; nothing to tile (a smaller --region-um would fit)"
            )
            return
        regions = index_slide(  # the same per-slide core as the in-memory path (mixmag.embed_slide)
            reader, mpp.mpp, spec, min_tissue=options.min_tissue, valid_min_tissue=options.valid_min_tissue,
            thumbnail_px=options.thumbnail_px, tissue_params=options.tissue, resample=options.resample,
            log_warnings=False,  # logged by the main process when the result is recorded (_record)
        )
        index, thumb, tissue, plan = regions.index, regions.thumbnail, regions.tissue, regions.plan
        result.warnings = [str(w) for w in regions.warnings]
        index.attrs.update(_index_attrs(job, reader, mpp, plan, tissue, options, result.extra))
        valid_pct = 100.0 * float(index.tile_valid.mean()) if index.n_regions else 0.0
        caption = (
            f"{job.slide_id}  {mpp.mpp:.4g} um/px ({mpp.source})  {index.n_regions} regions  "
            f"{valid_pct:.0f}% tokens valid  read level {plan.level}"
        )
        if regions.warnings:
            caption += "  warnings: " + ", ".join(w.code for w in regions.warnings)
        write_qc(out_dir / "qc" / f"{job.slide_id}.png", thumb, tissue, index, caption)
        write_tissue_geojson(out_dir / "tissue" / f"{job.slide_id}.geojson", tissue)
        result.extra.update(tissue_pct=f"{100 * tissue.tissue_fraction_total:.1f}", valid_token_pct=f"{valid_pct:.1f}")
        if index.n_regions == 0:
            region_path.unlink(missing_ok=True)  # an index from earlier parameters is now wrong
            result.status, result.n_regions = Status.EMPTY, 0
            result.error = (
                f"no region has >= {options.min_tissue:g} tissue at {magnification_label(spec.mpps[0])} "
                f"(tissue covers {100 * tissue.tissue_fraction_total:.1f}% of the slide); see qc/{job.slide_id}.png"
            )
            return
        _verify_reads(reader, index, options, options.verify_reads)
    write_region_index(region_path, index)
    result.status, result.n_regions, result.output = Status.OK, index.n_regions, str(region_path)


_ENV_PACKAGES = ("numpy", "pillow", "h5py", "openslide-python", "openslide-bin", "tiffslide", "tifffile",
                 "imagecodecs", "scikit-image", "scipy")


def _environment() -> dict[str, Any]:
    """Versions that affect tiling. (utils.env.environment_info imports torch: 0.5 GB for nothing here.)"""
    versions: dict[str, str | None] = {}
    for name in _ENV_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"mixmag": __version__, "python": platform.python_version(), "platform": platform.platform(),
            "packages": versions, "git_sha": git_sha()}


@contextlib.contextmanager
def _executor(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    if workers <= 1:
        yield None
        return
    # spawn, not fork: slide libraries hold threads and file handles that do not survive a fork
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _tile_on_ray(jobs: Sequence[TilingJob], options: TileOptions, out_dir: Path,
                 previous_rows: dict[str, dict[str, str]], settings: TilingSettings,
                 finish: Callable[[SlideResult], bool]) -> tuple[bool, list[WorkerUsage]]:
    """Backend ray: :func:`tile_one_slide` as one Ray task per slide; returns (stopped, workers).

    The task runs the same function as a local worker process, so a slide's files are the same
    whichever backend wrote them; it writes them on its node, into ``out_dir`` (a filesystem every
    node sees). This process records each result as it arrives, as the local loop does. Ray runs
    a task whose worker or node died again (``ray_max_retries`` times); after that the slide is
    recorded as ``error``. A slide error with a reason (an unreadable file) is no failed task: it
    is recorded at once, since another attempt would give the same reason.
    """
    usage: list[WorkerUsage] = []
    with ray_session(settings.ray_address) as ray:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        in_flight = settings.ray_workers or max(1, cpus // RAY_CPUS_PER_SLIDE)
        logger.info("tiling %d slides as Ray tasks, %d at a time", len(jobs), in_flight)
        # retry_exceptions: tile_one_slide records every slide error itself, so an exception that
        # escapes the task is the machinery's (a result that cannot be sent back, a lost object)
        task = ray.remote(call_with_usage).options(num_cpus=RAY_CPUS_PER_SLIDE, max_retries=settings.ray_max_retries,
                                                   retry_exceptions=True)

        def on_result(job: TilingJob, value: tuple[SlideResult, WorkerUsage]) -> bool:
            usage.append(value[1])
            return finish(value[0])

        def on_failure(job: TilingJob, exc: BaseException) -> bool:
            error = f"its Ray task failed {settings.ray_max_retries + 1} time(s): {describe_failure(exc)}"
            return finish(SlideResult(job.slide_id, str(job.path), Status.ERROR, error=error))

        stopped = run_tasks(
            ray, jobs, lambda job: task.remote(tile_one_slide, job, options, out_dir, previous_rows.get(job.slide_id)),
            max_in_flight=in_flight, on_result=on_result, on_failure=on_failure)
    return stopped, merge_usage(usage)


def _record(manifest: Manifest, r: SlideResult) -> None:
    manifest.update(
        r.slide_id, status=r.status, path=r.path, n_items=r.n_regions, seconds=r.seconds,
        error=r.error, output=r.output or None, warnings=WARNING_SEPARATOR.join(r.warnings), **r.extra,
    )
    level = logging.WARNING if r.status == Status.ERROR else logging.INFO
    details = f" ({r.n_regions} regions)" if r.n_regions else ""
    if r.error:
        details += f" - {r.error}"
    logger.log(level, "%s: %s%s", r.slide_id, r.status.value, details)
    if r.status != Status.SKIPPED:  # a resumed slide's warnings were shown by the run that tiled it
        for w in r.warnings:
            logger.warning("%s: %s", r.slide_id, w)


def tile_slides(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    settings: TilingSettings | None = None,
    spec: RegionSpec | None = None,
    mpp_override: float | None = None,
    mpp_csv: str | os.PathLike[str] | None = None,
    reader: str | None = None,
    tissue_params: TissueParams | None = None,
    resample: str = "box",
    overwrite: bool = False,
    fail_fast: bool = False,
    progress: bool = True,
    **options: Any,
) -> TileSummary:
    """Build region indices, QC pictures and tissue GeoJSON for every input slide.

    Args:
        inputs: Slide files, folders (searched recursively) and/or CSV lists (``path``[, ``mpp``]).
        out_dir: Run folder (created).
        settings: Region geometry, tissue thresholds, thumbnail size, worker processes and the
            backend (:class:`~mixmag.tiling.settings.TilingSettings`; its defaults when None).
            ``backend="ray"`` runs :func:`tile_one_slide` as one Ray task per slide on the cluster
            at ``ray_address`` (docs/cluster.md); files, manifest and resume rules are the same.
        spec: The region geometry as a :class:`~mixmag.geometry.RegionSpec`, used as given instead
            of ``settings.region_um``/``tile_px``/``magnifications`` (not together with them as
            ``options``).
        mpp_override: Level-0 µm/px for every slide (beats metadata; a CSV row beats it).
        mpp_csv: ``slide,mpp`` table of per-slide overrides.
        reader: Force a backend; default by extension and priority.
        tissue_params: Tissue-detection settings.
        resample: Filter used to reach the exact target mpp ("box" area average or "lanczos").
        overwrite: Recompute slides even when a matching complete output exists.
        fail_fast: Stop at the first slide that errors.
        progress: Show a progress bar.
        **options: Single :class:`~mixmag.tiling.settings.TilingSettings` fields replacing those
            of ``settings`` (e.g. ``min_tissue=0.5, thumbnail_px=1024, workers=4``); unknown names
            and invalid values raise :class:`~mixmag.errors.MixmagValueError`.

    Returns:
        A summary; per-slide outcomes are also in ``<out>/regions/manifest.csv``.
    """
    out = Path(out_dir)
    s = (settings if settings is not None else TilingSettings()).updated(**options)
    if spec is None:
        spec = s.region_spec()
    elif given := sorted(set(options) & set(GEOMETRY_FIELDS)):
        raise MixmagValueError(f"give the region geometry either as spec or as {', '.join(given)}, not both")
    tile_options = TileOptions(
        spec=spec, min_tissue=s.min_tissue, valid_min_tissue=s.valid_min_tissue, reader=reader,
        thumbnail_px=s.thumbnail_px, tissue=tissue_params or TissueParams(), resample=resample, overwrite=overwrite,
    )
    on_ray = s.backend == Backend.RAY
    if on_ray:
        import_ray()  # missing: one line naming the extra, before anything is written
    workers, budget = s.workers, usable_cpus()
    if workers > budget.cores and not on_ray:  # more CPU-bound processes than cores only time-slice (and thrash caches)
        logger.info("tiling: %d worker processes capped at the %d usable CPU cores (of %d on the machine)",
                    workers, budget.cores, budget.machine)
        workers = budget.cores
    if reader is not None:
        READERS.entry(reader)  # unknown backend: fail now with close matches, not once per slide
    table = read_mpp_csv(mpp_csv) if mpp_csv is not None else None
    jobs = collect_slides(list(inputs), mpp_override=mpp_override, mpp_table=table, exclude=out)
    if not jobs:
        raise MixmagValueError(f"no slides found in {', '.join(map(str, inputs))}")
    for sub in ("regions", "qc", "tissue"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        if n := remove_stale_temp_files(out / sub):
            logger.info("removed %d unfinished temporary file(s) from %s", n, out / sub)
    run_record: dict[str, Any] = {
        "inputs": [str(i) for i in inputs], "n_slides": len(jobs), "spec": spec.to_dict(),
        "options": {k: v for k, v in asdict(tile_options).items() if k != "spec"},
        "mpp_override": mpp_override, "mpp_csv": None if mpp_csv is None else str(mpp_csv),
        "workers": workers, "cpu_budget": budget.to_dict(), "environment": _environment(),
    }
    if on_ray:  # where the slides were tiled; never part of what a region index depends on
        run_record["ray"] = {"address": s.ray_address, "workers": s.ray_workers, "max_retries": s.ray_max_retries}
    atomic_write_json(out / "tile_run.json", run_record)
    manifest = Manifest(out / "regions" / "manifest.csv")
    previous_rows = read_manifest(manifest.path)
    summary = TileSummary(out_dir=out, results=[], n_inputs=len(jobs))
    bar = tqdm(total=len(jobs), unit="slide", disable=not progress, desc="tile")

    def finish(r: SlideResult) -> bool:
        _record(manifest, r)
        summary.results.append(r)
        bar.update(1)
        return fail_fast and r.status == Status.ERROR

    if on_ray:
        summary.stopped_early, summary.workers = _tile_on_ray(jobs, tile_options, out, previous_rows, s, finish)
        bar.close()
        _warn_inputs(summary)
        return summary
    with _executor(workers) as pool:
        if pool is None:
            for job in jobs:
                if finish(tile_one_slide(job, tile_options, out, previous_rows.get(job.slide_id))):
                    summary.stopped_early = True
                    break
        else:
            futures: dict[Future[SlideResult], TilingJob] = {
                pool.submit(tile_one_slide, job, tile_options, out, previous_rows.get(job.slide_id)): job for job in jobs
            }
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    r = fut.result()
                except BrokenProcessPool as exc:  # a native crash in a slide library kills the worker
                    r = SlideResult(job.slide_id, str(job.path), Status.ERROR,
                                    error=f"worker process died while processing the batch ({exc})")
                except Exception as exc:  # e.g. the result could not be sent back
                    r = SlideResult(job.slide_id, str(job.path), Status.ERROR, error=one_line(exc))
                if finish(r):
                    summary.stopped_early = True
                    for other in futures:
                        other.cancel()
                    break
    bar.close()
    _warn_inputs(summary)
    return summary


def _warn_inputs(summary: TileSummary) -> None:
    if summary.n_warned:
        warned = sorted(r.slide_id for r in summary.results if r.warnings)
        logger.warning("%d of %d slides have input warnings (%s%s); see the 'warnings' column of %s",
                       summary.n_warned, len(summary.results), ", ".join(warned[:5]),
                       " ..." if len(warned) > 5 else "", summary.manifest_path)
