"""A synthetic H&E-like cohort whose label can only be read by combining magnifications.

``make_synthetic_cohort`` writes, under ``out_dir``::

    slides/<slide_id>.tiff       pyramidal tiled JPEG TIFFs at exactly ``mpp`` µm/px (level 0)
    unlabeled/<slide_id>.tiff    an unlabeled pool for region-encoder pretraining (optional)
    labels.csv                   patient_id, slide_id, label
    region_labels.csv            per grid cell: level-0 box, architecture, nuclei, 0/1 properties
    cohort.json                  parameters, seed and per-region ground truth of every slide
    manifest.csv                 one row per written slide (resume bookkeeping)

Construction (details in docs/concepts/synthetic-cohort.md and :mod:`mixmag.synth.layout`):
every 448-µm region holds a tissue unit whose *architecture* is a ring (visible at 5x, not in one
112-µm 20x tile) or scattered, and whose epithelial *nuclei* are atypical (granular chromatin,
visible at 20x, erased by the 4x box-downsample that makes 5x) or normal. Positive slides hold
ring + atypical regions; negatives hold exactly as many rings and atypical regions, never together.

The same seed gives byte-identical files. Slides are written atomically and recorded in the
manifest, so an interrupted run resumes where it stopped, and a complete cohort with the same
parameters is reused as is (the demo's cache).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixmag.errors import MixmagValueError
from mixmag.io.manifest import Manifest, Status
from mixmag.synth.layout import (
    RING,
    Composition,
    Knobs,
    SlidePlan,
    knobs_from_difficulty,
    plan_slide,
    structure_spec,
)
from mixmag.utils.atomic import atomic_write_json, atomic_write_text
from mixmag.utils.hashing import sha256_text

logger = logging.getLogger(__name__)

COHORT_FORMAT_VERSION = 1
# Bump when the pictures change for the same parameters (invalidates cached cohorts).
GENERATOR_VERSION = 2
_LABELED, _UNLABELED, _ASSIGN = 0, 1, 2  # seed spawn keys


@dataclass(frozen=True)
class SlideRecord:
    """One generated slide.

    Attributes:
        slide_id: File stem and identifier.
        patient_id: Patient the slide belongs to (unlabeled slides have their own pseudo-patients).
        path: Absolute path of the TIFF.
        label: Hidden ground-truth label (also known for unlabeled slides).
        truth: Ground truth per region (see :meth:`mixmag.synth.layout.SlidePlan.to_dict`).
    """

    slide_id: str
    patient_id: str
    path: Path
    label: int
    truth: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class CohortInfo:
    """What :func:`make_synthetic_cohort` wrote.

    Attributes:
        out_dir: Cohort folder.
        slides: Labeled slides, in ``slide_id`` order.
        unlabeled: The unlabeled pretraining pool.
        labels_csv: ``labels.csv`` (patient_id, slide_id, label).
        cohort_json: ``cohort.json`` (parameters and ground truth).
        params: The generation parameters.
        reused: True when an existing complete cohort with the same parameters was returned.
    """

    out_dir: Path
    slides: list[SlideRecord]
    unlabeled: list[SlideRecord]
    labels_csv: Path
    cohort_json: Path
    params: dict[str, Any]
    reused: bool = False

    @property
    def region_labels_csv(self) -> Path:
        """``region_labels.csv``: level-0 box and properties of every cell of every slide."""
        return self.out_dir / "region_labels.csv"

    @property
    def slide_paths(self) -> list[Path]:
        """Paths of the labeled slides."""
        return [s.path for s in self.slides]

    @property
    def unlabeled_paths(self) -> list[Path]:
        """Paths of the unlabeled pool."""
        return [s.path for s in self.unlabeled]

    @property
    def n_positive(self) -> int:
        """Number of positive labeled slides."""
        return sum(s.label for s in self.slides)


@dataclass(frozen=True)
class _Job:
    slide_id: str
    patient_id: str
    path: Path
    label: int
    spawn_key: tuple[int, ...]


def _patient_sizes(rng: np.random.Generator, n_slides: int, per_patient: int | tuple[int, int]) -> list[int]:
    """Number of slides per patient, summing to ``n_slides``."""
    lo, hi = (per_patient, per_patient) if isinstance(per_patient, int) else per_patient
    if lo < 1 or hi < lo:
        raise MixmagValueError(f"slides_per_patient must be >= 1 (or a range lo<=hi), got {per_patient}")
    sizes: list[int] = []
    while sum(sizes) < n_slides:
        sizes.append(int(rng.integers(lo, hi + 1)))
    sizes[-1] -= sum(sizes) - n_slides
    return sizes


def _params(**kwargs: Any) -> dict[str, Any]:
    out = dict(kwargs)
    out["slide_px"] = list(out["slide_px"])
    if not isinstance(out["slides_per_patient"], int):
        out["slides_per_patient"] = list(out["slides_per_patient"])
    out["generator_version"] = GENERATOR_VERSION
    return out


def grid_for(n_regions: int, cell_regions: int = 1) -> tuple[int, int]:
    """(rows, cols) of the structure cells of a realistic-layout slide of about ``n_regions`` regions.

    Each cell spans ``cell_regions x cell_regions`` regions. The slide is one region wider and
    taller than its cell grid (the room for a random offset), so a tiler lays about
    ``(rows * c + 1) x (cols * c + 1)`` regions over it (``c = cell_regions``; for ``c = 1`` the
    most nearly square grid of at least ``n_regions``): the cells, cut at an offset, plus a rim of
    partial regions and filler tissue.
    """
    if cell_regions < 1:
        raise MixmagValueError(f"cell_regions must be >= 1, got {cell_regions}")
    side = math.ceil(math.sqrt(n_regions))
    cols = max(1, int((side - 1) / cell_regions + 0.5))
    rows = max(1, int((math.ceil(n_regions / (cols * cell_regions + 1)) - 1) / cell_regions + 0.5))
    if rows * cols < 2:
        least = 6 if cell_regions == 1 else (2 * cell_regions + 1) * (cell_regions + 1)
        raise MixmagValueError(f"regions={n_regions} leaves fewer than 2 structure cells of {cell_regions}x"
                         f"{cell_regions} regions; use regions >= {least}")
    return rows, cols


def aligned_slide_px(n_regions: int, mpp: float, region_um: float = 448.0) -> tuple[int, int]:
    """Level-0 (width, height) of an aligned-layout slide holding exactly ``n_regions`` cells.

    The grid is ``rows x cols`` with ``rows`` the largest divisor of ``n_regions`` not above its
    square root (8 -> 2 x 4, 9 -> 3 x 3, 12 -> 3 x 4), each cell ``region_um`` at ``mpp``.
    """
    if n_regions < 2:
        raise MixmagValueError(f"an aligned slide needs at least 2 regions, got {n_regions}")
    rows = max(d for d in range(1, math.isqrt(n_regions) + 1) if n_regions % d == 0)
    side_px = round(region_um / mpp)
    return n_regions // rows * side_px, rows * side_px


def _organised(params: dict[str, Any]) -> str:
    """The organised architecture of the cohort's structure (``ring`` for rosettes)."""
    return structure_spec(params.get("structure", "rosette"))[0]


