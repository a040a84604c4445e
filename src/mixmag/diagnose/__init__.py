"""Where is the signal lost? Diagnostics of features, pretraining and MIL attention against region labels.

Public API (heavy modules are imported lazily on first use)::

    run_diagnostics, DiagnosticsResult                     mixmag.diagnose.api
    read_label_table, label_regions, box_coverage          mixmag.diagnose.labels
    LabelTable, RegionLabels                               mixmag.diagnose.labels
    FEATURE_SETS, available_feature_sets                   mixmag.diagnose.featuresets
    collect_probe_data, ProbeData                          mixmag.diagnose.dataset
    PROBES, probe_auroc, run_probes                        mixmag.diagnose.probes
    run_ceiling, read_slide_labels                         mixmag.diagnose.ceiling
    pretraining_diagnostics, find_metrics_log              mixmag.diagnose.pretraining
    attention_diagnostics, summarize_attention             mixmag.diagnose.attention

See ``docs/concepts/diagnostics.md`` for what each number means and what chance looks like.
"""

from __future__ import annotations

from mixmag.utils.lazy import lazy_getattr

_LAZY: dict[str, str] = {
    "run_diagnostics": "mixmag.diagnose.api",
    "DiagnosticsResult": "mixmag.diagnose.api",
    "read_label_table": "mixmag.diagnose.labels",
    "label_regions": "mixmag.diagnose.labels",
    "box_coverage": "mixmag.diagnose.labels",
    "LabelTable": "mixmag.diagnose.labels",
    "RegionLabels": "mixmag.diagnose.labels",
    "FEATURE_SETS": "mixmag.diagnose.featuresets",
    "available_feature_sets": "mixmag.diagnose.featuresets",
    "collect_probe_data": "mixmag.diagnose.dataset",
    "ProbeData": "mixmag.diagnose.dataset",
    "PROBES": "mixmag.diagnose.probes",
    "probe_auroc": "mixmag.diagnose.probes",
    "run_probes": "mixmag.diagnose.probes",
    "run_ceiling": "mixmag.diagnose.ceiling",
    "read_slide_labels": "mixmag.diagnose.ceiling",
    "pretraining_diagnostics": "mixmag.diagnose.pretraining",
    "find_metrics_log": "mixmag.diagnose.pretraining",
    "attention_diagnostics": "mixmag.diagnose.attention",
    "summarize_attention": "mixmag.diagnose.attention",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
