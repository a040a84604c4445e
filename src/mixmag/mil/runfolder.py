"""Writing and reading the per-run outputs of ``mixmag train`` (``<out>/<target>/<method>/``).

This module owns the tabular/JSON half of the run-folder format (``docs/formats/mil-run.md``):
fold predictions and histories, the pooled out-of-fold predictions, and ``metrics.json``. Fold
models and attention files are in :mod:`mixmag.mil.artifacts`. Each endpoint has its own
prediction columns and metrics (docs/concepts/endpoints.md): class probabilities and AUROC
(``roc.png``), predicted values and Spearman/Pearson/MAE (``scatter.png``), or risks and the
C-index with Kaplan-Meier curves of predicted-risk groups and their log-rank test (``km.png``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixmag.errors import MixmagValueError
from mixmag.evaluate.bootstrap import bootstrap_auroc_ci, bootstrap_ci
from mixmag.evaluate.endpoints import (
    ENDPOINT_METRICS,
    EndpointMetrics,
    frame_prediction,
    frame_truth,
)
from mixmag.evaluate.metrics import auroc, fold_aurocs, summarize_folds
from mixmag.evaluate.survival import RISK_GROUP_NAMES, kaplan_meier, logrank_test, risk_groups
from mixmag.mil.labels import Bag
from mixmag.report.run_plots import write_km, write_roc, write_scatter
from mixmag.utils.atomic import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

METRICS_ARTIFACT = "mil_metrics"
METRICS_VERSION = 1
PRED_ID_COLUMNS = ("bag_id", "patient_id", "slide_ids", "fold", "label", "label_name")


def prob_columns(n_classes: int) -> list[str]:
    """Probability columns of a predictions CSV: ``prob`` (of class 1) for binary tasks, else
    ``prob_0 .. prob_{C-1}`` (class order of ``metrics.json``'s ``classes``)."""
    return ["prob"] if n_classes == 2 else [f"prob_{c}" for c in range(n_classes)]


def predictions_frame(bags: Sequence[Bag], probs: np.ndarray, fold: int, classes: Sequence[str],
                      endpoint: str = "classification") -> pd.DataFrame:
    """Predictions of one fold's test bags; ``probs`` is (n, C), or (n, 1) values / risks.

    Columns: ``bag_id, patient_id, slide_ids, fold`` then per endpoint ``label, label_name, prob``
    (or ``prob_0 ..``), ``label, pred`` (regression: observed and predicted value) or ``time,
    event, risk`` (survival).
    """
    if endpoint != "classification":
        values = np.asarray([b.value for b in bags], dtype=np.float64).reshape(len(bags), -1)
        truth_cols = ENDPOINT_METRICS.get(endpoint).truth_columns
        pred_col = ENDPOINT_METRICS.get(endpoint).prediction_column
        assert pred_col is not None
        df = pd.DataFrame({"bag_id": [b.bag_id for b in bags], "patient_id": [b.patient_id for b in bags],
                           "slide_ids": [";".join(b.slide_ids) for b in bags], "fold": fold,
                           **{c: values[:, i] for i, c in enumerate(truth_cols)}})
        if "event" in df.columns:
            df["event"] = df["event"].astype(np.int64)
        df[pred_col] = np.asarray(probs, dtype=np.float64).reshape(len(bags), -1)[:, 0]
        return df
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
                  extra: dict[str, Any] | None = None, endpoint: str = "classification",
                  n_risk_groups: int = 2) -> dict[str, Any]:
    """Write ``predictions.csv``, ``metrics.json`` and the run's plot; return the metrics.

    Args:
        run_dir: The run folder.
        oof: Out-of-fold predictions of every fold (from :func:`predictions_frame`).
        target: Label column.
        method: Method key.
        classes: Class names (index order; empty for regression and survival).
        fold_info: Per fold: ``best_epoch``, ``criterion``, ``n_train``, ``n_val``, ``n_test``.
        n_boot: Bootstrap resamples for the CI of the pooled metric.
        seed: Bootstrap seed.
        extra: More JSON fields (e.g. the config hash).
        endpoint: ``classification`` (``roc.png``), ``regression`` (``scatter.png``) or
            ``survival`` (``km.png``; ``risk_group`` column in ``predictions.csv``).
        n_risk_groups: Survival: predicted-risk groups of the Kaplan-Meier plot (2 or 3).
    """
    if endpoint != "classification":
        return _summarize_endpoint(Path(run_dir), oof, target=target, method=method, fold_info=fold_info,
                                   n_boot=n_boot, seed=seed, extra=extra, endpoint=endpoint,
                                   n_risk_groups=n_risk_groups)
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
        # multi-class runs add their balanced accuracy; binary runs keep exactly their keys
        **_secondary(ENDPOINT_METRICS.get("classification"), y, prob, oof["fold"].to_numpy()),
        "folds": {str(k): v for k, v in sorted(fold_info.items())}, **(extra or {}),
    }
    atomic_write_json(run / "metrics.json", metrics)
    if np.isfinite(pooled):
        write_roc(y, prob, oof["fold"].to_numpy(), run / "roc.png", title=f"{target} — {method}", class_names=classes)
    return metrics


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _secondary(em: EndpointMetrics, truth: np.ndarray, pred: np.ndarray, folds: np.ndarray) -> dict[str, Any]:
    """``{name: pooled, fold_<name>: {...}, mean_<name>: ...}`` of the endpoint's secondary metrics."""
    pooled = em.secondary(truth, pred)
    out: dict[str, Any] = {}
    for name, value in pooled.items():
        per_fold = {int(f): em.secondary(truth[folds == f], pred[folds == f])[name] for f in np.unique(folds)}
        mean, _ = summarize_folds(per_fold)
        out[name] = _finite(value)
        out[f"fold_{name}"] = {str(k): _finite(v) for k, v in per_fold.items()}
        out[f"mean_{name}"] = _finite(mean)
    return out