def _knobs(params: dict[str, Any]) -> Knobs:
    knobs = knobs_from_difficulty(params["difficulty"])
    if params.get("stain_jitter") is not None:
        knobs = dataclasses.replace(knobs, stain_jitter=float(params["stain_jitter"]))
    return knobs


def _geometry(rng: np.random.Generator, params: dict[str, Any]) -> tuple[int, int, float, tuple[int, int]]:
    """(width px, height px, mpp, cell-grid origin px) of one slide.

    With ``regions`` set the slide is one region wider and taller than its cell grid and the grid
    starts at a random offset inside that margin, so a tiler's regions fall at random offsets to
    the structures; its level-0 resolution is drawn from the ``mpp`` list.
    """
    if params.get("regions") is None:
        width, height = params["slide_px"]
        return int(width), int(height), float(params["mpp"]), (0, 0)
    choices = params["mpp"] if isinstance(params["mpp"], list) else [params["mpp"]]
    mpp = float(choices[int(rng.integers(len(choices)))])
    c = params.get("cell_regions", 1)
    rows, cols = grid_for(params["regions"], c)
    region_px = params["region_um"] / mpp
    width, height = math.ceil((cols * c + 1) * region_px), math.ceil((rows * c + 1) * region_px)
    # the offset only matters modulo the tiler's region period, so one region of margin is enough
    origin = (int(rng.integers(0, int(region_px))), int(rng.integers(0, int(region_px))))
    return width, height, mpp, origin


