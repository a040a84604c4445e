"""Tissue detection on a thumbnail, and tissue fractions of level-0 boxes.

Brightfield (H&E, IHC): stained tissue is coloured, glass is white or grey, so tissue = saturation
above an Otsu threshold (clamped to a sane band: Otsu splits pale from dark tissue when a
thumbnail is nearly all tissue). Pen ink is removed by colour (blue/green hues, very dark
unsaturated strokes), then the mask is closed, small holes filled and specks dropped.
Darkfield (fluorescence): the background is black, so tissue = smoothed brightness above Otsu.
The background kind is detected from the thumbnail's border unless given.

Detection runs at a working resolution of about :attr:`TissueParams.mask_mpp` µm/px (the thumbnail
is area-downsampled if finer), so morphology sizes in µm mean the same on every slide.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.filters import threshold_otsu

from mixmag.errors import MixmagValueError

logger = logging.getLogger(__name__)

BACKGROUNDS = ("auto", "bright", "dark")


@dataclass(frozen=True)
class TissueParams:
    """Tissue-detection settings; physical sizes in µm (converted with the mask's µm/px).

    Attributes:
        background: "bright" (brightfield), "dark" (fluorescence) or "auto" (from the border).
        mask_mpp: Working resolution of the detector, µm/px; finer thumbnails are downsampled.
        min_saturation: Lower clamp of the brightfield saturation threshold (0-1).
        max_saturation: Upper clamp of the brightfield saturation threshold (0-1).
        exclude_ink: Remove blue/green/black pen ink from the mask.
        closing_um: Radius of the morphological closing that bridges gaps inside tissue.
        min_object_um2: Connected tissue pieces smaller than this are dropped (dust, debris).
        max_hole_um2: Holes smaller than this are filled (lumens larger than it stay open).
    """

    background: str = "auto"
    mask_mpp: float = 2.0
    min_saturation: float = 0.04
    max_saturation: float = 0.12
    exclude_ink: bool = True
    closing_um: float = 8.0
    min_object_um2: float = 10_000.0
    max_hole_um2: float = 4_000.0

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise MixmagValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        if not 0 <= self.min_saturation <= self.max_saturation <= 1:
            raise MixmagValueError("need 0 <= min_saturation <= max_saturation <= 1")
        if self.mask_mpp <= 0:
            raise MixmagValueError("mask_mpp must be positive")

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable form (stored as the ``tissue_params`` attr of region indices)."""
        return asdict(self)


@dataclass
class TissueMask:
    """A boolean tissue mask covering the whole slide, with its mapping to level 0.

    Attributes:
        mask: (h, w) bool, indexed [row=y, col=x]; True = tissue.
        level0_size: Slide level-0 (width, height) in px that the mask spans.
        mpp: µm per mask pixel (x).
        background: The background kind used ("bright" or "dark").
        threshold: The threshold applied (saturation or brightness, 0-1).
    """

    mask: np.ndarray
    level0_size: tuple[int, int]
    mpp: float
    background: str
    threshold: float

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): mask pixels per level-0 pixel along x and y."""
        h, w = self.mask.shape
        return w / self.level0_size[0], h / self.level0_size[1]

    @property
    def tissue_fraction_total(self) -> float:
        """Fraction of the slide area that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def box_fractions(self, boxes_level0: np.ndarray) -> np.ndarray:
        """Tissue fraction of level-0 boxes, exact for the piecewise-constant mask.

        Args:
            boxes_level0: (..., 4) float boxes ``(x0, y0, x1, y1)`` in level-0 px.

        Returns:
            (...) float32 fractions in [0, 1]; 0 for empty or fully out-of-slide boxes.
        """
        # Integral image on pixel corners; bilinear interpolation of it is the exact area integral
        # of the mask over fractional boxes, so small 20x tiles on coarse masks are still accurate.
        integral = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), dtype=np.float64)
        integral[1:, 1:] = np.cumsum(np.cumsum(self.mask, axis=0, dtype=np.float64), axis=1)
        sx, sy = self.scale
        b = np.asarray(boxes_level0, dtype=np.float64)
        x0, y0, x1, y1 = b[..., 0] * sx, b[..., 1] * sy, b[..., 2] * sx, b[..., 3] * sy
        total = (
            _bilinear(integral, x1, y1) - _bilinear(integral, x0, y1)
            - _bilinear(integral, x1, y0) + _bilinear(integral, x0, y0)
        )
        area = (x1 - x0) * (y1 - y0)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(area > 0, total / np.where(area > 0, area, 1.0), 0.0)
        return np.clip(frac, 0.0, 1.0).astype(np.float32)


