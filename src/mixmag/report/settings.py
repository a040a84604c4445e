"""Settings of the study's heatmaps and report: every option declared once (default, constraint, doc).

:class:`ReportSettings` is the ``report:`` section of a study config: the study's heatmaps stage
draws with it (:func:`~mixmag.pipeline.heatmaps.write_study_heatmaps`), and ``mixmag report``
takes the same keys to redraw a run's heatmaps before it builds the HTML. This module imports
pydantic only (``mixmag.report`` loads its plotting modules lazily).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from mixmag.utils.settings import StageSettings

#: Smallest thumbnail (longer side, px) a heatmap is drawn on.
MIN_HEATMAP_THUMBNAIL_PX = 128


class ReportSettings(StageSettings):
    """Heatmaps and the HTML report."""

    kind: ClassVar[str] = "report"

    heatmap_slides: int = Field(default=4, ge=0)
    """Slides with attention heatmaps (0 = none): the most confidently positive and negative bags of
    the best mixing method, drawn from their out-of-fold attention."""
    top_k: int = Field(default=4, ge=0)
    """Highest-attention regions outlined on each heatmap and shown as crops at every magnification."""
    thumbnail_px: int = Field(default=1024, ge=MIN_HEATMAP_THUMBNAIL_PX)
    """Longer side of the slide thumbnail the heatmaps are drawn on."""