def _plan(job: _Job, params: dict[str, Any]) -> tuple[SlidePlan, np.random.SeedSequence]:
    """Plan of one slide (cheap) and the seed its painter uses."""
    plan_seed, paint_seed = np.random.SeedSequence(params["seed"], spawn_key=job.spawn_key).spawn(2)
    rng = np.random.default_rng(plan_seed)
    geometry_rng = np.random.default_rng(np.random.SeedSequence(params["seed"], spawn_key=(*job.spawn_key, 7)))
    width, height, mpp, origin = _geometry(geometry_rng, params)
    composition = None
    structure = params.get("structure", "rosette")
    if params.get("informative_fraction") is not None:
        composition = Composition(params["informative_fraction"], params.get("distractor_fraction"))
    plan = plan_slide(rng, label=job.label, width_px=width, height_px=height, mpp=mpp,
                      region_um=params["region_um"] * params.get("cell_regions", 1), knobs=_knobs(params),
                      composition=composition, origin_px=origin, structure=structure)
    return plan, paint_seed


def _render_job(job: _Job, params: dict[str, Any]) -> tuple[str, float]:
    """Worker: paint and write one slide atomically; returns (slide_id, seconds)."""
    from mixmag.synth.painter import render_slide
    from mixmag.synth.tiff import write_pyramidal_tiff

    t0 = time.perf_counter()
    plan, paint_seed = _plan(job, params)
    rgb = render_slide(plan, paint_seed).rgb
    write_pyramidal_tiff(job.path, rgb, mpp=plan.mpp, n_levels=params["n_levels"],
                         quality=params["jpeg_quality"],
                         description=f"mixmag synthetic slide {job.slide_id}")
    return job.slide_id, time.perf_counter() - t0


def region_label_columns(organised: str = RING) -> tuple[str, ...]:
    """Columns of ``region_labels.csv``; the 5x property column is named after the organised
    architecture of the cohort's structure (``ring`` or ``cords``)."""
    return ("slide_id", "patient_id", "x0", "y0", "x1", "y1", "architecture", "nuclei",
            organised, "atypical", "informative")