def _bilinear(integral: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample ``integral`` (corner grid) at fractional (x, y), clamped to the grid."""
    h, w = integral.shape[0] - 1, integral.shape[1] - 1
    x, y = np.clip(x, 0, w), np.clip(y, 0, h)
    ix, iy = np.minimum(np.floor(x).astype(np.int64), w - 1), np.minimum(np.floor(y).astype(np.int64), h - 1)
    fx, fy = x - ix, y - iy
    a, b = integral[iy, ix], integral[iy, ix + 1]
    c, d = integral[iy + 1, ix], integral[iy + 1, ix + 1]
    return a * (1 - fx) * (1 - fy) + b * fx * (1 - fy) + c * (1 - fx) * fy + d * fx * fy


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees), saturation and value (0-1) of uint8 RGB; cheaper than skimage.color for masks."""
    x = rgb.astype(np.float32) / 255.0
    mx, mn = x.max(axis=2), x.min(axis=2)
    chroma = mx - mn
    sat = np.where(mx > 0, chroma / np.maximum(mx, 1e-6), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    safe = np.maximum(chroma, 1e-6)
    hue = np.select(
        [chroma == 0, mx == r, mx == g],
        [0.0, ((g - b) / safe) % 6.0, (b - r) / safe + 2.0],
        default=(r - g) / safe + 4.0,
    ) * 60.0
    return hue, sat, mx


def ink_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels that look like marker pen: vivid blue, green, or near-black and unsaturated.

    Hematoxylin is purple (hue ~260-290°) and eosin pink (~320-350°), so saturated blue (190-250°)
    and green (75-185°) pixels are ink; black ink is darker than any stained tissue.
    """
    hue, sat, val = _hsv(rgb)
    blue = (hue >= 190) & (hue <= 250) & (sat >= 0.55) & (val >= 0.2)
    green = (hue >= 75) & (hue < 190) & (sat >= 0.2) & (val >= 0.15)
    black = (val <= 0.2) & (sat <= 0.45)
    return blue | green | black


def detect_background(rgb: np.ndarray) -> str:
    """"dark" when the thumbnail border is mostly black (fluorescence), else "bright"."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.float32)
    return "dark" if float(np.median(border.max(axis=1))) < 64 else "bright"


def _px(um: float, mpp: float) -> int:
    return max(1, round(um / mpp))


def detect_tissue(
    thumbnail: np.ndarray,
    level0_size: tuple[int, int],
    mpp_level0: float,
    params: TissueParams | None = None,
) -> TissueMask:
    """Detect tissue on a thumbnail of the whole slide.

    Args:
        thumbnail: uint8 (h, w, 3) RGB covering the full level-0 extent.
        level0_size: Slide level-0 (width, height), px.
        mpp_level0: Slide level-0 µm/px (sets the physical scale of the morphology).
        params: Detection settings (defaults: :class:`TissueParams`).

    Returns:
        The mask at the working resolution with its level-0 mapping.
    """
    params = params or TissueParams()
    rgb = np.asarray(thumbnail)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"thumbnail must be uint8 (h, w, 3), got {rgb.dtype} {rgb.shape}")
    thumb_mpp = mpp_level0 * level0_size[0] / rgb.shape[1]
    if thumb_mpp < params.mask_mpp:  # finer than needed: area-downsample to the working resolution
        factor = params.mask_mpp / thumb_mpp
        size = (max(1, round(rgb.shape[1] / factor)), max(1, round(rgb.shape[0] / factor)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
    mpp = mpp_level0 * level0_size[0] / rgb.shape[1]
    background = detect_background(rgb) if params.background == "auto" else params.background

    if background == "dark":
        # fluorescence: nuclei are bright specks on black. Smooth over a few nuclei (20 µm) so the
        # dim autofluorescent space between them counts as tissue, and threshold in log space,
        # where background (~1 %) and sparse stroma (~6 %) separate; linear Otsu would split
        # dense from sparse nuclei instead.
        val = rgb.max(axis=2).astype(np.float32)
        log_signal = np.log1p(ndimage.gaussian_filter(val, sigma=max(1.0, 20.0 / mpp)))
        log_threshold = _otsu(log_signal, floor=math.log1p(0.03 * 255), ceiling=math.log1p(255.0))
        threshold = math.expm1(log_threshold) / 255.0
        mask = log_signal > log_threshold
    else:
        _, sat, _ = _hsv(rgb)
        sat = ndimage.uniform_filter(sat, size=3)  # de-noise JPEG chroma before thresholding
        threshold = _otsu(sat, floor=params.min_saturation, ceiling=params.max_saturation)
        mask = sat > threshold
        if params.exclude_ink:
            ink = ink_mask(rgb)
            if ink.any():
                ink = ndimage.binary_dilation(ink, iterations=2)  # ink strokes have anti-aliased rims
                mask &= ~ink
                logger.debug("ink covers %.1f%% of the thumbnail", 100 * ink.mean())

    mask = _closing(mask, _px(params.closing_um, mpp))
    px_area = mpp * mpp
    mask = _fill_small_holes(mask, max_px=math.floor(params.max_hole_um2 / px_area))
    mask = _remove_small_objects(mask, max_px=math.floor(params.min_object_um2 / px_area))
    return TissueMask(mask=mask, level0_size=level0_size, mpp=mpp, background=background, threshold=threshold)


def _otsu(values: np.ndarray, floor: float, ceiling: float) -> float:
    """Otsu threshold clamped to [floor, ceiling]; ``floor`` when the image is uniform."""
    flat = values.ravel()
    if flat.size == 0 or float(flat.min()) == float(flat.max()):
        return floor
    return float(np.clip(threshold_otsu(flat), floor, ceiling))


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (xx * xx + yy * yy) <= radius * radius


def _closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing with a disk; edge-padded so tissue touching the border is not eroded."""
    padded = np.pad(mask, radius + 1, mode="edge")
    closed = ndimage.binary_closing(padded, structure=_disk(radius))
    return closed[radius + 1 : -(radius + 1), radius + 1 : -(radius + 1)]


def _fill_small_holes(mask: np.ndarray, max_px: int) -> np.ndarray:
    """Fill background components of <= ``max_px`` pixels that do not touch the border."""
    if max_px < 1:
        return mask
    labels, n = ndimage.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes <= max_px
    fill[0] = False  # label 0 is tissue itself
    fill[border] = False  # background connected to the border is glass, whatever its size
    return mask | fill[labels]


def _remove_small_objects(mask: np.ndarray, max_px: int) -> np.ndarray:
    """Drop tissue components of <= ``max_px`` pixels (8-connected)."""
    if max_px < 1:
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return mask
    keep = np.bincount(labels.ravel()) > max_px
    keep[0] = False
    return keep[labels]
