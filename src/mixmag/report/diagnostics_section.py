"""The report's "Diagnostics" section: what ``mixmag diagnose`` found, read from its output folder.

Each part appears only when its file is in the folder (``mixmag.diagnose.api`` lists them): the
pretraining table and bars, the probe heatmap, the slide ceiling, the attention summary, and what
was skipped and why. docs/concepts/diagnostics.md explains every number; one sentence per part
says how to read it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd

from mixmag.report.html import Report, Section

logger = logging.getLogger(__name__)

#: Columns shown per table (the CSVs hold more; missing ones, e.g. of older versions, are left out).
PRETRAINING_SHOWN = ("checkpoint", "pattern", "magnification", "n_tokens", "ratio_zero", "ratio_region_mean")
PROBES_SHOWN = ("feature_set", "property", "probe", "auroc", "auroc_shuffled", "n_regions", "n_pos", "n_slides",
                "note")
CEILING_SHOWN = ("feature_set", "property", "region_auroc", "slide_auroc_max", "slide_auroc_top3", "n_slides",
                 "n_pos_slides", "note")
ATTENTION_SHOWN = ("target", "method", "property", "bags", "n_bags", "attention_share", "uniform_share",
                   "share_ratio", "rank_auroc", "rank_auroc_uniform")


def _table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame | None:
    """The CSV's ``columns`` (those present), or None when the file is missing or empty."""
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return None
    return df[[c for c in columns if c in df.columns]] if len(df) else None


def _skipped(folder: Path) -> dict[str, str]:
    """``{diagnostic: reason}`` recorded in ``diagnostics.json`` (empty when it is missing or unreadable)."""
    path = folder / "diagnostics.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("cannot read %s: %s", path, exc)
        return {}
    return {str(k): str(v) for k, v in (data.get("skipped") or {}).items()}


def add_diagnostics_section(report: Report, folder: str | os.PathLike[str]) -> Section | None:
    """Append a "Diagnostics" section built from a ``mixmag diagnose`` output folder.

    Args:
        report: The report to extend.
        folder: The diagnostics folder (``<run>/diagnostics``).

    Returns:
        The section, or None (nothing appended) when the folder holds no diagnostic result.
    """
    root = Path(folder)
    pretraining = _table(root / "pretraining.csv", PRETRAINING_SHOWN)
    probes = _table(root / "probes.csv", PROBES_SHOWN)
    ceiling = _table(root / "ceiling.csv", CEILING_SHOWN)
    attention = _table(root / "attention_summary.csv", ATTENTION_SHOWN)
    if pretraining is None and probes is None and ceiling is None and attention is None:
        return None
    sec = report.section("Diagnostics")
    sec.text("Where is the signal lost? Each part checks one stage on its own: what the pretrained region "
             "encoder learned, whether the tile features hold the annotated properties, whether any MIL model "
             "could decide the slide from its best regions, and where the trained model looks "
             "(`mixmag diagnose`; docs/concepts/diagnostics.md explains every column).")
    if pretraining is not None:
        sec.heading("Pretraining: masked reconstruction against trivial baselines")
        sec.table(pretraining, caption="Model MSE on masked tokens divided by the MSE of predicting the cohort "
                  "mean (`ratio_zero`) or the mean of the region's visible tokens (`ratio_region_mean`), per "
                  "masking pattern and masked magnification: ratios below 1 mean the encoder learned more than "
                  "the trivial answer.")
        _figure_if_present(sec, root / "pretraining.png", "The same ratios as bars; the dashed line at 1 is "
                           "the baseline.", width="70%")
    if probes is not None:
        sec.heading("Probes: is the property in the features?")
        _figure_if_present(sec, root / "probes.png", "Slide-grouped cross-validated AUROC of a probe per "
                           "feature set (rows) and annotated property (columns): chance is 0.5, and the "
                           "shuffled-label control in brackets shows how far from 0.5 chance lands for this many "
                           "regions.")
        sec.table(probes, caption="Probe AUROC per feature set and property; `note` says why a cell was skipped.",
                  collapsed="Probe table")
    if ceiling is not None:
        sec.heading("Slide ceiling: could a MIL model decide the slide from its best regions?")
        caption = ("Slide AUROC when each slide is scored by its best regions under a region-supervised probe: "
                   "near 1, the features can decide the slide and a lower MIL AUROC points at MIL training; "
                   "near 0.5–0.7, no MIL head can be expected to do much better. `single-tiles-*` rows score "
                   "single tiles (what AB-MIL over one magnification can use); a region-mean row well above "
                   "them means pooling a region's tiles adds information.")
        if (root / "ceiling.png").is_file():
            sec.figure(root / "ceiling.png", caption=caption + " Best region, best three in brackets.")
            sec.table(ceiling, caption="The same numbers with the probe's region AUROC.", collapsed="Ceiling table")
        else:
            sec.table(ceiling, caption=caption)
    if attention is not None:
        sec.heading("Attention: does the trained model look at the labelled regions?")
        sec.table(attention, caption="Attention mass on regions that hold the property, against the share "
                  "under uniform attention: in positive bags, a `share_ratio` above 1 and a `rank_auroc` above "
                  "`rank_auroc_uniform` (not 0.5: uniform attention over tokens favours regions with more "
                  "tissue) mean the model attends to the annotated evidence.")
        _figure_if_present(sec, root / "attention.png", "Attention share against uniform share in positive "
                           "bags.", width="70%")
    skipped = _skipped(root)
    if skipped:
        sec.table([{"diagnostic": k, "reason": v} for k, v in skipped.items()],
                  caption="Diagnostics that did not run, and why.", collapsed="Skipped diagnostics")
    return sec


def _figure_if_present(sec: Section, path: Path, caption: str, width: str | None = None) -> None:
    """Add the PNG at ``path`` to ``sec`` when the diagnostics wrote it (older runs may lack it)."""
    if path.is_file():
        sec.figure(path, caption=caption, width=width)
