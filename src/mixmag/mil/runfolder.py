"""Writing and reading the per-run outputs of ``mixmag train`` (``<out>/<target>/<method>/``).

This module owns the tabular/JSON half of the run-folder format (``docs/formats/mil-run.md``):
fold predictions and histories, the pooled out-of-fold predictions, and ``metrics.json``. Fold
models and attention files are in :mod:`mixmag.mil.artifacts`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixmag.errors import MixmagValueError
from mixmag.evaluate.bootstrap import bootstrap_auroc_ci
from mixmag.evaluate.metrics import auroc, fold_aurocs, summarize_folds
from mixmag.mil.labels import Bag
from mixmag.report.run_plots import write_roc
from mixmag.utils.atomic import atomic_write_json, atomic_write_text

METRICS_ARTIFACT = "mil_metrics"
METRICS_VERSION = 1
PRED_ID_COLUMNS = ("bag_id", "patient_id", "slide_ids", "fold", "label", "label_name")


def prob_columns(n_classes: int) -> list[str]:
    """Probability columns of a predictions CSV: ``prob`` (of class 1) for binary tasks, else
    ``prob_0 .. prob_{C-1}`` (class order of ``metrics.json``'s ``classes``)."""
    return ["prob"] if n_classes == 2 else [f"prob_{c}" for c in range(n_classes)]


def predictions_frame(bags: Sequence[Bag], probs: np.ndarray, fold: int, classes: Sequence[str]) -> pd.DataFrame:
    """Predictions of one fold's test bags; ``probs`` is (n, C)."""
    df = pd.DataFrame({
        "bag_id": [b.bag_id for b in bags], "patient_id": [b.patient_id for b in bags],
        "slide_ids": [";".join(b.slide_ids) for b in bags], "fold": fold,
        "label": [b.label for b in bags], "label_name": [classes[b.label] for b in bags],
    })
    cols = prob_columns(len(classes))
    values = probs[:, 1:2] if len(classes) == 2 else probs
    for i, c in enumerate(cols):
        df[c] = values[:, i]
    return df


def read_predictions(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a predictions CSV (ids as strings)."""
    return pd.read_csv(path, dtype={"bag_id": str, "patient_id": str, "slide_ids": str})


def prob_matrix(df: pd.DataFrame) -> np.ndarray:
    """(n,) for binary predictions, (n, C) for multi-class ones."""
    if "prob" in df.columns:
        return df["prob"].to_numpy(dtype=np.float64)
    cols = sorted((c for c in df.columns if c.startswith("prob_")), key=lambda c: int(c.split("_")[1]))
    return df[cols].to_numpy(dtype=np.float64)


def write_csv(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Atomically write a DataFrame as CSV without the index."""
    atomic_write_text(path, df.to_csv(index=False))
    return Path(path)


def summarize_run(run_dir: str | os.PathLike[str], oof: pd.DataFrame, *, target: str, method: str,
                  classes: Sequence[str], fold_info: dict[int, dict[str, Any]], n_boot: int, seed: int,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``predictions.csv``, ``metrics.json`` and ``roc.png`` of a finished run; return the metrics.

    Args:
        run_dir: The run folder.
        oof: Out-of-fold predictions of every fold (from :func:`predictions_frame`).
        target: Label column.
        method: Method key.
        classes: Class names (index order).
        fold_info: Per fold: ``best_epoch``, ``criterion``, ``n_train``, ``n_val``, ``n_test``.
        n_boot: Bootstrap resamples for the CI of the pooled AUROC.
        seed: Bootstrap seed.
        extra: More JSON fields (e.g. the config hash).
    """
    run = Path(run_dir)
    oof = oof.sort_values(["fold", "bag_id"], kind="stable").reset_index(drop=True)
    write_csv(oof, run / "predictions.csv")
    y = oof["label"].to_numpy(dtype=np.int64)
    prob = prob_matrix(oof)
    per_fold = fold_aurocs(y, prob, oof["fold"].to_numpy())
    mean, sd = summarize_folds(per_fold)
    pooled = auroc(y, prob, on_single_class="nan")
    ci = bootstrap_auroc_ci(y, prob, n_boot=n_boot, seed=seed) if np.isfinite(pooled) else None
    metrics = {
        "artifact": METRICS_ARTIFACT, "format_version": METRICS_VERSION, "target": target, "method": method,
        "classes": list(classes), "n_bags": int(len(oof)), "n_patients": int(oof["patient_id"].nunique()),
        "class_counts": {str(c): int((y == i).sum()) for i, c in enumerate(classes)},
        "fold_auroc": {str(k): (None if not np.isfinite(v) else float(v)) for k, v in per_fold.items()},
        "mean_auroc": mean, "sd_auroc": sd, "pooled_auroc": pooled,
        "ci_lo": None if ci is None else ci.lo, "ci_hi": None if ci is None else ci.hi,
        "ci_level": 0.95, "n_boot": n_boot, "bootstrap": "stratified percentile on pooled out-of-fold predictions",
        "folds": {str(k): v for k, v in sorted(fold_info.items())}, **(extra or {}),
    }
    atomic_write_json(run / "metrics.json", metrics)
    if np.isfinite(pooled):
        write_roc(y, prob, oof["fold"].to_numpy(), run / "roc.png", title=f"{target} — {method}", class_names=classes)
    return metrics


def read_metrics_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a ``metrics.json``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("artifact") != METRICS_ARTIFACT:
        raise MixmagValueError(f"{path} is not a mixmag MIL metrics file")
    return data
