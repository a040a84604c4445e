"""Geometry plan of one synthetic slide: which region holds which structure, and where.

The plan is pure geometry (µm and level-0 pixels) drawn from a seeded generator; it decides the
slide's ground truth before any pixel is painted (:mod:`mixmag.synth.painter` paints it).

Every full 448-µm cell of the region grid (origin at level-0 (0, 0), the default tiling grid) holds
one *tissue unit*: ~8-20 epithelial nests plus one lumen, arranged either as a **ring** (nests on a
circle around the lumen, a rosette/gland 190-350 µm across) or **scattered** (a broken ring: the
same nests cut into arcs of 2-3 that keep the ring's spacing and curvature, moved and turned at
random, and the same lumen elsewhere in the cell).
Independently the unit's epithelial nuclei are **atypical** (granular chromatin) or **normal**.
A slide is positive when at least one cell is ring + atypical ("informative"); negatives hold the
same number of ring cells and of atypical cells, but never in the same cell.

That is the ``rosette`` structure. The ``cords`` structure (:data:`STRUCTURES`) replaces the ring by
parallel dashed rows of nests filling the cell and its broken counterpart by the same runs
scattered; it is meant for cells of several regions (``cell_regions`` of
:func:`mixmag.synth.make_synthetic_cohort`), whose property survives any offset of the region grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixmag.errors import MixmagRuntimeError, MixmagValueError

RING = "ring"
CORDS = "cords"
SCATTERED = "scattered"
ATYPICAL = "atypical"
NORMAL = "normal"

# Ring radius (nest centres) in µm: with nests of radius 15-22 µm the outer diameter is ~190-350 µm,
# more than a 112-µm 20x tile and less than the 448-µm 5x tile.
RING_RADIUS_UM = (80.0, 150.0)
NEST_RADIUS_UM = (15.0, 22.0)
NEST_SPACING_UM = (48.0, 58.0)  # centre-to-centre along the ring
LUMEN_FRACTION = (0.35, 0.5)  # lumen radius / ring radius
CELL_MARGIN_UM = 8.0  # keep every structure this far inside its cell
# Cords: parallel dashed rows of nests across the whole cell. The rows are further apart than a
# 112-µm 20x tile is wide, so a 20x tile sees a piece of one run, as in the scattered layout.
CORD_GAP_UM = (115.0, 140.0)
CORD_SPACING_UM = (38.0, 44.0)  # nests almost touch along a run
CORD_RUN = (5, 6)  # nests per run: a run spans ~190-260 µm, longer than a 112-µm 20x tile
CORD_SKIP = 2  # nests left out between runs of a row: a ~90-µm gap, so a 20x tile rarely sees
# the next run of the same row, and runs end as often in the cords as in the scattered layout


@dataclass(frozen=True)
class Knobs:
    """Per-cohort settings derived from ``difficulty`` (see :func:`knobs_from_difficulty`).

    Attributes:
        atypical_gain: Amplitude of the granular chromatin pattern of atypical nuclei, as a
            fraction of the largest amplitude that keeps opacity in [0, 1]; normal nuclei use
            ``normal_gain``.
        normal_gain: Amplitude of the faint chromatin grain of normal nuclei.
        atypical_fraction: Share of the epithelial nuclei of an atypical unit that are atypical.
        ring_jitter: Radial jitter of ring nests as a fraction of the ring radius.
        stain_jitter: Per-slide relative variation of the stain colours.
        informative_share: Share of a positive slide's ring cells that are also atypical.
    """

    atypical_gain: float
    normal_gain: float
    atypical_fraction: float
    ring_jitter: float
    stain_jitter: float
    informative_share: float

    def to_dict(self) -> dict[str, float]:
        """JSON form."""
        return {k: float(v) for k, v in self.__dict__.items()}


def knobs_from_difficulty(difficulty: float) -> Knobs:
    """Map ``difficulty`` in [0, 1] to generator settings (0 = easy, 1 = hard).

    Harder means fewer informative cells per positive slide, fainter and rarer atypia, less
    regular rings and more stain variation between slides.
    """
    if not 0.0 <= difficulty <= 1.0:
        raise MixmagValueError(f"difficulty must be in [0, 1], got {difficulty}")

    def lerp(easy: float, hard: float) -> float:
        return easy + (hard - easy) * difficulty

    return Knobs(
        atypical_gain=lerp(0.95, 0.6),
        normal_gain=0.12,
        atypical_fraction=lerp(1.0, 0.6),
        ring_jitter=lerp(0.03, 0.12),
        stain_jitter=lerp(0.03, 0.10),
        informative_share=lerp(1.0, 0.0),
    )


@dataclass(frozen=True)
class Composition:
    """How many grid cells of each kind a slide holds, as fractions of its cells.

    ``None`` (the default for both) keeps the difficulty-driven draw of :func:`plan_slide`. When
    ``informative_fraction`` is set, a slide of ``n`` cells holds about ``k = f * n`` informative
    (ring + atypical) cells if positive, and ``j = d * n`` *distractor pairs*: ring cells with normal
    nuclei and scattered cells with atypical nuclei. A negative slide holds ``k + j`` of each
    distractor instead, so both classes show the same number of rings and of atypical cells.
    Each slide scales ``k`` and ``j`` by one uniform draw in [0.5, 1.5] (the same distribution for
    both labels), so slides differ in how much of them carries the signal, as real slides do.

    Attributes:
        informative_fraction: Share ``f`` of a positive slide's cells that are ring + atypical.
        distractor_fraction: Share ``d`` of cells in each distractor kind; None = ``f``.
    """

    informative_fraction: float | None = None
    distractor_fraction: float | None = None

    def __post_init__(self) -> None:
        for name in ("informative_fraction", "distractor_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 0.5:
                raise MixmagValueError(f"{name} must lie in [0, 0.5], got {value}")
        if self.informative_fraction is None and self.distractor_fraction is not None:
            raise MixmagValueError("distractor_fraction needs informative_fraction")

    def counts(self, rng: np.random.Generator, n_cells: int) -> tuple[int, int]:
        """(k informative cells of a positive slide, j distractor pairs) for one slide."""
        f = float(self.informative_fraction or 0.0)
        d = f if self.distractor_fraction is None else float(self.distractor_fraction)
        scale_k, scale_j = rng.uniform(0.5, 1.5, 2)
        k = max(1, int(round(f * n_cells * scale_k)))
        j = int(round(d * n_cells * scale_j))
        # a negative slide needs k + j ring cells and k + j atypical cells, never together
        k = min(k, n_cells // 2)
        j = max(0, min(j, n_cells // 2 - k))
        return k, j


@dataclass
class RegionPlan:
    """Ground truth of one full grid cell (= one default 448-µm region).

    Attributes:
        row: Grid row (y) of the cell.
        col: Grid column (x) of the cell.
        x_px: Level-0 x of the cell's top-left corner.
        y_px: Level-0 y of the cell's top-left corner.
        size_px: Cell side in level-0 pixels.
        architecture: ``"ring"`` or ``"scattered"``.
        nuclei: ``"atypical"`` or ``"normal"`` (the epithelial nuclei of this cell's unit).
        centre_um: (x, y) centre of the unit (ring centre) in slide µm.
        radius_um: Ring radius (nest centres) in µm; scattered units use the same extent.
        lumen_um: (x, y, r) of the unit's lumen in slide µm.
        nests_um: (n, 3) nests as (x, y, r) in slide µm.
    """

    row: int
    col: int
    x_px: int
    y_px: int
    size_px: int
    architecture: str
    nuclei: str
    centre_um: tuple[float, float]
    radius_um: float
    lumen_um: tuple[float, float, float]
    nests_um: np.ndarray

    @property
    def informative(self) -> bool:
        """True when the cell combines the organised architecture (ring, cords) with atypical nuclei."""
        return self.architecture != SCATTERED and self.nuclei == ATYPICAL

    def to_dict(self) -> dict[str, Any]:
        """JSON form (µm values rounded to 0.01)."""
        return {
            "row": self.row, "col": self.col, "x_px": self.x_px, "y_px": self.y_px,
            "size_px": self.size_px, "architecture": self.architecture, "nuclei": self.nuclei,
            "informative": self.informative,
            "centre_um": [round(v, 2) for v in self.centre_um],
            "radius_um": round(self.radius_um, 2),
            "lumen_um": [round(v, 2) for v in self.lumen_um],
            "n_nests": int(len(self.nests_um)),
        }


@dataclass
class SlidePlan:
    """Everything that decides one slide's content, in level-0 pixels and µm.

    Attributes:
        width_px: Level-0 width.
        height_px: Level-0 height.
        mpp: Level-0 resolution, µm/px.
        region_um: Side of a grid cell, µm.
        label: 1 when some region is informative, else 0.
        regions: One plan per full grid cell, row-major.
        filler_nests_um: (n, 3) nests (x, y, r, µm) in the partial strips right/below the full
            grid; their nuclei are always normal.
        knobs: Difficulty settings.
        origin_px: Level-0 (x, y) of the first cell's top-left corner.
        structure: Key of :data:`STRUCTURES` the cells were drawn with.
    """

    width_px: int
    height_px: int
    mpp: float
    region_um: float
    label: int
    regions: list[RegionPlan]
    filler_nests_um: np.ndarray
    knobs: Knobs
    origin_px: tuple[int, int] = (0, 0)
    structure: str = "rosette"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def organised(self) -> str:
        """Name of this slide's organised (5x-visible) architecture, e.g. ``"ring"``."""
        return structure_spec(self.structure)[0]

    @property
    def n_informative(self) -> int:
        """Number of ring + atypical cells."""
        return sum(r.informative for r in self.regions)

    def to_dict(self) -> dict[str, Any]:
        """JSON ground truth of the slide."""
        return {
            "label": self.label, "width_px": self.width_px, "height_px": self.height_px,
            "mpp": self.mpp, "region_um": self.region_um, "origin_px": list(self.origin_px),
            f"n_{self.organised}": sum(r.architecture == self.organised for r in self.regions),
            "n_atypical": sum(r.nuclei == ATYPICAL for r in self.regions),
            "n_informative": self.n_informative,
            "regions": [r.to_dict() for r in self.regions],
        }


def grid_shape(width_px: int, height_px: int, mpp: float, region_um: float) -> tuple[int, int]:
    """(rows, cols) of full cells of a ``region_um`` grid starting at level-0 (0, 0)."""
    size_px = region_um / mpp
    return int(height_px // size_px), int(width_px // size_px)


def _poisson_disc(
    rng: np.random.Generator, radii: np.ndarray, inside: Any, sample: Any, gap_um: float,
    avoid: list[tuple[float, float, float]], max_tries: int = 4000,
) -> np.ndarray:
    """Place discs of ``radii`` without overlap by rejection sampling.

    ``sample()`` draws a candidate (x, y); ``inside(x, y, r)`` says if it fits the allowed area.
    Discs keep ``gap_um`` from each other and from the ``avoid`` discs. The draw order is fixed,
    so the result depends only on the generator state.
    """
    placed: list[tuple[float, float, float]] = []
    for r in radii:
        for _ in range(max_tries):
            x, y = sample()
            if not inside(x, y, r):
                continue
            if all(math.hypot(x - px, y - py) >= r + pr + gap_um for px, py, pr in placed + avoid):
                placed.append((x, y, float(r)))
                break
        else:
            raise MixmagRuntimeError("could not place all nests; the cell is too small for the unit")
    return np.asarray(placed, dtype=np.float64).reshape(-1, 3)


def _plan_unit(
    rng: np.random.Generator, cell_xy_um: tuple[float, float], region_um: float,
    architecture: str, knobs: Knobs,
) -> tuple[tuple[float, float], float, tuple[float, float, float], np.ndarray]:
    """Draw one tissue unit inside a cell; the draws are identical in number for both architectures.

    Returns (centre, ring radius, lumen (x, y, r), nests (n, 3)) in slide µm.
    """
    x0, y0 = cell_xy_um
    radius = rng.uniform(*RING_RADIUS_UM)
    spacing = rng.uniform(*NEST_SPACING_UM)
    n = max(6, round(2 * math.pi * radius / spacing))
    nest_r = rng.uniform(*NEST_RADIUS_UM, size=n)
    lumen_r = radius * rng.uniform(*LUMEN_FRACTION)
    extent = radius + NEST_RADIUS_UM[1] + 3 * knobs.ring_jitter * radius
    slack = max(region_um / 2 - extent - CELL_MARGIN_UM, 0.0)
    cx = x0 + region_um / 2 + rng.uniform(-slack, slack)
    cy = y0 + region_um / 2 + rng.uniform(-slack, slack)
    # Pre-draw the angles/jitters so both architectures consume the generator identically.
    step = 2 * math.pi / n
    angles = rng.uniform(0, 2 * math.pi) + step * np.arange(n) + rng.normal(0, 0.12 * step, n)
    radial = radius * (1 + rng.normal(0, knobs.ring_jitter, n))
    lumen_offset = rng.uniform(-1, 1, 2)
    sub = np.random.default_rng(rng.integers(2**63))  # only the scattered layout uses it
    if architecture == RING:
        nests = np.stack([cx + radial * np.cos(angles), cy + radial * np.sin(angles), nest_r], 1)
        lumen = (cx + 0.05 * radius * lumen_offset[0], cy + 0.05 * radius * lumen_offset[1], lumen_r)
        return (cx, cy), radius, lumen, nests
    # Scattered = a *broken* ring: the same nests cut into arcs of 2-3 that keep the ring's spacing
    # and curvature, each moved and turned at random. A 112-µm 20x tile sees 1-3 nests of an arc
    # either way; only a 448-µm 5x tile sees whether the arcs close into one ring.
    local = np.stack([radial * np.cos(angles), radial * np.sin(angles)], 1)  # relative to centre
    lo = (x0 + CELL_MARGIN_UM, y0 + CELL_MARGIN_UM)
    hi = (x0 + region_um - CELL_MARGIN_UM, y0 + region_um - CELL_MARGIN_UM)
    for _ in range(100):
        placed = _broken_ring(sub, local, nest_r, lo, hi, lumen_r)
        if placed is not None:
            return (cx, cy), radius, placed[1], placed[0]
    raise MixmagRuntimeError(f"could not lay out a broken ring of {n} nests in a {region_um:g}-µm cell")


def _broken_ring(
    rng: np.random.Generator, local: np.ndarray, nest_r: np.ndarray, lo: tuple[float, float],
    hi: tuple[float, float], lumen_r: float, gap_um: float = 20.0, tries: int = 400,
) -> tuple[np.ndarray, tuple[float, float, float]] | None:
    """Place a lumen, then arcs of consecutive ring nests, rigidly moved, without overlap.

    Returns (nests (n, 3), lumen) in slide µm, or None when this attempt got stuck.
    """
    lumen = (rng.uniform(lo[0] + lumen_r, hi[0] - lumen_r), rng.uniform(lo[1] + lumen_r, hi[1] - lumen_r),
             lumen_r)
    placed: list[tuple[float, float, float]] = [(lumen[0], lumen[1], lumen_r + 12.0 - gap_um)]
    start = 0
    out = []
    while start < len(local):
        size = min(int(rng.integers(2, 4)), len(local) - start)
        new = _place_rigidly(rng, local[start: start + size], nest_r[start: start + size], lo, hi,
                             placed, gap_um, tries)
        if new is None:
            return None
        placed += new
        out += new
        start += size
    return np.asarray(out, np.float64).reshape(-1, 3), lumen


def _place_rigidly(
    rng: np.random.Generator, arc: np.ndarray, radii: np.ndarray, lo: tuple[float, float],
    hi: tuple[float, float], placed: list[tuple[float, float, float]], gap_um: float, tries: int,
) -> list[tuple[float, float, float]] | None:
    """Move and turn a run of nests (centres ``arc`` (n, 2) µm) at random into the box ``lo``-``hi``.

    The run keeps its shape; it must keep ``gap_um`` from every ``placed`` disc. Returns its nests
    as (x, y, r) in µm, or None after ``tries`` failed draws.
    """
    arc = arc - arc.mean(axis=0)
    for _ in range(tries):
        phi = rng.uniform(0, 2 * math.pi)
        rot = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
        pos = arc @ rot.T + (rng.uniform(lo[0], hi[0]), rng.uniform(lo[1], hi[1]))
        inside = np.all((pos - radii[:, None] >= lo) & (pos + radii[:, None] <= hi))
        if inside and all(
            math.hypot(x - px, y - py) >= r + pr + gap_um
            for (x, y), r in zip(pos, radii, strict=True) for px, py, pr in placed
        ):
            return [(float(x), float(y), float(r)) for (x, y), r in zip(pos, radii, strict=True)]
    return None


def _plan_cords_unit(
    rng: np.random.Generator, cell_xy_um: tuple[float, float], region_um: float,
    architecture: str, knobs: Knobs,
) -> tuple[tuple[float, float], float, tuple[float, float, float], np.ndarray]:
    """Draw one *cords* unit filling a cell: parallel rows of nests, or the same runs scattered.

    ``CORDS``: rows 115-140 µm apart at one random angle across the whole cell, each a dashed
    line of runs of 5-6 almost touching nests (38-44 µm apart) with two nests left out between
    runs, so any 448-µm window that holds most of the cell shows parallel rows wherever the region
    grid cuts it. ``SCATTERED``: the same runs, each moved and turned at random. A 112-µm 20x tile
    sees a piece of one straight run either way, and runs end as often in both; a 224-µm 10x or
    448-µm 5x tile sees whether the runs line up. There is no lumen. The random draws are the same
    for both architectures up to the scattering (docs/concepts/synthetic-cohort.md).

    Returns (centre, half-extent, lumen (x, y, 0), nests (n, 3)) in slide µm.
    """
    x0, y0 = cell_xy_um
    lo = (x0 + CELL_MARGIN_UM, y0 + CELL_MARGIN_UM)
    hi = (x0 + region_um - CELL_MARGIN_UM, y0 + region_um - CELL_MARGIN_UM)
    cx, cy = x0 + region_um / 2, y0 + region_um / 2
    theta = rng.uniform(0, math.pi)
    along, across = np.array([math.cos(theta), math.sin(theta)]), np.array([-math.sin(theta), math.cos(theta)])
    gap, spacing = rng.uniform(*CORD_GAP_UM), rng.uniform(*CORD_SPACING_UM)
    reach = region_um / math.sqrt(2)  # half-diagonal: rows at any angle cover the cell
    runs: list[tuple[np.ndarray, np.ndarray]] = []
    for v in rng.uniform(0, gap) - reach + gap * np.arange(int(2 * reach / gap) + 1):
        u = rng.uniform(0, spacing) - reach + spacing * np.arange(int(2 * reach / spacing) + 1)
        u = u + rng.normal(0, 0.05 * spacing, len(u))
        w = v + rng.normal(0, knobs.ring_jitter * gap / 2, len(u))
        radii = rng.uniform(*NEST_RADIUS_UM, size=len(u))
        xy = np.stack([cx + u * along[0] + w * across[0], cy + u * along[1] + w * across[1]], 1)
        inside = np.all((xy - radii[:, None] >= lo) & (xy + radii[:, None] <= hi), axis=1)
        sizes = rng.integers(CORD_RUN[0], CORD_RUN[1] + 1, size=len(u))
        # runs of CORD_RUN consecutive nests inside the cell, CORD_SKIP nests apart
        start = 0
        while start < len(u):
            if not inside[start]:
                start += 1
                continue
            stop = start
            while stop < len(u) and inside[stop] and stop - start < sizes[start]:
                stop += 1
            runs.append((xy[start:stop], radii[start:stop]))
            start = stop + CORD_SKIP
    sub = np.random.default_rng(rng.integers(2**63))  # only the scattered layout uses it
    lumen = (cx, cy, 0.0)
    if architecture == CORDS:
        nests = np.concatenate([np.column_stack([xy, r]) for xy, r in runs])
        return (cx, cy), reach, lumen, nests
    for _ in range(100):
        placed: list[tuple[float, float, float]] = []
        for xy, radii in runs:
            new = _place_rigidly(sub, xy, radii, lo, hi, placed, 12.0, 400)
            if new is None:
                break
            placed += new
        else:
            return (cx, cy), reach, lumen, np.asarray(placed, np.float64).reshape(-1, 3)
    raise MixmagRuntimeError(f"could not scatter {len(runs)} runs of nests in a {region_um:g}-µm cell")


UnitPlanner = Callable[[np.random.Generator, tuple[float, float], float, str, Knobs],
                       tuple[tuple[float, float], float, tuple[float, float, float], np.ndarray]]

#: Structure name -> (organised architecture, unit planner). The organised architecture is the
#: 5x-visible property; ``SCATTERED`` is its counterpart in every structure.
STRUCTURES: dict[str, tuple[str, UnitPlanner]] = {
    "rosette": (RING, _plan_unit),
    "cords": (CORDS, _plan_cords_unit),
}


def structure_spec(structure: str) -> tuple[str, UnitPlanner]:
    """(organised architecture, unit planner) of a :data:`STRUCTURES` key.

    Raises:
        ValueError: Unknown structure (the message lists the known ones).
    """
    if structure not in STRUCTURES:
        raise MixmagValueError(f"unknown structure {structure!r}; choose one of {sorted(STRUCTURES)}")
    return STRUCTURES[structure]


def _filler_nests(rng: np.random.Generator, plan_w_um: float, plan_h_um: float,
                  grid_box_um: tuple[float, float, float, float]) -> np.ndarray:
    """Scattered nests (normal nuclei) in the partial strips around the full grid.

    ``grid_box_um`` is the (x0, y0, x1, y1) extent of the full cells; the strips are the parts of
    the slide left, right, above and below it.
    """
    gx0, gy0, gx1, gy1 = grid_box_um
    strips = [(gx1, 0.0, plan_w_um, plan_h_um), (0.0, gy1, gx1, plan_h_um),
              (0.0, 0.0, gx0, gy1), (gx0, 0.0, gx1, gy0)]
    out = []
    for x0, y0, x1, y1 in strips:
        area = max(x1 - x0 - 2 * CELL_MARGIN_UM, 0) * max(y1 - y0 - 2 * CELL_MARGIN_UM, 0)
        n = int(area / 14000.0)  # ~ the nest density of a unit
        if n == 0:
            continue
        radii = rng.uniform(*NEST_RADIUS_UM, size=n)

        def sample(x0: float = x0, y0: float = y0, x1: float = x1, y1: float = y1) -> tuple[float, float]:
            return rng.uniform(x0, x1), rng.uniform(y0, y1)

        def inside(x: float, y: float, r: float, x0: float = x0, y0: float = y0,
                   x1: float = x1, y1: float = y1) -> bool:
            m = CELL_MARGIN_UM + r
            return x0 + m <= x <= x1 - m and y0 + m <= y <= y1 - m

        try:
            out.append(_poisson_disc(rng, radii, inside, sample, 6.0, [], max_tries=200))
        except RuntimeError:  # a crowded strip just gets fewer nests; it carries no label signal
            continue
    return np.concatenate(out) if out else np.zeros((0, 3))


def _cell_kinds(rng: np.random.Generator, label: int, n_cells: int, knobs: Knobs,
                composition: Composition | None, organised: str = RING) -> list[tuple[str, str]]:
    """(architecture, nuclei) of every cell, row-major; see :func:`plan_slide` for the rule."""
    if composition is None or composition.informative_fraction is None:
        m_lo, m_hi = max(1, n_cells // 4), max(1, n_cells // 2)
        m = int(rng.integers(m_lo, m_hi + 1))
        k = max(1, int(math.floor(1 + knobs.informative_share * (m - 1) + 0.5)))
    else:
        k, j = composition.counts(rng, n_cells)
        m = k + j
    order = rng.permutation(n_cells)
    kinds: list[tuple[str, str]] = [(SCATTERED, NORMAL)] * n_cells
    if label:
        picks = ([(organised, ATYPICAL)] * k + [(organised, NORMAL)] * (m - k)
                 + [(SCATTERED, ATYPICAL)] * (m - k))
    else:
        picks = [(organised, NORMAL)] * m + [(SCATTERED, ATYPICAL)] * m
    for slot, kind in zip(order, picks, strict=False):
        kinds[int(slot)] = kind
    return kinds


def plan_slide(
    rng: np.random.Generator,
    *,
    label: int,
    width_px: int,
    height_px: int,
    mpp: float,
    region_um: float,
    knobs: Knobs,
    composition: Composition | None = None,
    origin_px: tuple[int, int] = (0, 0),
    structure: str = "rosette",
) -> SlidePlan:
    """Decide the content of one slide.

    By default the number of ring cells and of atypical cells (``m`` each) is drawn from the same
    distribution for both labels; a positive slide then turns ``k >= 1`` of its ring cells
    atypical (and has ``m - k`` further atypical scattered cells), a negative keeps all ``m``
    atypical cells scattered. A :class:`Composition` sets ``k`` and ``m - k`` as fractions of the
    cells instead. Either way the count of each property alone carries no label information.

    Args:
        origin_px: Level-0 (x, y) of the first cell's top-left corner. A tiler lays its own grid
            over the tissue, so a non-zero origin puts the structures at an offset to the tiled
            regions, as on real slides.
        structure: Key of :data:`STRUCTURES`: ``"rosette"`` (one ring or broken ring per cell) or
            ``"cords"`` (parallel rows of nests across the cell, or the same runs scattered).

    Raises:
        ValueError: When the slide has fewer than two full grid cells, or ``structure`` is unknown.
    """
    organised, plan_unit = structure_spec(structure)
    ox, oy = origin_px
    rows, cols = grid_shape(width_px - ox, height_px - oy, mpp, region_um)
    n_cells = rows * cols
    if n_cells < 2:
        raise MixmagValueError(
            f"a {width_px}x{height_px} px slide at {mpp} µm/px holds {n_cells} full "
            f"{region_um:g}-µm regions; use at least 2 (e.g. --size {round(2 * region_um / mpp)}x"
            f"{round(region_um / mpp)})"
        )
    kinds = _cell_kinds(rng, label, n_cells, knobs, composition, organised)
    size_px = region_um / mpp
    ox_um, oy_um = ox * mpp, oy * mpp
    regions = []
    for idx, (arch, nuc) in enumerate(kinds):
        r, c = divmod(idx, cols)
        unit_rng = np.random.default_rng(rng.integers(2**63))
        centre, radius, lumen, nests = plan_unit(
            unit_rng, (ox_um + c * region_um, oy_um + r * region_um), region_um, arch, knobs)
        regions.append(RegionPlan(
            row=r, col=c, x_px=ox + round(c * size_px), y_px=oy + round(r * size_px), size_px=round(size_px),
            architecture=arch, nuclei=nuc, centre_um=centre, radius_um=radius, lumen_um=lumen,
            nests_um=nests,
        ))
    grid_box = (ox_um, oy_um, ox_um + cols * region_um, oy_um + rows * region_um)
    filler = _filler_nests(np.random.default_rng(rng.integers(2**63)), width_px * mpp,
                           height_px * mpp, grid_box)
    return SlidePlan(width_px=width_px, height_px=height_px, mpp=mpp, region_um=region_um,
                     label=int(label), regions=regions, filler_nests_um=filler, knobs=knobs,
                     origin_px=(int(ox), int(oy)), structure=structure)
