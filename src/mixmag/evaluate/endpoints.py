"""What is measured per endpoint: the primary metric, its resampling strata, secondary metrics.

An *endpoint* is what a label column asks the model to predict (docs/concepts/endpoints.md):

============== ======================== ================ ================================ ================
endpoint       truth                    prediction       primary metric (chance)          strata
============== ======================== ================ ================================ ================
classification (n,) class index         (n,)/(n, C) prob AUROC, macro one-vs-rest (0.5)   class
regression     (n,) value               (n,) value       Spearman's ρ (0)                 quantile bin
survival       (n, 2) time, event       (n,) risk        Harrell's C-index (0.5)          event
============== ======================== ================ ================================ ================

:data:`ENDPOINT_METRICS` holds one :class:`EndpointMetrics` per endpoint; the training side
(loss, head outputs, label parsing) is :data:`mixmag.mil.endpoints.ENDPOINTS`, whose entries point
here. Every consumer of a run's numbers (the run's ``metrics.json``, the comparison table, its
paired tests, the report, ``mixmag predict``) asks the endpoint instead of assuming AUROC.
Classification keeps exactly the statistics it always had (AUROC, DeLong for binary tasks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixmag.evaluate.bootstrap import AUROC_METRIC, Metric
from mixmag.evaluate.metrics import balanced_accuracy
from mixmag.evaluate.regression import mae, pearson, quantile_bins, spearman, spearman_rows
from mixmag.evaluate.survival import concordance_index, concordance_rows
from mixmag.registry import Registry

#: Display name of each primary metric key (tables, plots, the report).
METRIC_LABELS: dict[str, str] = {"auroc": "AUROC", "spearman": "Spearman ρ", "cindex": "C-index"}
#: The endpoint every run had before endpoints existed (a run folder without an ``endpoint`` key).
DEFAULT_ENDPOINT = "classification"


def _no_secondary(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {}


def _classification_secondary(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    # binary runs keep exactly the outputs they had; multi-class adds the balanced accuracy
    p = np.asarray(pred)
    if p.ndim == 1:
        return {}
    return {"balanced_accuracy": balanced_accuracy(truth, p)}


def _regression_secondary(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {"pearson": pearson(truth, pred), "mae": mae(truth, pred)}


def _spearman(truth: np.ndarray, pred: np.ndarray) -> float:
    return spearman(truth, pred)


def _regression_strata(truth: np.ndarray) -> np.ndarray:
    # the bootstrap of a correlation resamples patients freely (one stratum)
    return np.zeros(len(np.asarray(truth)), dtype=np.int64)


def _cindex(truth: np.ndarray, pred: np.ndarray) -> float:
    t = np.asarray(truth, dtype=np.float64)
    return concordance_index(t[:, 0], t[:, 1], pred)


def _cindex_rows(truth: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    t = np.asarray(truth, dtype=np.float64)
    return concordance_rows(t[:, 0], t[:, 1], pred, idx)


def _event_strata(truth: np.ndarray) -> np.ndarray:
    # resampling within event status keeps every resample's number of events (C-index defined)
    return (np.asarray(truth, dtype=np.float64)[:, 1] > 0).astype(np.int64)


SPEARMAN_METRIC = Metric("spearman", _spearman, spearman_rows, _regression_strata)
CINDEX_METRIC = Metric("cindex", _cindex, _cindex_rows, _event_strata)


@dataclass(frozen=True)
class EndpointMetrics:
    """How runs of one endpoint are scored and compared.

    Attributes:
        key: Endpoint name (``classification``, ``regression``, ``survival``).
        metric: The primary metric (the table's number, its CI and paired test).
        chance: Value of the primary metric for an uninformative prediction.
        stratum: What splits and bootstrap resamples are stratified by (for messages and docs).
        paired_test: The paired tests of the comparison table, for its caption.
        resampling: How bootstrap resamples are drawn (for ``metrics.json``).
        truth_columns: Columns of a predictions CSV that hold the truth (docs/formats/mil-run.md).
        prediction_column: Column of the prediction (None: the class probability columns
            ``prob`` or ``prob_0 .. prob_{C-1}``).
        secondary: ``(truth, pred) -> {name: value}`` further pooled and per-fold metrics.
        split_strata: ``(truth, n_bins) -> (n,)`` stratum of each patient for the cross-validation
            split (classes, quantile bins, event status).
    """

    key: str
    metric: Metric
    chance: float
    stratum: str
    paired_test: str
    resampling: str = "stratified by class"
    truth_columns: tuple[str, ...] = ("label",)
    prediction_column: str | None = None
    secondary: Callable[[np.ndarray, np.ndarray], dict[str, float]] = _no_secondary
    split_strata: Callable[[np.ndarray, int], np.ndarray] = lambda truth, n_bins: np.asarray(truth, np.int64)

    @property
    def label(self) -> str:
        """Display name of the primary metric (``AUROC``, ``Spearman ρ``, ``C-index``)."""
        return METRIC_LABELS[self.metric.name]


ENDPOINT_METRICS: Registry[EndpointMetrics] = Registry("endpoint")
ENDPOINT_METRICS.add("classification", EndpointMetrics(
    "classification", AUROC_METRIC, 0.5, "class", "fold- and class-stratified paired bootstrap; DeLong (binary)",
    secondary=_classification_secondary))
ENDPOINT_METRICS.add("regression", EndpointMetrics(
    "regression", SPEARMAN_METRIC, 0.0, "quantile bin of the value", "fold-stratified paired bootstrap",
    resampling="patients drawn freely", truth_columns=("label",), prediction_column="pred", secondary=_regression_secondary,
    split_strata=lambda truth, n_bins: quantile_bins(truth, n_bins)))
ENDPOINT_METRICS.add("survival", EndpointMetrics(
    "survival", CINDEX_METRIC, 0.5, "event status", "fold- and event-stratified paired bootstrap",
    resampling="stratified by event status", truth_columns=("time", "event"), prediction_column="risk",
    split_strata=lambda truth, n_bins: _event_strata(truth)))


def class_prob_matrix(df: Any) -> np.ndarray:
    """(n,) ``prob`` of a binary predictions table, or (n, C) from ``prob_0 .. prob_{C-1}``."""
    if "prob" in df.columns:
        return df["prob"].to_numpy(dtype=np.float64)
    cols = sorted((c for c in df.columns if c.startswith("prob_") and c.split("_")[1].isdigit()),
                  key=lambda c: int(c.split("_")[1]))
    return df[cols].to_numpy(dtype=np.float64)


def frame_truth(df: Any, endpoint: str = DEFAULT_ENDPOINT) -> np.ndarray:
    """The truth of a predictions table (pandas): (n,) classes or values, or (n, 2) time and event."""
    cols = list(ENDPOINT_METRICS.get(endpoint).truth_columns)
    if endpoint == DEFAULT_ENDPOINT:
        return df[cols[0]].to_numpy(dtype=np.int64)
    values = df[cols].to_numpy(dtype=np.float64)
    return values[:, 0] if len(cols) == 1 else values


def frame_prediction(df: Any, endpoint: str = DEFAULT_ENDPOINT) -> np.ndarray:
    """The predictions of a predictions table: class probabilities, values or risks."""
    column = ENDPOINT_METRICS.get(endpoint).prediction_column
    return class_prob_matrix(df) if column is None else df[column].to_numpy(dtype=np.float64)


@dataclass(frozen=True)
class PrimarySummary:
    """A run's headline numbers in its own metric (from its ``metrics.json``)."""

    endpoint: str
    metric: str
    mean: float
    sd: float
    pooled: float
    ci_lo: float | None
    ci_hi: float | None

    @property
    def label(self) -> str:
        """Display name of the metric."""
        return METRIC_LABELS[self.metric]


def primary_summary(metrics: Mapping[str, Any]) -> PrimarySummary:
    """The primary metric of a run's ``metrics.json`` (runs without ``endpoint``: classification, AUROC)."""
    endpoint = str(metrics.get("endpoint", DEFAULT_ENDPOINT))
    name = ENDPOINT_METRICS.get(endpoint).metric.name

    def num(key: str) -> float:
        value = metrics.get(key)
        return float("nan") if value is None else float(value)

    return PrimarySummary(endpoint, name, num(f"mean_{name}"), num(f"sd_{name}"), num(f"pooled_{name}"),
                          metrics.get("ci_lo"), metrics.get("ci_hi"))
