"""Heatmaps, plots and the self-contained HTML report of a run.

All of mixmag's drawing lives here (no other package imports matplotlib): every stage draws
its figures with these functions, from plain values.

* :mod:`mixmag.report.heatmap` -- region attention over the thumbnail, per-magnification token
  view, top-k regions at 5x/10x/20x (numpy in, matplotlib Figure out).
* :mod:`mixmag.report.plots` -- training curves (loss, MIL learning curve), timings.
* :mod:`mixmag.report.evaluation_plots` -- ROC curves, reliability diagram, comparison forest plot.
* :mod:`mixmag.report.run_plots` -- the PNGs stages write into their run folders (same figures).
* :mod:`mixmag.report.html` -- :class:`Report`, a builder of one-file HTML reports.
* :mod:`mixmag.report.build` -- :func:`build_report` from stage outputs.
* :mod:`mixmag.report.settings` -- :class:`ReportSettings`, the ``report:`` config section.

The names below load on first access, so ``import mixmag.report`` (and reading its settings)
does not import matplotlib.
"""

from __future__ import annotations

from mixmag.utils.lazy import lazy_getattr

_LAZY: dict[str, str] = {
    "Report": "mixmag.report.html",
    "Section": "mixmag.report.html",
    "ReportSettings": "mixmag.report.settings",
    "attention_overlay": "mixmag.report.heatmap",
    "build_report": "mixmag.report.build",
    "build_report_from_inputs": "mixmag.report.build",
    "discover_inputs": "mixmag.report.build",
    "read_region_tiles": "mixmag.report.heatmap",
    "region_token_view": "mixmag.report.heatmap",
    "top_k_regions": "mixmag.report.heatmap",
    "top_regions_figure": "mixmag.report.heatmap",
    "write_slide_heatmaps": "mixmag.report.heatmap",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
