"""Named scalar types that carry units, so signatures say what a number means.

Conventions used throughout mixmag:
- ``Mpp``: microns per pixel (µm/px) of an image or pyramid level.
- ``Microns``: a physical length in µm.
- ``Level0Px``: a length or coordinate in pixels of the slide's level 0 (full resolution).
- ``TilePx``: a length in pixels of a resampled tile at its target mpp.
Coordinates are always ``(x, y)`` top-left in level-0 pixels; arrays are indexed ``[row=y, col=x]``.
"""

from __future__ import annotations

from typing import NewType

Mpp = NewType("Mpp", float)
Microns = NewType("Microns", float)
Level0Px = NewType("Level0Px", int)
TilePx = NewType("TilePx", int)

__all__ = ["Level0Px", "Microns", "Mpp", "TilePx"]
