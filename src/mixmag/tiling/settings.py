"""Settings of tiling: every option declared once (default, constraint, doc).

:class:`TilingSettings` is the ``tiling:`` section of a study config and what
:func:`~mixmag.tiling.tile.tile_slides` takes as ``settings=``; ``mixmag tile`` builds its options
from it. The region geometry defaults are those of :class:`~mixmag.geometry.RegionSpec`
(docs/concepts/resolution.md#regions-tiles-and-tokens). ``workers``, ``backend`` and the
``ray_*`` settings carry the :data:`~mixmag.utils.settings.RUNTIME` mark: they never change a
region index.

Where the slides are and how they are read (files, ``mpp`` overrides, reader backend) is not a
tiling setting: it is the study's ``slides`` section and the inputs of ``tile_slides``.
This module imports pydantic, the geometry and the backend choice (:mod:`mixmag.cluster.settings`) only.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field

from mixmag.cluster.settings import Backend, RayAddress
from mixmag.geometry import (
    DEFAULT_MPPS,
    RegionSpec,
    checked_magnification,
    magnification_label,
    parse_magnification,
)
from mixmag.tiling import MIN_THUMBNAIL_PX
from mixmag.utils.settings import RUNTIME, StageSettings

_SPEC = RegionSpec()


def _magnification(text: str) -> str:
    checked_magnification(text)  # the text is kept as written; the spec parses it again
    return text


#: One target magnification, checked to parse (whether the region tiles at it is checked with the
#: whole geometry, by :meth:`TilingSettings.region_spec` and :func:`mixmag.preflight.preflight`).
Magnification = Annotated[str, AfterValidator(_magnification)]


class TilingSettings(StageSettings):
    """Region geometry and tissue rules (docs/concepts/resolution.md#regions-tiles-and-tokens)."""

    kind: ClassVar[str] = "tiling"

    region_um: float = Field(default=_SPEC.region_um, gt=0)
    """Side of a square region in µm; a whole number of tiles at every magnification."""
    tile_px: int = Field(default=_SPEC.tile_px, gt=0)
    """Tile side in pixels at every magnification."""
    magnifications: list[Magnification] = Field(default_factory=lambda: [magnification_label(m) for m in DEFAULT_MPPS])
    """Target magnifications as labels (`20x` = 0.5 µm/px exactly) or exact resolutions (`0.5mpp`)."""
    min_tissue: float = Field(default=0.25, ge=0, le=1)
    """Keep a region when its coarsest tile (the whole region) has at least this tissue fraction."""
    valid_min_tissue: float = Field(default=0.1, ge=0, le=1)
    """A token is valid when its own tile has at least this tissue fraction."""
    thumbnail_px: int = Field(default=2048, ge=MIN_THUMBNAIL_PX)
    """Longer side of the thumbnail used for tissue detection and QC pictures."""
    workers: int = Field(default=1, ge=1, json_schema_extra=RUNTIME)
    """Slides processed in parallel processes."""
    backend: Backend = Field(default=Backend.LOCAL, json_schema_extra=RUNTIME)
    """`local` (`workers` processes on this machine) or `ray` (one Ray task per slide on a cluster;
    docs/cluster.md)."""
    ray_address: RayAddress = Field(default="auto", json_schema_extra=RUNTIME)
    """Ray cluster to join (backend ray): `auto` (`RAY_ADDRESS`, else the cluster started on this
    machine by `ray start`) or `HOST:PORT` of its head node."""
    ray_workers: int | None = Field(default=None, ge=1, json_schema_extra=RUNTIME)
    """Slides tiled at once on the Ray cluster, one CPU each (backend ray; null = the cluster's CPUs)."""
    ray_max_retries: int = Field(default=2, ge=0, json_schema_extra=RUNTIME)
    """Times a slide's Ray task is run again after its worker or node died, before the slide is
    recorded as `error` (backend ray)."""

    def region_spec(self) -> RegionSpec:
        """The :class:`~mixmag.geometry.RegionSpec` of ``region_um``, ``tile_px`` and ``magnifications``.

        Raises:
            MixmagValueError: An unreadable magnification, or a region that is not a whole
                number of tiles at every magnification.
        """
        return RegionSpec(region_um=self.region_um, tile_px=self.tile_px,
                          mpps=tuple(parse_magnification(m) for m in self.magnifications))


#: The fields that :meth:`TilingSettings.region_spec` reads (``tile_slides(spec=...)`` replaces them).
GEOMETRY_FIELDS: tuple[str, ...] = ("region_um", "tile_px", "magnifications")
