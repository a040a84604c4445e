"""The study's ``diagnose`` stage: ``mixmag diagnose`` on the study's own features, encoders and MIL run.

What runs depends on what the study has (docs/concepts/diagnostics.md explains every number):

* a pretrained region encoder (``mem``, ``cmem``): masked reconstruction against two trivial
  baselines, no labels needed. The untrained ``random`` initialisation has no decoder and is left out;
* ``evaluate.region_labels``: probes (linear only, to keep the stage cheap) and the slide ceiling
  of the tile features and of every pretrained encoder. With MIL results, the ceiling uses the first
  target's slide labels (``mil.labels``), and the attention diagnostic reads the run that the
  heatmaps are drawn from (the best token-level mixing method, :func:`~mixmag.pipeline.heatmaps.pick_method`),
  restricted to the first target.

The stage owns ``<run>/diagnostics/`` and empties it before every run, so the folder (and the
report built from it) never mixes the results of different inputs.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mixmag.errors import MixmagFileNotFoundError
from mixmag.utils.hashing import sha256_file

logger = logging.getLogger(__name__)

#: Pretraining runs without a MEM decoder: nothing to reconstruct, so no reconstruction diagnostic.
UNTRAINED_OBJECTIVES = ("random",)
#: ``evaluate`` keys read only by this stage (kept out of the ``train`` fingerprint).
#: Probes fitted in a study (``mlp`` costs several times more and rarely changes the reading).
STUDY_PROBES = ("linear",)


@dataclass(frozen=True)
class DiagnosticsPlan:
    """Inputs of the diagnose stage, resolved from the study config and the earlier stages.

    Attributes:
        checkpoints: ``{objective: pretraining run folder}`` of the pretrained objectives.
        region_labels: Region-labels CSV (None: the pretraining diagnostics only).
        mil_dir: MIL run whose attention is checked (needs region labels and MIL results).
        slide_labels: Labels table that gives the slide ceiling its slide label (``mil.labels``).
        slide_label_column: The table's column used (the first target).
    """

    checkpoints: dict[str, Path] = field(default_factory=dict)
    region_labels: Path | None = None
    mil_dir: Path | None = None
    slide_labels: Path | None = None
    slide_label_column: str | None = None

    @property
    def empty(self) -> bool:
        """True when no diagnostic has its inputs (no pretrained encoder and no region labels)."""
        return not self.checkpoints and self.region_labels is None

    def settings(self) -> dict[str, Any]:
        """Fingerprint settings: every input path, plus the region labels' content hash.

        Annotations tend to be corrected in place, so the file's content, not only its path,
        decides whether the diagnostics are still up to date.
        """
        labels = self.region_labels
        return {
            "checkpoints": {k: str(v) for k, v in sorted(self.checkpoints.items())},
            "region_labels": None if labels is None else str(labels),
            "region_labels_sha256": None if labels is None else sha256_file(labels),
            "mil_dir": None if self.mil_dir is None else str(self.mil_dir),
            "slide_labels": None if self.slide_labels is None else str(self.slide_labels),
            "slide_label_column": self.slide_label_column,
            "probes": list(STUDY_PROBES),
        }


def check_region_labels(region_labels: Path | None) -> None:
    """Fail before any work when ``evaluate.region_labels`` names a file that is not there.

    Raises:
        FileNotFoundError: The file does not exist.
    """
    if region_labels is not None and not Path(region_labels).is_file():
        raise MixmagFileNotFoundError(f"evaluate.region_labels: {region_labels} does not exist (a CSV of region "
                                      "annotations, see docs/concepts/diagnostics.md; or remove the key)")


def plan_diagnostics(run_dir: Path, objectives: Iterable[str], *, region_labels: Path | None,
                     slide_labels: Path | None, comparison: pd.DataFrame | None,
                     targets: Sequence[str]) -> DiagnosticsPlan:
    """What the diagnose stage of a study can run.

    Args:
        run_dir: The study's run folder (pretraining runs are in ``pretrain/<objective>``).
        objectives: Pretraining runs of the study (``random`` is left out).
        region_labels: ``evaluate.region_labels``.
        slide_labels: ``mil.labels`` (used only with region labels and MIL results).
        comparison: The compare stage's table (None without labels).
        targets: Label columns the train stage modelled, in order (empty without labels).
    """
    checkpoints = {o: run_dir / "pretrain" / o for o in objectives if o not in UNTRAINED_OBJECTIVES}
    target = targets[0] if targets else None
    if region_labels is None or comparison is None or target is None:
        return DiagnosticsPlan(checkpoints, region_labels=region_labels)
    # imported here: the heatmaps module loads torch (MIL artifacts), this module is imported eagerly
    from mixmag.pipeline.heatmaps import pick_method

    picked = pick_method(comparison[comparison["target"].astype(str) == str(target)])
    return DiagnosticsPlan(checkpoints, region_labels=region_labels, mil_dir=None if picked is None else picked[2],
                           slide_labels=slide_labels, slide_label_column=str(target))


def run_plan(plan: DiagnosticsPlan, features_dir: Path, out_dir: Path, *, seed: int) -> dict[str, Any]:
    """Empty ``out_dir``, run :func:`~mixmag.diagnose.run_diagnostics` there; return the stage outputs.

    Returns:
        ``{"diagnostics": folder, "summary": diagnostics.json, "files": {name: path},
        "skipped": {diagnostic: reason}}`` (paths as absolute strings, as the ledger expects).
    """
    # imported here: torch + scikit-learn, loaded only when the stage runs
    from mixmag.diagnose.api import run_diagnostics

    if out_dir.exists():
        shutil.rmtree(out_dir)  # stale tables of other inputs must not reach the report
    result = run_diagnostics(
        features_dir, out_dir=out_dir, region_labels=plan.region_labels, checkpoints=plan.checkpoints,
        mil_dir=plan.mil_dir, probes=STUDY_PROBES, slide_labels=plan.slide_labels,
        slide_label_column=plan.slide_label_column, seed=seed,
    )
    for name, reason in result.skipped.items():
        logger.info("diagnostic %s skipped: %s", name, reason)
    return {"diagnostics": str(out_dir), "summary": str(result.files["diagnostics.json"]),
            "files": {k: str(v) for k, v in result.files.items()}, "skipped": dict(result.skipped)}
