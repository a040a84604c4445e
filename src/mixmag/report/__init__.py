"""Heatmaps, plots and the self-contained HTML report of a run.

* :mod:`mixmag.report.heatmap` -- region attention over the thumbnail, per-magnification token
  view, top-k regions at 5x/10x/20x (numpy in, matplotlib Figure out).
* :mod:`mixmag.report.plots` -- loss curves, ROC curves, comparison forest plot, timings.
* :mod:`mixmag.report.html` -- :class:`Report`, a builder of one-file HTML reports.
* :mod:`mixmag.report.build` -- :func:`build_report` from stage outputs.
"""

from __future__ import annotations

from mixmag.report.build import build_report, build_report_from_inputs, discover_inputs
from mixmag.report.heatmap import (
    attention_overlay,
    read_region_tiles,
    region_token_view,
    top_k_regions,
    top_regions_figure,
    write_slide_heatmaps,
)
from mixmag.report.html import Report, Section

__all__ = [
    "Report", "Section", "attention_overlay", "build_report", "build_report_from_inputs", "discover_inputs",
    "read_region_tiles", "region_token_view", "top_k_regions", "top_regions_figure", "write_slide_heatmaps",
]