def _region_labels_csv(records: Sequence[SlideRecord], organised: str) -> str:
    """Ground truth per grid cell: its level-0 box and 0/1 property columns (one row per cell).

    The boxes are the generator's cells in each slide's own level-0 frame; a tiler's regions
    overlap them at an offset, and ``mixmag diagnose`` maps them onto its regions by area.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(region_label_columns(organised))
    for r in records:
        for cell in r.truth["regions"]:
            x0, y0, size = cell["x_px"], cell["y_px"], cell["size_px"]
            writer.writerow([r.slide_id, r.patient_id, x0, y0, x0 + size, y0 + size, cell["architecture"],
                             cell["nuclei"], int(cell["architecture"] == organised),
                             int(cell["nuclei"] == "atypical"), int(cell["informative"])])
    return buf.getvalue()


def _labels_csv(records: Sequence[SlideRecord]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["patient_id", "slide_id", "label"])
    for r in records:
        writer.writerow([r.patient_id, r.slide_id, r.label])
    return buf.getvalue()


def _jobs(out: Path, params: dict[str, Any]) -> tuple[list[_Job], list[_Job]]:
    """Slide ids, patients, labels and seeds of the labeled cohort and the unlabeled pool."""
    rng = np.random.default_rng(np.random.SeedSequence(params["seed"], spawn_key=(_ASSIGN,)))
    sizes = _patient_sizes(rng, params["n_slides"], params["slides_per_patient"])
    n_pos = int(math.floor(params["prevalence"] * len(sizes) + 0.5))
    patient_labels = rng.permutation(np.r_[np.ones(n_pos, int), np.zeros(len(sizes) - n_pos, int)])
    labeled: list[_Job] = []
    for p, (size, label) in enumerate(zip(sizes, patient_labels, strict=True)):
        for _ in range(size):
            i = len(labeled)
            sid = f"slide_{i:04d}"
            labeled.append(_Job(sid, f"patient_{p:04d}", out / "slides" / f"{sid}.tiff", int(label),
                                (_LABELED, i)))
    pool_labels = rng.random(params["n_unlabeled"]) < params["prevalence"]
    unlabeled = [
        _Job(f"unlabeled_{j:04d}", f"unlabeled_patient_{j:04d}", out / "unlabeled" / f"unlabeled_{j:04d}.tiff",
             int(lab), (_UNLABELED, j))
        for j, lab in enumerate(pool_labels)
    ]
    return labeled, unlabeled


def _validate(n_slides: int, prevalence: float, difficulty: float, slide_px: tuple[int, int],
              mpp: float | Sequence[float], n_unlabeled: int, n_levels: int, regions: int | None,
              stain_jitter: float | None, structure: str | None = None, cell_regions: int = 1) -> None:
    if n_slides < 1:
        raise MixmagValueError(f"n_slides must be >= 1, got {n_slides}")
    if not 0.0 <= prevalence <= 1.0:
        raise MixmagValueError(f"prevalence must be in [0, 1], got {prevalence}")
    if not 0.0 <= difficulty <= 1.0:
        raise MixmagValueError(f"difficulty must be in [0, 1], got {difficulty}")
    if len(slide_px) != 2 or min(slide_px) < 256:
        raise MixmagValueError(f"slide_px must be (width, height) with both >= 256 px, got {slide_px}")
    mpps = [mpp] if isinstance(mpp, (int, float)) else list(mpp)
    if not mpps or any(m <= 0 for m in mpps):
        raise MixmagValueError(f"mpp must be positive (or a non-empty list of positive values), got {mpp}")
    if len(mpps) > 1 and regions is None:
        raise MixmagValueError("a list of mpp values needs `regions` (the slide size then follows each slide's mpp)")
    if regions is not None:
        grid_for(regions, cell_regions)  # raises for too few regions
    elif cell_regions != 1:
        raise MixmagValueError("cell_regions needs the realistic layout (`regions`)")
    if structure is not None:
        structure_spec(structure)  # raises for an unknown name
        if structure != "rosette" and regions is None:
            raise MixmagValueError(f"structure {structure!r} needs the realistic layout (`regions`); the aligned "
                             "layout keeps the demo's rosettes")
    if stain_jitter is not None and not 0.0 <= stain_jitter <= 0.5:
        raise MixmagValueError(f"stain_jitter must lie in [0, 0.5], got {stain_jitter}")
    if n_unlabeled < 0 or n_levels < 1:
        raise MixmagValueError("n_unlabeled must be >= 0 and n_levels >= 1")


def make_synthetic_cohort(
    out_dir: str | os.PathLike[str],
    *,
    n_slides: int = 40,
    prevalence: float = 0.5,
    difficulty: float = 0.5,
    seed: int = 0,
    slide_px: tuple[int, int] = (2688, 1792),
    mpp: float | Sequence[float] = 0.5,
    regions: int | None = None,
    informative_fraction: float | None = None,
    distractor_fraction: float | None = None,
    stain_jitter: float | None = None,
    structure: str | None = None,
    cell_regions: int = 1,
    slides_per_patient: int | tuple[int, int] = 1,
    n_unlabeled: int = 0,
    n_levels: int = 3,
    region_um: float = 448.0,
    jpeg_quality: int = 90,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> CohortInfo:
    """Generate (or reuse) a synthetic multi-scale cohort.

    Two layouts: *aligned* (``regions=None``): every slide is ``slide_px`` at ``mpp`` with the
    cell grid at level-0 (0, 0), the cleanest form of the task; *realistic* (``regions=N``): each
    slide holds about N cells (the most nearly square grid) at a random offset to the slide, so a
    tiler's regions cut through the structures, and its resolution is drawn from ``mpp``.

    Args:
        out_dir: Output folder (created).
        n_slides: Labeled slides.
        prevalence: Fraction of positive *patients* (rounded to a whole number of patients).
        difficulty: 0 (easy) .. 1 (hard): fewer informative regions per positive slide, fainter
            and rarer atypia, less regular rings, more stain variation.
        seed: Everything is a deterministic function of the parameters and this seed.
        slide_px: Level-0 (width, height) in pixels of the aligned layout; the default is
            1.34 x 0.90 mm at 0.5 µm/px, exactly 3 x 2 regions of 448 µm. Use multiples of the
            region side (896 px at 0.5 µm/px): then any tiler that centres its grid on the tissue
            (mixmag does) and keeps only whole regions lands on the generator's grid at (0, 0).
        mpp: Level-0 resolution in µm/px written into the TIFF resolution tags; with ``regions``
            a list (e.g. ``[0.25, 0.5]``) from which each slide draws its own.
        regions: Regions per slide of the realistic layout, about (None = aligned layout); the
            structures fill ``(rows - 1) x (cols - 1)`` cells of that grid (:func:`grid_for`).
        informative_fraction: Share of a positive slide's cells that are informative (ring +
            atypical); None = the difficulty-driven draw (see :class:`~mixmag.synth.layout.Composition`).
        distractor_fraction: Share of cells in each distractor kind (ring + normal, scattered +
            atypical); None = ``informative_fraction``.
        stain_jitter: Per-slide relative stain variation; None = from ``difficulty``.
        structure: What the 5x property looks like (realistic layout only): ``"rosette"`` (None;
            one ring of nests per cell, vs the ring broken into arcs) or ``"cords"`` (parallel rows
            of nests filling the cell, vs the same runs scattered), which survives any
            offset of the region grid (see docs/concepts/synthetic-cohort.md).
        cell_regions: Side of a structure cell in regions (realistic layout only): 2 makes every
            tissue unit 2x2 regions, so most tiled regions lie inside one unit, as regions inside
            a tumour area do.
        slides_per_patient: Slides per patient, fixed or an inclusive (lo, hi) range.
        n_unlabeled: Size of the unlabeled pretraining pool (``unlabeled/``).
        n_levels: Pyramid levels (each a 2x box-downsample).
        region_um: Side of the grid cells that carry the structures.
        jpeg_quality: JPEG quality of the tiles.
        workers: Processes painting slides in parallel.
        overwrite: Regenerate even when ``out_dir`` holds a cohort with other parameters.
        progress: Show a progress bar.

    Returns:
        What was written (or found complete with identical parameters).

    Raises:
        ValueError: On invalid parameters, or when ``out_dir`` holds a cohort generated with
            different parameters and ``overwrite`` is False.
    """
    _validate(n_slides, prevalence, difficulty, slide_px, mpp, n_unlabeled, n_levels, regions, stain_jitter,
              structure, cell_regions)
    Composition(informative_fraction, distractor_fraction)  # validates the fractions
    mpp = float(mpp) if isinstance(mpp, (int, float)) else [float(m) for m in mpp]
    out = Path(out_dir).resolve()
    region_px = region_um / mpp if isinstance(mpp, float) else 0.0
    if regions is None and any(abs(v / region_px - round(v / region_px)) > 1e-9 for v in slide_px):
        logger.warning("slide size %s is not a multiple of the %g-px region side: a tiling grid centred "
                       "on the tissue may not coincide with the generator's grid at (0, 0)",
                       slide_px, region_px)
    params = _params(n_slides=n_slides, prevalence=prevalence, difficulty=difficulty, seed=seed,
                     slide_px=tuple(int(v) for v in slide_px), mpp=mpp,
                     slides_per_patient=slides_per_patient, n_unlabeled=n_unlabeled,
                     n_levels=n_levels, region_um=region_um, jpeg_quality=jpeg_quality)
    realism = {"regions": regions, "informative_fraction": informative_fraction,
               "distractor_fraction": distractor_fraction, "stain_jitter": stain_jitter,
               "structure": None if structure == "rosette" else structure,
               "cell_regions": None if cell_regions == 1 else int(cell_regions)}
    params.update({k: v for k, v in realism.items() if v is not None})
    params_hash = sha256_text(repr(sorted(params.items())))[:16]
    cohort_json = out / "cohort.json"
    labeled, unlabeled = _jobs(out, params)
    all_jobs = labeled + unlabeled
    existing = _existing_params(cohort_json)
    if existing is not None and existing != params and not overwrite:
        raise MixmagValueError(f"{out} already holds a synthetic cohort made with other parameters; "
                         "choose another folder or pass overwrite=True (--overwrite)")

    if existing is not None and existing != params:
        _remove_stale_slides(out, cohort_json, {j.path for j in all_jobs})
    manifest = Manifest(out / "manifest.csv")
    done = {sid for sid, row in manifest.rows().items()
            if row["status"] == Status.OK.value and row.get("params_hash") == params_hash}
    todo = [j for j in all_jobs if not (j.slide_id in done and j.path.exists())]
    reused = not todo and existing == params
    if todo:
        logger.info("painting %d of %d synthetic slides into %s", len(todo), len(all_jobs), out)
        _run_jobs(todo, params, params_hash, manifest, workers, progress)

    records = {j.slide_id: _record(j, params) for j in all_jobs}
    info = CohortInfo(
        out_dir=out, slides=[records[j.slide_id] for j in labeled],
        unlabeled=[records[j.slide_id] for j in unlabeled], labels_csv=out / "labels.csv",
        cohort_json=cohort_json, params=params, reused=reused,
    )
    if not reused:
        atomic_write_text(info.labels_csv, _labels_csv(info.slides))
        atomic_write_text(info.region_labels_csv, _region_labels_csv(info.slides + info.unlabeled,
                                                                        _organised(params)))
        atomic_write_json(cohort_json, _cohort_document(info))
    logger.info("synthetic cohort: %d slides (%d positive), %d unlabeled in %s",
                len(info.slides), info.n_positive, len(info.unlabeled), out)
    return info


def _record(job: _Job, params: dict[str, Any]) -> SlideRecord:
    plan, _ = _plan(job, params)
    return SlideRecord(job.slide_id, job.patient_id, job.path, job.label, plan.to_dict())


def _read_document(cohort_json: Path) -> dict[str, Any] | None:
    if not cohort_json.exists():
        return None
    try:
        doc = json.loads(cohort_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _existing_params(cohort_json: Path) -> dict[str, Any] | None:
    doc = _read_document(cohort_json)
    return None if doc is None else doc.get("params")


def _remove_stale_slides(out: Path, cohort_json: Path, keep: set[Path]) -> None:
    """Delete slides an earlier cohort (other parameters) wrote that the new one does not."""
    doc = _read_document(cohort_json) or {}
    for entry in doc.get("slides", []) + doc.get("unlabeled", []):
        path = (out / entry["path"]).resolve()
        if path not in keep and path.is_relative_to(out) and path.suffix == ".tiff":
            path.unlink(missing_ok=True)
            logger.info("removed %s from the earlier cohort", path)


def _run_jobs(jobs: list[_Job], params: dict[str, Any], params_hash: str, manifest: Manifest,
              workers: int, progress: bool) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="synth", unit="slide", disable=not progress)

    def record(slide_id: str, seconds: float, path: Path) -> None:
        manifest.update(slide_id, status=Status.OK, path=path, seconds=seconds, params_hash=params_hash)
        bar.update(1)

    try:
        if workers <= 1 or len(jobs) == 1:
            for job in jobs:
                record(*_render_job(job, params), job.path)
            return
        # fork is cheap and safe here (workers use numpy/PIL/tifffile only); spawn elsewhere.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method)) as pool:
            futures = {pool.submit(_render_job, job, params): job for job in jobs}
            for fut, job in futures.items():
                record(*fut.result(), job.path)
    finally:
        bar.close()


def _cohort_document(info: CohortInfo) -> dict[str, Any]:
    """The JSON ground truth: parameters, difficulty knobs, region grid and every slide."""
    p = info.params

    def slide_entry(r: SlideRecord) -> dict[str, Any]:
        return {"slide_id": r.slide_id, "patient_id": r.patient_id,
                "path": str(r.path.relative_to(info.out_dir)), **r.truth}

    return {
        "format_version": COHORT_FORMAT_VERSION,
        "generator": "mixmag.synth.make_synthetic_cohort",
        "params": p,
        "knobs": _knobs(p).to_dict(),
        "region_grid": {"origin_level0": "per slide (origin_px)" if p.get("regions") else [0, 0],
                        "region_um": p["region_um"],
                        "region_px_level0": "per slide (region_um / mpp)" if isinstance(p["mpp"], list)
                        else p["region_um"] / p["mpp"]},
        "label_rule": f"label = 1 iff some region has architecture '{_organised(p)}' AND nuclei 'atypical'",
        "slides": [slide_entry(r) for r in info.slides],
        "unlabeled": [slide_entry(r) for r in info.unlabeled],
    }
