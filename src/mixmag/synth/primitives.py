"""Vectorised drawing primitives for synthetic H&E: smooth fields, discs, fibres, nuclei.

Everything works on float32 arrays indexed [row=y, col=x] in level-0 pixels. Smooth fields are
drawn at low resolution and upsampled (cheap); nuclei are soft ellipses stamped all at once with
``np.bincount`` so thousands of nuclei cost a few array passes, not a Python loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter


@dataclass
class Nuclei:
    """Flat arrays describing nuclei in level-0 pixels (one entry per nucleus).

    ``gain`` is the amplitude of the chromatin grain; ``atypical`` flags atypical epithelial nuclei.
    """

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray  # semi-axis along ``angle``, px
    b: np.ndarray  # other semi-axis, px
    angle: np.ndarray
    opacity: np.ndarray
    gain: np.ndarray
    atypical: np.ndarray

    @classmethod
    def concat(cls, parts: list[Nuclei]) -> Nuclei:
        """Concatenate several groups."""
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))


def upsample(low: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a float field to ``shape`` (rows, cols)."""
    img = Image.fromarray(low.astype(np.float32), mode="F")
    return np.array(img.resize((shape[1], shape[0]), Image.Resampling.BICUBIC), dtype=np.float32)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean, unit-std random field with correlation length ~``scale_px`` at ``shape``."""
    step = max(scale_px / 3.0, 1.0)
    low = rng.standard_normal((math.ceil(shape[0] / step) + 4, math.ceil(shape[1] / step) + 4))
    low = gaussian_filter(low, 1.5, mode="wrap")[2:-2, 2:-2]
    low = (low - low.mean()) / (low.std() + 1e-8)
    return upsample(low, shape)


def soft_discs(shape: tuple[int, int], discs_px: np.ndarray, soft_px: float) -> np.ndarray:
    """Union (max) of discs ``(x, y, r)`` in px with a linear edge ``soft_px`` wide; float (H, W)."""
    out = np.zeros(shape, np.float32)
    for x, y, r in discs_px:
        x0, x1 = max(int(x - r - soft_px), 0), min(int(x + r + soft_px) + 2, shape[1])
        y0, y1 = max(int(y - r - soft_px), 0), min(int(y + r + soft_px) + 2, shape[0])
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        d = np.sqrt((xx - x) ** 2 + (yy - y) ** 2, dtype=np.float32)
        np.maximum(out[y0:y1, x0:x1], np.clip((r - d) / soft_px + 0.5, 0, 1), out=out[y0:y1, x0:x1])
    return out


def fibre_texture(rng: np.random.Generator, shape: tuple[int, int], mpp: float,
                  n_directions: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Collagen-like streaks in [0, 1]: anisotropic noise in a few directions, blended smoothly.

    Each direction is white noise smoothed along one axis (by cheap upsampling), rotated with PIL;
    a soft arg-max of smooth random fields decides which direction dominates where, so bundles
    bend and cross like wavy stroma. Computed at half resolution; fibres are ~1 µm thick and
    ~10-20 µm long.

    Returns:
        The texture (H, W) and the ``n_directions`` fibre angles (radians, image frame with y
        down), used to orient spindle nuclei along the fibres.
    """
    half = (math.ceil(shape[0] / 2), math.ceil(shape[1] / 2))
    diag = math.ceil(math.hypot(*half)) + 8
    along = max(int(round(16.0 / (2 * mpp))), 1)  # half-res px per noise sample along a fibre
    base = rng.uniform(0, 180)
    angles = base + np.arange(n_directions) * (180.0 / n_directions) + rng.normal(0, 8, n_directions)
    tex = np.zeros(half, np.float32)
    norm = np.zeros(half, np.float32)
    top, left = (diag - half[0]) // 2, (diag - half[1]) // 2
    for angle in angles:
        low = gaussian_filter(rng.standard_normal((diag, math.ceil(diag / along))).astype(np.float32), (1.1, 0.6))
        img = Image.fromarray(low, mode="F").resize((diag, diag), Image.Resampling.BICUBIC)
        img = img.rotate(float(angle), resample=Image.Resampling.BILINEAR)
        weight = np.exp(4.0 * smooth_noise(rng, half, 80 / (2 * mpp)))
        tex += np.asarray(img, np.float32)[top: top + half[0], left: left + half[1]] * weight
        norm += weight
    tex /= norm
    tex /= tex.std() + 1e-8
    fib = np.clip(0.5 + 0.3 * tex, 0, 1)
    # PIL rotates counter-clockwise on screen; in (x, y-down) coordinates that is -angle.
    return upsample(fib, shape), -np.radians(angles)


