"""The "External validation" report section, built from a ``mixmag predict`` output folder.

The folder layout is in ``docs/formats/predictions.md``. The same section serves the stand-alone
``report.html`` that ``mixmag predict`` writes and the study report, which passes its internal
cross-validation table so both AUROCs stand side by side per method.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from mixmag.report.html import Report, Section


def _ci(row: pd.Series, value: str, lo: str, hi: str) -> str:
    if pd.isna(row.get(value)):
        return "—"
    if pd.isna(row.get(lo)) or pd.isna(row.get(hi)):
        return f"{row[value]:.3f}"
    sep = "–" if row[lo] >= 0 else " to "  # a dash after a negative bound reads as a minus sign
    return f"{row[value]:.3f} ({row[lo]:.3f}{sep}{row[hi]:.3f})"


#: Display names of the metrics of runs that are not classification (docs/concepts/endpoints.md).
OTHER_METRICS = {"spearman": "Spearman ρ", "cindex": "C-index"}


def _metric_of(row: pd.Series) -> str:
    """The row's metric key (``metric`` column of regression/survival rows; AUROC otherwise)."""
    value = row.get("metric")
    return "auroc" if value is None or pd.isna(value) else str(value)


def metric_values(metrics: pd.DataFrame) -> pd.Series:
    """Each row's value of its own metric (:func:`_metric_of`), indexed like ``metrics``."""
    return pd.Series([float(m[_metric_of(m)]) for _, m in metrics.iterrows()], index=metrics.index)


def _display(metric: str) -> str:
    return "AUROC" if metric == "auroc" else OTHER_METRICS.get(metric, metric)


def metric_label(metrics: pd.DataFrame) -> str:
    """What the external table's values are: ``AUROC``, ``C-index``, ``Spearman ρ``, or ``metric`` when mixed."""
    names = {_metric_of(m) for _, m in metrics.iterrows()}
    return _display(names.pop()) if len(names) == 1 else "metric"


def external_table(metrics: pd.DataFrame, internal: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (target, method): the external metric with its CI, and the internal CV one when given.

    The value columns are named after the metric all rows share (``external AUROC (95% CI)``,
    ``external C-index (95% CI)``); when targets of several endpoints are mixed they are
    ``external metric (95% CI)`` and each cell names its metric (``C-index 0.712 (0.650–0.770)``).
    :func:`value_columns` finds them.

    Args:
        metrics: ``metrics.csv`` of ``mixmag predict``.
        internal: The study's comparison table (``target, method, mean_<metric>, ci_lo, ci_hi``) or None.
    """
    label = metric_label(metrics)
    rows = []
    lookup = {}
    if internal is not None and {"target", "method"} <= set(internal.columns) \
            and any(c.startswith("mean_") for c in internal.columns):
        lookup = {(str(r["target"]), str(r["method"])): r for _, r in internal.iterrows()}
    for _, m in metrics.iterrows():
        row = {"target": m["target"], "method": m["method"], "model": m["model"], "bags": int(m["n_bags"])}
        name = _metric_of(m)
        prefix = "" if label != "metric" else f"{_display(name)} "
        cv = lookup.get((str(m["target"]), str(m["method"])))
        if lookup:
            row[f"internal CV {label} (95% CI)"] = "—" if cv is None else prefix + _ci(cv, f"mean_{name}", "ci_lo",
                                                                                     "ci_hi")
        row[f"external {label} (95% CI)"] = prefix + _ci(m, name, "ci_lo", "ci_hi")
        rows.append(row)
    return pd.DataFrame(rows)


def value_columns(table: pd.DataFrame) -> tuple[str | None, str]:
    """The ``(internal, external)`` value columns of an :func:`external_table` (internal None when absent)."""
    internal = next((c for c in table.columns if c.startswith("internal CV ")), None)
    external = next(c for c in table.columns if c.startswith("external "))
    return internal, external


def add_external_section(report: Report, folder: str | os.PathLike[str], *,
                         internal: pd.DataFrame | None = None, max_heatmaps: int = 6) -> Section | None:
    """Append an "External validation" section from a ``mixmag predict`` folder.

    Args:
        report: The report to extend.
        folder: The predict output folder.
        internal: The internal comparison table, shown next to the external AUROCs.
        max_heatmaps: Attention overlays shown at most.

    Returns:
        The section, or None (nothing appended) when the folder holds no predictions.
    """
    root = Path(folder)
    predictions_path = root / "predictions.csv"
    if not predictions_path.is_file():
        return None
    predictions = pd.read_csv(predictions_path)
    sec = report.section("External validation")
    n_bags = predictions[["target", "method", "bag_id"]].drop_duplicates().groupby(["target", "method"]).size()
    sec.text(f"Trained models applied to a cohort they never saw: {int(n_bags.max()) if len(n_bags) else 0} bags, "
             f"{len(n_bags)} run(s). The reported probability is the refit-on-all model's where `--refit-all` made "
             "one (`model = final`), else the mean of the cross-validation fold models (`model = ensemble`).")
    metrics_path = root / "metrics.csv"
    if metrics_path.is_file():
        metrics = pd.read_csv(metrics_path)
        label = metric_label(metrics)
        stratified = " (stratified by class)" if label == "AUROC" else ""
        sec.table(external_table(metrics, internal),
                  caption=f"External {label} with a percentile bootstrap 95 % CI over bags{stratified}"
                  + (f"; internal: mean cross-validated {label} of the study." if internal is not None else "."))
        figures = []
        for _, m in metrics.iterrows():
            run = root / str(m.get("plots_dir", ""))
            figures += [(p, f"{m['target']} — {m['method']}: {kind}") for kind, p in
                        (("ROC", run / "roc.png"), ("calibration", run / "calibration.png"),
                         ("predicted vs observed", run / "scatter.png"),
                         ("Kaplan-Meier by predicted risk (median split)", run / "km.png")) if p.is_file()]
        if figures:
            sec.figures(figures)
    else:
        sec.note("No labels were given (or no target had both classes among the labelled bags): predictions only.")
    heatmaps = sorted((root / "heatmaps").glob("*_attention.png"))[:max_heatmaps]
    if heatmaps:
        sec.heading("Attention on the new slides")
        sec.figures([(p, p.stem.removesuffix("_attention")) for p in heatmaps])
    problems_path = root / "problems.csv"
    if problems_path.is_file():
        problems = pd.read_csv(problems_path)
        if len(problems):
            sec.table(problems, caption="Slides left out, at which step, and why (the rest were scored).",
                      collapsed=f"{len(problems)} slide(s) left out")
    return sec


def write_external_report(folder: str | os.PathLike[str], *, title: str = "mixmag external validation",
                          internal: pd.DataFrame | None = None) -> Path:
    """Write ``<folder>/report.html`` with the external-validation section (and the predictions table)."""
    root = Path(folder)
    report = Report(title, subtitle=f"`mixmag predict` output in {root}")
    add_external_section(report, root, internal=internal)
    predictions = pd.read_csv(root / "predictions.csv")
    shown = [c for c in predictions.columns if c in ("bag_id", "patient_id", "target", "method", "label", "prob")]
    report.section("Predictions").table(predictions[shown], caption="Reported probability per bag "
                                        "(every model's score is in predictions.csv).", collapsed="All predictions")
    return report.write(root / "report.html")
