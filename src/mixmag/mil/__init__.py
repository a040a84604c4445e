"""Slide/patient-level biomarker prediction: AB-MIL over tiles or region-encoder outputs.

Main entry points (imported lazily, so ``import mixmag.mil`` stays cheap):

- :func:`train_methods` — the paper's comparison under one cross-validation protocol;
- :class:`MILClassifier` — one model, scikit-learn style;
- :class:`MilSettings` — every training setting, declared once (the ``mil:`` config section);
- :data:`METHODS` — the methods as a table of configurations (:data:`BASELINE_METHODS`: the
  reviewers' baselines, not run by default);
- :func:`predict_bag` / :func:`load_fold_model` — reuse a saved fold model (heatmaps);
"""

from __future__ import annotations

from mixmag.utils.lazy import lazy_getattr

_LAZY: dict[str, str] = {
    "train_methods": "mixmag.mil.experiment",
    "TrainSummary": "mixmag.mil.experiment",
    "MILClassifier": "mixmag.mil.estimator",
    "GatedABMIL": "mixmag.mil.abmil",
    "TransMIL": "mixmag.mil.transmil",
    "HEADS": "mixmag.mil.abmil",
    "METHODS": "mixmag.mil.methods",
    "MethodSpec": "mixmag.mil.methods",
    "BASELINE_METHODS": "mixmag.mil.methods",
    "PAPER_METHODS": "mixmag.mil.settings",
    "MilSettings": "mixmag.mil.settings",
    "MILModel": "mixmag.mil.model",
    "BagRegions": "mixmag.mil.data",
    "FeatureStore": "mixmag.mil.data",
    "predict_bag": "mixmag.mil.artifacts",
    "load_fold_model": "mixmag.mil.artifacts",
    "read_attention": "mixmag.mil.artifacts",
    "read_labels": "mixmag.mil.labels",
    "build_bags": "mixmag.mil.labels",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
