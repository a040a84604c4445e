"""Settings of the evaluation protocol: every option declared once (default, constraint, doc).

:class:`EvaluateSettings` is the ``evaluate:`` section of a study config. Its fields marked
:data:`CROSS_VALIDATION` are the protocol of MIL training: :func:`~mixmag.mil.experiment.train_methods`
takes the settings as ``evaluation=`` and ``mixmag train`` reads these keys; the other fields
configure the study's diagnostics stage. Defaults and why: docs/concepts/evaluation.md.
This module imports pydantic only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from mixmag.utils.settings import StageSettings, marked_fields

#: The method every paired Δ is taken against unless told otherwise (the paper's baseline).
REFERENCE_METHOD = "abmil-20x"

#: ``json_schema_extra`` of a field of the cross-validation protocol (read by MIL training).
CROSS_VALIDATION: dict[str, Any] = {"cross_validation": True}


def cross_validation_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """Names of the fields of ``model`` marked :data:`CROSS_VALIDATION`, in declaration order."""
    return marked_fields(model, CROSS_VALIDATION)


class EvaluateSettings(StageSettings):
    """Cross-validation protocol, statistics and the diagnostics stage."""

    kind: ClassVar[str] = "evaluation"

    folds: int = Field(default=5, ge=2, json_schema_extra=CROSS_VALIDATION)
    """Outer cross-validation folds (reduced with a warning when a class has fewer patients)."""
    val_frac: float = Field(default=0.2, gt=0, lt=1, json_schema_extra=CROSS_VALIDATION)
    """Validation share of each fold's non-test patients (early stopping)."""
    bootstrap: int = Field(default=1000, ge=0, json_schema_extra=CROSS_VALIDATION)
    """Bootstrap resamples for confidence intervals (0 = none)."""
    seed: int = 0
    """Seed of the diagnostics stage (the MIL splits and training use `mil.seed`)."""
    splits: Path | None = Field(default=None, json_schema_extra=CROSS_VALIDATION)
    """Reuse an existing splits file (identical folds across runs)."""
    region_labels: Path | None = None
    """CSV of ground-truth region annotations (boxes or tiled regions, see docs/concepts/diagnostics.md)
    for the probe, slide-ceiling and attention diagnostics; without it only the label-free
    pretraining diagnostics run."""
    diagnostics: bool = True
    """Run `mixmag diagnose` as a study stage after training (`diagnostics/` in the run folder)."""
