"""Paint an H&E-like RGB image from a :class:`~mixmag.synth.layout.SlidePlan`.

Layers, back to front: white background; tissue outline (irregular smooth blob); pink eosin stroma
with collagen streaks; white fat/vessel holes; lilac epithelial nests; lumens; haematoxylin nuclei
(spindle fibroblasts, lymphocytes, epithelial nuclei in nests).

Composition is linear in each nucleus' opacity (``rgb = base + (haematoxylin - base) * a``). That
is what hides the nuclear property at 5x: atypical nuclei differ from normal ones only by the
amplitude of a chromatin grain whose every aligned 2x2-pixel block sums to zero
(:func:`~mixmag.synth.primitives.balanced_grain`), so a 2x or 4x box-downsample (10x, 5x) of an
atypical unit equals that of the same unit with normal nuclei, while at 0.5 µm/px (20x) the coarse,
granular chromatin is obvious. Size, count, position and mean darkness of nuclei are identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from mixmag.synth.layout import ATYPICAL, NEST_RADIUS_UM, SlidePlan
from mixmag.synth.primitives import (
    Nuclei,
    balanced_grain,
    fibre_texture,
    smooth_noise,
    soft_discs,
    stamp_nuclei,
    upsample,
)

# Stain colours (RGB in [0, 1]); each slide scales them by a small random factor (stain_jitter).
BACKGROUND = np.array([0.955, 0.95, 0.965], np.float32)
STROMA_LIGHT = np.array([0.97, 0.80, 0.88], np.float32)
STROMA_DARK = np.array([0.88, 0.45, 0.64], np.float32)
CYTOPLASM = np.array([0.90, 0.71, 0.83], np.float32)
LUMEN = np.array([0.965, 0.935, 0.955], np.float32)
HAEMATOXYLIN = np.array([0.25, 0.13, 0.40], np.float32)

NUCLEUS_RADIUS_UM = (3.6, 4.6)  # epithelial nuclei: one size distribution for both kinds
NUCLEUS_SPACING_UM = 8.6  # centre distance on the (jittered) hexagonal packing of a nest
NUCLEUS_OPACITY = (0.58, 0.68)
FIBROBLASTS_PER_MM2 = 900.0
LYMPHOCYTES_PER_MM2 = 250.0
HOLES_PER_MM2 = 6.0
GRAIN_UM = 0.5  # side of one chromatin-grain cell: one pixel at 20x


@dataclass
class Rendered:
    """A painted slide.

    Attributes:
        rgb: Level-0 image, uint8 (H, W, 3), [row=y, col=x].
        kind: uint8 (H, W): 0 = not a nuclear interior, 1 = normal nucleus, 2 = atypical nucleus
            (used by tests and documentation figures).
    """

    rgb: np.ndarray
    kind: np.ndarray


def _empty_nuclei() -> Nuclei:
    z = np.zeros(0)
    return Nuclei(z, z, z, z, z, z, z, z.astype(bool))


def _nest_nuclei(rng: np.random.Generator, nests_px: np.ndarray, atypical_nest: np.ndarray,
                 atypical_fraction: float, mpp: float, gains: tuple[float, float]) -> Nuclei:
    """Epithelial nuclei on a jittered hexagonal packing inside each nest.

    The random draws never depend on the nuclear kind, so making a unit atypical changes only
    the grain gain of its nuclei, never their size, number, position or opacity.
    """
    spacing = NUCLEUS_SPACING_UM / mpp
    parts = []
    for (x, y, r), atyp in zip(nests_px, atypical_nest, strict=True):
        n_side = int(r / spacing) + 2
        gy, gx = np.mgrid[-n_side: n_side + 1, -n_side: n_side + 1].astype(np.float64)
        hx, hy = (gx + 0.5 * (gy % 2)) * spacing, gy * spacing * math.sqrt(3) / 2
        theta = rng.uniform(0, 2 * math.pi)
        jit = rng.normal(0, 0.1 * spacing, (2, hx.size))
        rx = (hx * math.cos(theta) - hy * math.sin(theta)).ravel() + jit[0]
        ry = (hx * math.sin(theta) + hy * math.cos(theta)).ravel() + jit[1]
        keep = np.hypot(rx, ry) <= r - 0.4 * spacing
        n = int(keep.sum())
        radius = rng.uniform(*NUCLEUS_RADIUS_UM, n) / mpp
        ecc = rng.uniform(0.8, 1.0, n)
        angle = rng.uniform(0, math.pi, n)
        opacity = rng.uniform(*NUCLEUS_OPACITY, n)
        is_atyp = bool(atyp) & (rng.uniform(size=n) < atypical_fraction)
        parts.append(Nuclei(x=x + rx[keep], y=y + ry[keep], a=radius, b=radius * ecc, angle=angle,
                            opacity=opacity, gain=np.where(is_atyp, gains[1], gains[0]), atypical=is_atyp))
    return Nuclei.concat(parts) if parts else _empty_nuclei()


def _stroma_nuclei(rng: np.random.Generator, free: np.ndarray, mpp: float,
                   directions: np.ndarray, gain: float) -> list[Nuclei]:
    """Spindle fibroblast nuclei along the fibres and small round dark lymphocytes in free stroma."""
    h, w = free.shape
    area_mm2 = h * w * (mpp / 1000.0) ** 2
    groups = []
    # (per mm², long semi-axis µm, short/long ratio, opacity, follows fibres)
    kinds = ((FIBROBLASTS_PER_MM2, (4.5, 7.0), (0.28, 0.45), (0.62, 0.75), True),
             (LYMPHOCYTES_PER_MM2, (2.6, 3.2), (0.85, 1.0), (0.85, 0.92), False))
    for density, size_um, ratio, opacity, along in kinds:
        n = int(rng.poisson(density * area_mm2))
        x, y = rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n)
        a = rng.uniform(*size_um, n) / mpp
        b = a * rng.uniform(*ratio, n)
        angle = directions[rng.integers(0, len(directions), n)] + rng.normal(0, 0.25, n)
        if not along:
            angle = rng.uniform(0, math.pi, n)
        op = rng.uniform(*opacity, n)
        keep = free[y.astype(np.int64), x.astype(np.int64)] > 0.5
        k = int(keep.sum())
        groups.append(Nuclei(x=x[keep], y=y[keep], a=a[keep], b=b[keep], angle=angle[keep],
                             opacity=op[keep], gain=np.full(k, gain), atypical=np.zeros(k, bool)))
    return groups


def _tissue_mask(rng: np.random.Generator, plan: SlidePlan) -> np.ndarray:
    """Soft tissue outline (H, W) in [0, 1]: an irregular blob that contains every tissue unit."""
    shape = (plan.height_px, plan.width_px)
    step = 8  # the outline is designed on a grid of 8 level-0 px and upsampled
    lh, lw = math.ceil(shape[0] / step), math.ceil(shape[1] / step)
    um = step * plan.mpp  # µm per low-resolution pixel
    coarse = gaussian_filter(rng.standard_normal((lh, lw)), 200 / um / 3, mode="reflect")
    fine = gaussian_filter(rng.standard_normal((lh, lw)), 30 / um / 3, mode="reflect")
    fine /= fine.std() + 1e-8
    field = coarse / (coarse.std() + 1e-8) * 0.6 + fine * 0.12
    yy, xx = (np.mgrid[0:lh, 0:lw] + 0.5) * um
    rows = max(r.row for r in plan.regions) + 1
    cols = max(r.col for r in plan.regions) + 1
    hx, hy = cols * plan.region_um / 2, rows * plan.region_um / 2  # half extent of the cell grid
    gx, gy = plan.origin_px[0] * plan.mpp + hx, plan.origin_px[1] * plan.mpp + hy  # its centre
    field += 2.0 * (1.0 - ((xx - gx) / (1.45 * hx)) ** 2 - ((yy - gy) / (1.45 * hy)) ** 2)
    for reg in plan.regions:  # every unit sits fully inside tissue, so no structure is cut
        reach = 1.15 * (reg.radius_um + NEST_RADIUS_UM[1]) + 30.0
        d = np.hypot(xx - reg.centre_um[0], yy - reg.centre_um[1])
        field = np.maximum(field, np.clip((reach - d) / 60.0, -1.0, 1.0) * 2.0 + 0.5 * fine)
    low = np.clip((field - 0.2) / 0.15, 0, 1)
    return np.clip(upsample(low.astype(np.float32), shape), 0, 1)


def _holes(rng: np.random.Generator, plan: SlidePlan, obstacles_um: np.ndarray) -> np.ndarray:
    """Round white holes (x, y, r µm) in the stroma, kept clear of nests and lumens."""
    w_um, h_um = plan.width_px * plan.mpp, plan.height_px * plan.mpp
    n = int(w_um * h_um / 1e6 * HOLES_PER_MM2)
    x, y, r = rng.uniform(0, w_um, n), rng.uniform(0, h_um, n), rng.uniform(6, 22, n)
    if len(obstacles_um):
        gap = np.hypot(obstacles_um[None, :, 0] - x[:, None], obstacles_um[None, :, 1] - y[:, None])
        keep = (gap - obstacles_um[None, :, 2]).min(axis=1) > r + 10
    else:
        keep = np.ones(n, bool)
    return np.stack([x[keep], y[keep], r[keep]], 1)


def _inside(mask: np.ndarray, discs_px: np.ndarray, level: float = 0.99) -> np.ndarray:
    """Which discs (x, y, r px) have their centre and four rim points inside ``mask``."""
    h, w = mask.shape
    ok = np.ones(len(discs_px), bool)
    for dx, dy in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)):
        px = np.clip(discs_px[:, 0] + dx * discs_px[:, 2], 0, w - 1).astype(np.int64)
        py = np.clip(discs_px[:, 1] + dy * discs_px[:, 2], 0, h - 1).astype(np.int64)
        ok &= mask[py, px] >= level
    return ok


def render_slide(plan: SlidePlan, seed: np.random.SeedSequence) -> Rendered:
    """Paint ``plan`` into an RGB image; deterministic for a given ``seed``.

    Args:
        plan: Slide content (from :func:`~mixmag.synth.layout.plan_slide`).
        seed: Seed sequence of this slide. The nuclear kinds in ``plan`` do not change which random
            numbers are drawn, so flipping a region's nuclei changes only its chromatin grain.

    Returns:
        The level-0 image and the nuclear-kind map.
    """
    shape = (plan.height_px, plan.width_px)
    mpp = plan.mpp
    # Children derived from the seed's identity, not via seed.spawn() (which is stateful), so
    # painting twice with the same seed gives the same picture.
    r_tissue, r_field, r_nuc, r_grain, r_stain = (
        np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, i)))
        for i in range(5))
    tissue = _tissue_mask(r_tissue, plan)

    regions = plan.regions
    filler_px = plan.filler_nests_um / mpp
    filler_px = filler_px[_inside(tissue, filler_px)] if len(filler_px) else filler_px
    nests_px = np.concatenate([r.nests_um / mpp for r in regions] + [filler_px])
    atyp_nest = np.concatenate([np.full(len(r.nests_um), r.nuclei == ATYPICAL) for r in regions]
                               + [np.zeros(len(filler_px), bool)])
    lumens_px = np.array([r.lumen_um for r in regions], np.float64).reshape(-1, 3) / mpp
    lumens_px = lumens_px[lumens_px[:, 2] > 0]  # cords units have no lumen
    nest = soft_discs(shape, nests_px, 2.0 / mpp)
    lumen = soft_discs(shape, lumens_px, 1.5 / mpp)
    holes = soft_discs(shape, _holes(r_field, plan, np.concatenate([nests_px, lumens_px]) * mpp) / mpp,
                       1.5 / mpp)

    # Stroma: collagen streaks whose density varies slowly across the slide.
    fib, directions = fibre_texture(r_field, shape, mpp)
    fib *= np.clip(0.65 + 0.25 * smooth_noise(r_field, shape, 150 / mpp), 0.15, 1.0)

    stain = 1.0 + r_stain.normal(0, plan.knobs.stain_jitter, (4, 3)).astype(np.float32)
    light, dark = STROMA_LIGHT * stain[0], STROMA_DARK * stain[1]
    cyto, haem = CYTOPLASM * stain[2], HAEMATOXYLIN * stain[3]
    cover = tissue * (1.0 - holes)
    free = tissue * (1.0 - nest) * (1.0 - np.maximum(lumen, holes))
    groups = [_nest_nuclei(r_nuc, nests_px, atyp_nest, plan.knobs.atypical_fraction, mpp,
                           (plan.knobs.normal_gain, plan.knobs.atypical_gain))]
    groups += _stroma_nuclei(r_nuc, free, mpp, directions, plan.knobs.normal_gain)
    opacity, gain, kind = stamp_nuclei(shape, groups)
    # Grain amplitude gain * min(a, 1 - a) never leaves [0, 1], so no clipping breaks the
    # zero-sum of each 2x2 block (which is what makes it vanish at 10x and 5x).
    # The grain is drawn on cells of GRAIN_UM whatever the slide's resolution, so a 0.25-µm/px slide
    # shows the same chromatin at 20x as a 0.5-µm/px one (a 1-px grain there would already vanish
    # in the 0.25 -> 0.5 µm/px resampling that makes its 20x tiles).
    cell = max(1, round(GRAIN_UM / mpp))
    opacity += gain * np.minimum(opacity, 1.0 - opacity) * balanced_grain(r_grain, shape, cell=cell)

    # Composite channel by channel, touching only the pixels each layer covers (most layers are
    # sparse; contiguous 2-D passes are also ~2.5x faster than broadcasting over (H, W, 3)).
    layers = [(cyto, _sparse(nest)), (LUMEN, _sparse(lumen)), (BACKGROUND, _sparse(1.0 - cover)),
              (haem, _sparse(opacity))]
    rgb = np.empty((*shape, 3), np.uint8)
    for c in range(3):
        ch = fib * (dark[c] - light[c])
        ch += light[c]
        flat = ch.reshape(-1)
        for colour, (idx, alpha) in layers:
            vals = flat[idx]
            vals += (np.float32(colour[c]) - vals) * alpha
            flat[idx] = vals
        ch *= 255.0
        ch += 0.5
        np.clip(ch, 0, 255, out=ch)
        rgb[..., c] = ch
    return Rendered(rgb=rgb, kind=kind)


def _sparse(alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices where ``alpha > 0`` and the alpha values there."""
    idx = np.flatnonzero(alpha > 0)
    return idx, alpha.reshape(-1)[idx]
