"""Region geometry: which tiles, at which exact resolutions, make up one region.

:class:`RegionSpec`, its :class:`TokenLayout` and the magnification helpers are pure geometry (numpy
only). They sit below every package that reads or writes regions (``io``, ``tiling``, ``region``,
``mil`` ...), so that a file format can record a spec without importing the tiler.

A region is a square of ``region_um`` microns. For every target resolution (mpp) it is cut into
``n x n`` non-overlapping tiles of ``tile_px`` pixels, where ``n = region_um / (mpp * tile_px)``
must be a whole number. With the defaults (448 µm, 224 px, mpp 2.0/1.0/0.5) that is 1 + 4 + 16 = 21
tokens, in the order ``[5x(0), 10x(0..3), 20x(0..15)]``, each magnification row-major.

Magnifications are *labels* derived from exact resolutions (``10 / mpp`` -> "5x" for 2.0 µm/px);
mixmag never reasons with nominal objective powers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mixmag.errors import MixmagValueError

# The conventional equivalence "1 µm/px ~ 10x" used only for naming and TRIDENT-style attrs.
MPP_AT_10X = 10.0

DEFAULT_MPPS: tuple[float, ...] = (2.0, 1.0, 0.5)


def mpp_to_magnification(mpp: float) -> float:
    """Nominal magnification label of an exact resolution (2.0 µm/px -> 5.0)."""
    return MPP_AT_10X / mpp


def magnification_label(mpp: float) -> str:
    """Human label such as ``"5x"`` or ``"2.5x"`` for an exact resolution in µm/px."""
    mag = mpp_to_magnification(mpp)
    return f"{mag:g}x"


def parse_magnification(text: str) -> float:
    """Parse ``"20x"``, ``"20"`` or ``"0.5um"``/``"0.5mpp"`` into an mpp value (µm/px)."""
    t = text.strip().lower()
    try:
        for suffix in ("mpp", "um", "µm"):
            if t.endswith(suffix):
                return float(t[: -len(suffix)])
        mag = float(t.rstrip("x"))
    except ValueError:  # float()'s own message does not say what a magnification looks like
        raise MixmagValueError(f"magnification {text!r} is not a number; write e.g. 20x, 20 or 0.5mpp") from None
    if mag <= 0:
        raise MixmagValueError(f"magnification must be positive, got {text!r}")
    return MPP_AT_10X / mag


#: The forms of a magnification that :func:`parse_magnification` reads, for messages.
MAGNIFICATION_FORMS = "a label such as 20x (or 20), or an exact resolution such as 0.5mpp (or 0.5um)"


def checked_magnification(text: str) -> float:
    """:func:`parse_magnification`, also refusing resolutions that are not finite and positive.

    Raises:
        MixmagValueError: The text is not a magnification; the message says which forms are read.
    """
    try:
        mpp = parse_magnification(str(text))
    except MixmagValueError:
        mpp = math.nan
    if not (math.isfinite(mpp) and mpp > 0):
        raise MixmagValueError(f"{text!r} is not a magnification: write {MAGNIFICATION_FORMS}")
    return mpp


@dataclass(frozen=True)
class TokenLayout:
    """Per-token geometry of a region, in physical units (independent of any slide).

    Attributes:
        mpps: (T,) target resolution of each token's tile, µm/px.
        mag_index: (T,) index of the token's magnification in ``RegionSpec.mpps`` (coarsest = 0).
        offset_um: (T, 2) top-left (x, y) of the token's tile relative to the region's top-left, µm.
        size_um: (T,) side length of the token's tile, µm.
        grid_rc: (T, 2) (row, col) of the tile within its magnification's n x n grid.
    """

    mpps: np.ndarray
    mag_index: np.ndarray
    offset_um: np.ndarray
    size_um: np.ndarray
    grid_rc: np.ndarray

    @property
    def n_tokens(self) -> int:
        """Number of tokens (tiles) per region."""
        return int(self.mpps.shape[0])

    def centres_unit(self) -> np.ndarray:
        """(T, 2) tile centres (x, y) as fractions of the region side, in [0, 1]."""
        region_um = float(np.max(self.offset_um[:, 0] + self.size_um))
        return (self.offset_um + self.size_um[:, None] / 2.0) / region_um


@dataclass(frozen=True)
class RegionSpec:
    """Geometry of a linked multi-magnification region.

    Args:
        region_um: Side of the square region in µm (default 448).
        tile_px: Side of every tile in pixels at its own target mpp (default 224).
        mpps: Target resolutions in µm/px; any order, stored coarsest first (default 2.0, 1.0, 0.5).
    """

    region_um: float = 448.0
    tile_px: int = 224
    mpps: tuple[float, ...] = field(default=DEFAULT_MPPS)

    def __post_init__(self) -> None:
        if self.region_um <= 0 or self.tile_px <= 0:
            raise MixmagValueError("region_um and tile_px must be positive")
        if not self.mpps:
            raise MixmagValueError("at least one target mpp is required")
        ordered = tuple(sorted((float(m) for m in self.mpps), reverse=True))
        if len(set(ordered)) != len(ordered):
            raise MixmagValueError(f"duplicate target mpps: {self.mpps}")
        object.__setattr__(self, "mpps", ordered)
        for mpp in ordered:
            n = self.region_um / (mpp * self.tile_px)
            if n < 1 or not math.isclose(n, round(n), rel_tol=0, abs_tol=1e-6):
                raise MixmagValueError(
                    f"region of {self.region_um:g} µm is not a whole number of {self.tile_px}-px tiles "
                    f"at {mpp:g} µm/px ({n:.3f}); choose region_um as a multiple of "
                    f"{mpp * self.tile_px:g} µm"
                )
        finest = ordered[-1]
        for mpp in ordered:
            ratio = mpp / finest
            if not math.isclose(ratio, round(ratio), abs_tol=1e-6):
                # derived magnifications are made by integer area-downsampling of the finest mosaic
                raise MixmagValueError(f"each mpp must be a whole multiple of the finest ({finest:g}); got {mpp:g}")

    @property
    def finest_mpp(self) -> float:
        """The highest resolution (smallest µm/px) in the spec: pixels are read at this mpp."""
        return self.mpps[-1]

    @property
    def region_px_at_finest(self) -> int:
        """Side of the region in pixels at the finest mpp (896 for the defaults)."""
        return round(self.region_um / self.finest_mpp)

    def tiles_per_side(self, mpp: float) -> int:
        """``n`` such that the region is an n x n grid of tiles at ``mpp``."""
        return round(self.region_um / (mpp * self.tile_px))

    def downsample_from_finest(self, mpp: float) -> int:
        """Integer area-downsampling factor from the finest mosaic to ``mpp`` (1, 2, 4 ...)."""
        return round(mpp / self.finest_mpp)

    @property
    def magnifications(self) -> tuple[float, ...]:
        """Nominal magnification labels (5.0, 10.0, 20.0) matching ``mpps``."""
        return tuple(mpp_to_magnification(m) for m in self.mpps)

    @property
    def n_tokens(self) -> int:
        """Tokens (tiles) per region: 21 for the defaults."""
        return sum(self.tiles_per_side(m) ** 2 for m in self.mpps)

    def token_slices(self) -> dict[float, slice]:
        """Token index range per mpp, e.g. {2.0: slice(0, 1), 1.0: slice(1, 5), 0.5: slice(5, 21)}."""
        out: dict[float, slice] = {}
        start = 0
        for mpp in self.mpps:
            n = self.tiles_per_side(mpp) ** 2
            out[mpp] = slice(start, start + n)
            start += n
        return out

    def layout(self) -> TokenLayout:
        """Per-token geometry in token order (coarsest magnification first, row-major)."""
        mpps, mag_index, offsets, sizes, grid = [], [], [], [], []
        for mi, mpp in enumerate(self.mpps):
            n = self.tiles_per_side(mpp)
            size_um = mpp * self.tile_px
            for r in range(n):
                for c in range(n):
                    mpps.append(mpp)
                    mag_index.append(mi)
                    offsets.append((c * size_um, r * size_um))
                    sizes.append(size_um)
                    grid.append((r, c))
        return TokenLayout(
            mpps=np.asarray(mpps, dtype=np.float64),
            mag_index=np.asarray(mag_index, dtype=np.int64),
            offset_um=np.asarray(offsets, dtype=np.float64),
            size_um=np.asarray(sizes, dtype=np.float64),
            grid_rc=np.asarray(grid, dtype=np.int64),
        )

    def region_size_level0(self, mpp_level0: float) -> float:
        """Exact (fractional) region side in level-0 pixels for a slide at ``mpp_level0``."""
        return self.region_um / mpp_level0

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable form (stored in artifacts and checkpoints)."""
        return {"region_um": self.region_um, "tile_px": self.tile_px, "mpps": list(self.mpps)}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> RegionSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            region_um=float(d["region_um"]),  # type: ignore[arg-type]
            tile_px=int(d["tile_px"]),  # type: ignore[call-overload]
            mpps=tuple(float(m) for m in d["mpps"]),  # type: ignore[attr-defined]
        )
