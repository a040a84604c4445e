"""Evaluation protocol and statistics: splits, AUROC, bootstrap CIs, paired tests, comparison tables.

Pure statistics (no torch): :mod:`mixmag.mil` uses these modules; they never import it.
"""

from __future__ import annotations

from mixmag.utils.lazy import lazy_getattr

_LAZY: dict[str, str] = {
    "auroc": "mixmag.evaluate.metrics",
    "fold_aurocs": "mixmag.evaluate.metrics",
    "bootstrap_auroc_ci": "mixmag.evaluate.bootstrap",
    "paired_bootstrap": "mixmag.evaluate.bootstrap",
    "delong_test": "mixmag.evaluate.delong",
    "make_splits": "mixmag.evaluate.splits",
    "read_splits": "mixmag.evaluate.splits",
    "write_splits": "mixmag.evaluate.splits",
    "compare_runs": "mixmag.evaluate.compare",
    "EvaluateSettings": "mixmag.evaluate.settings",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