def balanced_grain(rng: np.random.Generator, shape: tuple[int, int], cell: int = 1) -> np.ndarray:
    """±1 on square cells of ``cell`` px such that every aligned 2x2 block of cells sums to zero.

    Each 2x2 block of cells holds two +1 and two -1 (one of six patterns), so a box average over
    any aligned ``2 * cell``-px square (the 10x tile of a 20x mosaic made from these pixels) is 0.
    """
    patterns = np.array([[1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1],
                         [-1, 1, 1, -1], [-1, 1, -1, 1], [-1, -1, 1, 1]], np.float32)
    ch, cw = math.ceil(shape[0] / cell), math.ceil(shape[1] / cell)
    bh, bw = math.ceil(ch / 2), math.ceil(cw / 2)
    blocks = patterns[rng.integers(0, 6, size=(bh, bw))].reshape(bh, bw, 2, 2)
    grain = blocks.transpose(0, 2, 1, 3).reshape(bh * 2, bw * 2)
    if cell > 1:
        grain = np.repeat(np.repeat(grain, cell, axis=0), cell, axis=1)
    return grain[: shape[0], : shape[1]]


def stamp_nuclei(shape: tuple[int, int], groups: list[Nuclei], soft_px: float = 1.0,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise soft ellipses; returns (opacity, grain gain, kind) maps of ``shape``.

    Each group is stamped with a sprite box fitted to its largest nucleus (keep similar sizes
    together). Overlaps combine like stacked filters, ``1 - prod(1 - a_i)``, accumulated in log
    space with one ``np.bincount`` per map. ``gain`` is the opacity-weighted mean grain gain over
    nuclear interiors; ``kind`` is 0 outside interiors, 1 normal, 2 atypical (uint8).
    """
    h, w = shape
    flat_l, log_l, wi_l, gain_l, inner_l, atyp_l = [], [], [], [], [], []
    for nuc in groups:
        if not len(nuc.x):
            continue
        half = int(math.ceil(float(np.max(nuc.a)) + soft_px + 1))
        oy, ox = np.mgrid[-half: half + 1, -half: half + 1]
        ix, iy = np.rint(nuc.x).astype(np.int64), np.rint(nuc.y).astype(np.int64)
        dx = ox[None].astype(np.float32) - (nuc.x - ix).astype(np.float32)[:, None, None]
        dy = oy[None].astype(np.float32) - (nuc.y - iy).astype(np.float32)[:, None, None]
        c = np.cos(nuc.angle).astype(np.float32)[:, None, None]
        s = np.sin(nuc.angle).astype(np.float32)[:, None, None]
        b = nuc.b.astype(np.float32)[:, None, None]
        u = (dx * c + dy * s) / nuc.a.astype(np.float32)[:, None, None]
        v = (dy * c - dx * s) / b
        edge = np.clip((1.0 - np.sqrt(u * u + v * v)) * b / soft_px + 0.5, 0.0, 1.0)
        px = ix[:, None, None] + ox[None]
        py = iy[:, None, None] + oy[None]
        ok = (edge > 0) & (px >= 0) & (px < w) & (py >= 0) & (py < h)
        owner = np.broadcast_to(np.arange(len(nuc.x))[:, None, None], edge.shape)[ok]
        alpha = (edge * nuc.opacity.astype(np.float32)[:, None, None])[ok]
        interior = edge[ok] >= 1.0
        flat_l.append((py * w + px)[ok])
        log_l.append(np.log1p(-np.minimum(alpha, 0.98)))
        wi_l.append(alpha * interior)
        gain_l.append(alpha * interior * nuc.gain[owner])
        inner_l.append(interior)
        atyp_l.append(interior & nuc.atypical[owner])
    n_px = h * w
    if not flat_l:
        zeros = np.zeros(shape, np.float32)
        return zeros, zeros.copy(), np.zeros(shape, np.uint8)
    flat = np.concatenate(flat_l)

    def total(parts: list[np.ndarray]) -> np.ndarray:
        return np.bincount(flat, np.concatenate(parts).astype(np.float64), minlength=n_px).reshape(shape)

    opacity = (1.0 - np.exp(total(log_l))).astype(np.float32)
    weight = total(wi_l)
    gain = np.divide(total(gain_l), weight, out=np.zeros_like(weight), where=weight > 0)
    kind = np.where(total(atyp_l) > 0, 2, np.where(total(inner_l) > 0, 1, 0)).astype(np.uint8)
    return opacity, gain.astype(np.float32), kind