def _survival_groups(run: Path, oof: pd.DataFrame, truth: np.ndarray, pred: np.ndarray, *, title: str,
                     metrics: dict[str, Any], n_groups: int) -> dict[str, Any]:
    """Predicted-risk groups (within-fold quantiles), their Kaplan-Meier curves (``km.png``) and log-rank test."""
    names = RISK_GROUP_NAMES[n_groups]
    group = risk_groups(pred, oof["fold"].to_numpy(), n_groups)
    oof["risk_group"] = [names[g] for g in group]
    curves = {names[g]: asdict(kaplan_meier(truth[group == g, 0], truth[group == g, 1]))
              for g in range(n_groups) if (group == g).any()}
    test = logrank_test(truth[:, 0], truth[:, 1], group) if len(curves) > 1 else None
    write_km(curves, run / "km.png", p_value=None if test is None else test.p_value, title=title)
    return {"risk_groups": {
        "n_groups": n_groups, "cut": "quantiles of the predicted risk within each test fold",
        "groups": {n: {"n": int(c["n"]), "events": int(c["events"])} for n, c in curves.items()},
        "logrank_chi2": None if test is None else _finite(test.statistic),
        "logrank_df": None if test is None else test.df,
        "logrank_p": None if test is None else _finite(test.p_value)}}


def _regression_plot(run: Path, oof: pd.DataFrame, truth: np.ndarray, pred: np.ndarray, *, title: str,
                     metrics: dict[str, Any], n_groups: int) -> dict[str, Any]:
    """``scatter.png``: predicted against observed values, the pooled statistics in the corner."""
    stats = [f"Spearman ρ {metrics['pooled_spearman']:.3f}" if metrics["pooled_spearman"] is not None else "",
             f"Pearson r {metrics['pearson']:.3f}" if metrics.get("pearson") is not None else "",
             f"MAE {metrics['mae']:.3g}" if metrics.get("mae") is not None else ""]
    write_scatter(truth, pred, oof["fold"].to_numpy(), run / "scatter.png", stats=[x for x in stats if x],
                  title=title)
    return {"target_mean": float(truth.mean()), "target_sd": float(truth.std(ddof=1)) if len(truth) > 1 else None}


#: The endpoint-specific part of a run's summary: more ``metrics.json`` keys and the run's picture
#: (``oof`` may gain columns, e.g. ``risk_group``).
_RUN_EXTRAS: dict[str, Callable[..., dict[str, Any]]] = {"regression": _regression_plot, "survival": _survival_groups}


def _summarize_endpoint(run: Path, oof: pd.DataFrame, *, target: str, method: str,
                        fold_info: dict[int, dict[str, Any]], n_boot: int, seed: int,
                        extra: dict[str, Any] | None, endpoint: str, n_risk_groups: int) -> dict[str, Any]:
    """:func:`summarize_run` of a regression or survival run (docs/formats/mil-run.md)."""
    em = ENDPOINT_METRICS.get(endpoint)
    name = em.metric.name
    oof = oof.sort_values(["fold", "bag_id"], kind="stable").reset_index(drop=True)
    truth, pred = frame_truth(oof, endpoint), frame_prediction(oof, endpoint)
    folds = oof["fold"].to_numpy()
    per_fold: dict[int, float] = {}
    for f in np.unique(folds).tolist():
        per_fold[int(f)] = em.metric.score(truth[folds == f], pred[folds == f])
        if not np.isfinite(per_fold[int(f)]):
            logger.warning("fold %d: its %s is undefined (constant values or no comparable pair) and left out of "
                           "the mean", f, name)
    mean, sd = summarize_folds(per_fold)
    pooled = em.metric.score(truth, pred)
    ci = bootstrap_ci(truth, pred, metric=em.metric, n_boot=n_boot, seed=seed) if np.isfinite(pooled) else None
    counts: dict[str, Any] = {}
    if endpoint == "survival":
        counts = {"n_events": int(truth[:, 1].sum()), "n_censored": int((truth[:, 1] == 0).sum())}
    metrics: dict[str, Any] = {
        "artifact": METRICS_ARTIFACT, "format_version": METRICS_VERSION, "endpoint": endpoint, "metric": name,
        "target": target, "method": method, "n_bags": int(len(oof)), "n_patients": int(oof["patient_id"].nunique()),
        **counts,
        f"fold_{name}": {str(k): _finite(v) for k, v in per_fold.items()},
        f"mean_{name}": mean, f"sd_{name}": sd, f"pooled_{name}": _finite(pooled),
        "ci_lo": None if ci is None else _finite(ci.lo), "ci_hi": None if ci is None else _finite(ci.hi),
        "ci_level": 0.95, "n_boot": n_boot, "bootstrap": f"percentile on pooled out-of-fold predictions, {em.resampling}",
        **_secondary(em, truth, pred, folds),
    }
    metrics.update(_RUN_EXTRAS[endpoint](run, oof, truth, pred, title=f"{target} — {method}", metrics=metrics,
                                         n_groups=n_risk_groups))
    metrics.update({"folds": {str(k): v for k, v in sorted(fold_info.items())}, **(extra or {})})
    write_csv(oof, run / "predictions.csv")  # after the survival groups: it carries `risk_group`
    atomic_write_json(run / "metrics.json", metrics)
    return metrics


def read_metrics_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a ``metrics.json``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("artifact") != METRICS_ARTIFACT:
        raise MixmagValueError(f"{path} is not a mixmag MIL metrics file")
    return data
