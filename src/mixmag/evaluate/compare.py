"""The paper-style comparison table of finished runs: methods x tasks, CIs, paired tests vs a reference.

:func:`compare_runs` reads every run folder's ``metrics.json`` and out-of-fold ``predictions.csv``
(``docs/formats/mil-run.md``) and, per task, compares each method with the reference method
(default ``abmil-20x``) on the *same patients*:

- ``delta``: difference of the mean per-fold AUROCs (the numbers in the table);
- ``delta_lo``/``delta_hi``/``p_bootstrap``: fold- and class-stratified paired bootstrap of that
  difference (:func:`~mixmag.evaluate.bootstrap.paired_bootstrap`);
- ``p_delong``: DeLong's test on the pooled out-of-fold predictions (binary tasks only).

Each task is compared in its endpoint's primary metric (docs/concepts/endpoints.md): AUROC for
classification, Spearman's ρ for regression, Harrell's C-index for survival; the paired bootstrap
then resamples the patients within fold (and event status) and there is no DeLong test. The
value columns carry the metric's name: ``mean_auroc, sd_auroc, pooled_auroc`` (a table of
classification tasks only is exactly what it was before endpoints existed), ``mean_spearman ...``,
``mean_cindex ...``, plus a ``metric`` column when a table holds a metric other than AUROC;
:func:`comparison_view` gives any table the generic columns ``metric, mean, sd, pooled``.

The "Average" row is the unweighted mean over tasks (as in the paper's table) of each metric, with
the mean Δ (over all tasks, each in its own metric) and the number of tasks where the method beats
the reference.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixmag.errors import MixmagFileNotFoundError, MixmagValueError, reading_user_file
from mixmag.evaluate.bootstrap import paired_bootstrap
from mixmag.evaluate.delong import delong_test
from mixmag.evaluate.endpoints import (
    DEFAULT_ENDPOINT,
    ENDPOINT_METRICS,
    METRIC_LABELS,
    frame_prediction,
    frame_truth,
    primary_summary,
)
from mixmag.evaluate.settings import REFERENCE_METHOD
from mixmag.report.run_plots import write_comparison_plot
from mixmag.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

#: Preferred column order: the paper's seven, then the reviewers' baselines (20x-only aggregators
#: beside each other, then the frozen encoders); other methods follow alphabetically.
METHOD_ORDER = ("abmil-5x", "abmil-10x", "abmil-20x", "mix-random", "mix-mem", "mix-cmem", "mix-mem-cls",
                "abmil-20x-context", "transmil-20x", "mix-mem-frozen", "mix-cmem-frozen")
AVERAGE = "Average"
#: Primary metrics in the order of their columns.
METRIC_ORDER = ("auroc", "spearman", "cindex")
#: Columns of the long table after the metric columns.
_TAIL = ("ci_lo", "ci_hi", "delta", "delta_lo", "delta_hi", "p_bootstrap", "p_delong", "run_dir")


def find_runs(run_dirs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Run folders (those holding a ``metrics.json``) at or below each of ``run_dirs``."""
    found: list[Path] = []
    for d in run_dirs:
        p = Path(d).resolve()  # one run reached through two spellings is still one run
        if not p.exists():
            raise MixmagFileNotFoundError(f"{p} does not exist")
        hits = [p] if (p / "metrics.json").is_file() else sorted(m.parent for m in p.rglob("metrics.json"))
        if not hits:
            raise MixmagFileNotFoundError(f"no finished runs (metrics.json) under {p}; run `mixmag train` first")
        found += hits
    return list(dict.fromkeys(found))


def _read_run(run: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    with reading_user_file(run / "metrics.json"):
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    if metrics.get("artifact") != "mil_metrics":
        raise MixmagValueError(f"{run / 'metrics.json'} is not a mixmag MIL metrics file")
    preds = pd.read_csv(run / "predictions.csv", dtype={"bag_id": str, "patient_id": str})
    return metrics, preds


def _probs(df: pd.DataFrame) -> np.ndarray:
    if "prob" in df.columns:
        return df["prob"].to_numpy(np.float64)
    cols = sorted((c for c in df.columns if c.startswith("prob_")), key=lambda c: int(c.split("_")[1]))
    return df[cols].to_numpy(np.float64)


def _paired_endpoint(ref: pd.DataFrame, other: pd.DataFrame, endpoint: str, *, n_boot: int, seed: int,
                     label: str) -> dict[str, float]:
    """Paired bootstrap of ``other`` vs ``ref`` in a regression or survival metric (no DeLong test)."""
    em = ENDPOINT_METRICS.get(endpoint)
    merged = ref.merge(other, on="bag_id", suffixes=("_a", "_b"))
    if len(merged) < max(len(ref), len(other)):
        logger.warning("%s: the runs share %d of %d/%d bags; comparing on the shared ones", label, len(merged),
                       len(ref), len(other))
    side = {k: merged.rename(columns=lambda c, k=k: c[:-2] if c.endswith(k) else c) for k in ("_a", "_b")}
    truth_a, truth_b = frame_truth(side["_a"], endpoint), frame_truth(side["_b"], endpoint)
    if not np.allclose(truth_a, truth_b, equal_nan=True):
        raise MixmagValueError(f"{label}: the two runs disagree on bag labels; they were trained on different label tables")
    same_folds = bool((merged["fold_a"] == merged["fold_b"]).all())
    if not same_folds:
        logger.warning("%s: the runs used different splits; paired test on pooled predictions instead of "
                       "per-fold values", label)
    res = paired_bootstrap(truth_a, frame_prediction(side["_a"], endpoint), frame_prediction(side["_b"], endpoint),
                           folds=merged["fold_a"].to_numpy() if same_folds else None, n_boot=n_boot, seed=seed,
                           metric=em.metric)
    return {"delta_lo": res.lo, "delta_hi": res.hi, "p_bootstrap": res.p_value, "p_delong": float("nan"),
            "n_paired": int(len(merged))}


def _paired(ref: pd.DataFrame, other: pd.DataFrame, *, n_boot: int, seed: int, label: str,
            endpoint: str = DEFAULT_ENDPOINT) -> dict[str, float]:
    """Paired statistics of ``other`` vs ``ref`` on their shared bags."""
    if endpoint != DEFAULT_ENDPOINT:
        return _paired_endpoint(ref, other, endpoint, n_boot=n_boot, seed=seed, label=label)
    merged = ref.merge(other, on="bag_id", suffixes=("_a", "_b"))
    if len(merged) < max(len(ref), len(other)):
        logger.warning("%s: the runs share %d of %d/%d bags; comparing on the shared ones", label, len(merged),
                       len(ref), len(other))
    if (merged["label_a"] != merged["label_b"]).any():
        raise MixmagValueError(f"{label}: the two runs disagree on bag labels; they were trained on different label tables")
    same_folds = bool((merged["fold_a"] == merged["fold_b"]).all())
    if not same_folds:
        logger.warning("%s: the runs used different splits; paired test on pooled predictions instead of "
                       "per-fold AUROCs", label)
    y = merged["label_a"].to_numpy(np.int64)
    cols_a = [c for c in merged.columns if c.startswith("prob") and c.endswith("_a")]
    cols_b = [c.replace("_a", "_b") for c in cols_a]
    pa = _probs(merged[cols_a].rename(columns=lambda c: c[:-2]))
    pb = _probs(merged[cols_b].rename(columns=lambda c: c[:-2]))
    res = paired_bootstrap(y, pa, pb, folds=merged["fold_a"].to_numpy() if same_folds else None,
                           n_boot=n_boot, seed=seed)
    out = {"delta_lo": res.lo, "delta_hi": res.hi, "p_bootstrap": res.p_value, "p_delong": float("nan"),
           "n_paired": int(len(merged))}
    if pa.ndim == 1 and len(np.unique(y)) == 2:
        out["p_delong"] = delong_test(y, pa, pb).p_value
    return out


def compare_runs(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None, *,
                 reference: str = REFERENCE_METHOD, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Build the comparison table of finished runs (and write it when ``out`` is given).

    Args:
        run_dirs: Run folders, or folders above them (e.g. the ``--out`` of ``mixmag train``).
        out: Folder for ``comparison.csv``, ``comparison.md`` and ``comparison.png``; None writes nothing.
        reference: Method every other method is compared with, per task.
        n_boot: Paired bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        Long table, one row per (target, method) plus one ``Average`` row per method, with columns
        ``target, method, n_bags, mean_auroc, sd_auroc, pooled_auroc, ci_lo, ci_hi, delta, delta_lo,
        delta_hi, p_bootstrap, p_delong, run_dir`` (other endpoints: ``mean_spearman ...`` or
        ``mean_cindex ...`` beside the AUROC columns, and a ``metric`` column; module docstring).
    """
    runs = find_runs(run_dirs)
    loaded: dict[tuple[str, str], tuple[dict[str, Any], pd.DataFrame, Path]] = {}
    for run in runs:
        metrics, preds = _read_run(run)
        key = (metrics["target"], metrics["method"])
        if key in loaded:
            raise MixmagValueError(f"two runs of {key[1]} on {key[0]}: {loaded[key][2]} and {run}; pass only one")
        loaded[key] = (metrics, preds, run)
    methods = sorted({method for _, method in loaded})
    if reference not in methods and reference != REFERENCE_METHOD:  # the default may simply not be trained
        close = difflib.get_close_matches(reference, methods, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise MixmagValueError(f"reference method {reference!r} has no run here; {hint}pass --reference with one "
                               f"of the compared methods: {', '.join(methods)}")
    rows = []
    for (target, method), (m, preds, run) in loaded.items():
        head = primary_summary(m)
        name = head.metric
        row: dict[str, Any] = {
            "target": target, "method": method, "n_bags": m["n_bags"], f"mean_{name}": head.mean,
            f"sd_{name}": head.sd, f"pooled_{name}": head.pooled, "ci_lo": m["ci_lo"], "ci_hi": m["ci_hi"],
            "delta": np.nan, "delta_lo": np.nan, "delta_hi": np.nan, "p_bootstrap": np.nan, "p_delong": np.nan,
            "run_dir": str(run),
        }
        ref = loaded.get((target, reference))
        if ref is not None and method != reference:
            ref_head = primary_summary(ref[0])
            if ref_head.endpoint != head.endpoint:
                raise MixmagValueError(f"target {target!r}: {method} is a {head.endpoint} run but {reference} a "
                                       f"{ref_head.endpoint} run; compare runs of one endpoint per target")
            row["delta"] = head.mean - ref_head.mean
            row.update(_paired(ref[1], preds, n_boot=n_boot, seed=seed, label=f"{target}: {method} vs {reference}",
                               endpoint=head.endpoint))
        elif ref is None:
            logger.warning("target %r has no %s run: no Δ column for it", target, reference)
        rows.append(row | ({} if name == "auroc" else {"metric": name}))
    present = [n for n in METRIC_ORDER if any(f"mean_{n}" in r for r in rows)]
    table = pd.DataFrame(rows)
    if present != ["auroc"]:  # metric columns side by side, then the shared ones, `metric` last
        first = ["target", "method", "n_bags", *(f"{stat}_{n}" for n in present for stat in ("mean", "sd", "pooled")),
                 *_TAIL]
        table = table[first + [c for c in table.columns if c not in first and c != "metric"] + ["metric"]]
        table["metric"] = table["metric"].fillna("auroc")
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    table["_o"] = table["method"].map(lambda k: (order.get(k, len(order)), k))
    table = table.sort_values(["target", "_o"]).drop(columns="_o").reset_index(drop=True)
    avg = table.groupby("method", sort=False).agg(
        **{f"{stat}_{n}": (f"{stat}_{n}", "mean") for n in present for stat in ("mean", "pooled")},
        delta=("delta", "mean"), n_tasks=("target", "size"), wins=("delta", lambda d: int((d > 0).sum())))
    avg = avg.reset_index().assign(target=AVERAGE)
    table = pd.concat([table, avg], ignore_index=True)
    if out is not None:
        write_comparison(table, out, reference=reference)
    return table


def methods_in_order(table: pd.DataFrame) -> list[str]:
    """Methods of ``table`` in the paper's order, then alphabetically."""
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(table["method"].unique(), key=lambda k: (order.get(k, len(order)), k))


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def comparison_view(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with generic columns ``metric, mean, sd, pooled`` (each row in its own metric).

    Works on the long table of :func:`compare_runs` and on a ``comparison.csv`` read back, of any
    mixmag version (a table without ``metric`` is AUROC throughout). Average rows get the mean of
    the first metric they have.
    """
    view = table.copy()
    metric = view["metric"] if "metric" in view.columns else pd.Series("auroc", index=view.index)
    present = [n for n in METRIC_ORDER if f"mean_{n}" in view.columns]
    if AVERAGE in set(view["target"]) and present:  # Average rows: the first metric with a value
        avg = view["target"] == AVERAGE
        metric = metric.where(~avg, next(iter(present)))
        for n in reversed(present):
            metric = metric.where(~(avg & view[f"mean_{n}"].notna()), n)
    view["metric"] = metric.fillna("auroc")
    for stat in ("mean", "sd", "pooled"):
        view[stat] = [r.get(f"{stat}_{m}", np.nan) for m, (_, r) in zip(view["metric"], view.iterrows(), strict=True)]
    return view


def _task_label(target: str, metric: str) -> str:
    """A task's row name: the target, with its metric when that is not AUROC (``os (C-index)``)."""
    return target if metric == "auroc" else f"{target} ({METRIC_LABELS[metric]})"


def format_tables(table: pd.DataFrame, *, reference: str = REFERENCE_METHOD) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Wide string tables (tasks x methods, then the Average row): the metric and Δ vs ``reference``.

    Metric cells read ``mean ± sd (CI lo–hi)``; Δ cells ``+0.021 (p=0.030)`` with the bootstrap
    p-value. A task of another metric than AUROC is named with it (``os (C-index)``); with several
    metrics the Average cells list each (``AUROC 0.712 · C-index 0.650``).
    """
    methods = methods_in_order(table)
    view = comparison_view(table)
    present = [n for n in METRIC_ORDER if f"mean_{n}" in table.columns]
    names = {r.target: _task_label(r.target, r.metric) for r in view.itertuples() if r.target != AVERAGE}
    targets = list(dict.fromkeys(names.values())) + [AVERAGE]
    auc = pd.DataFrame(index=targets, columns=methods, dtype=object)
    delta = pd.DataFrame(index=targets, columns=methods, dtype=object)
    for r, (_, raw) in zip(view.itertuples(), table.iterrows(), strict=True):
        if r.target == AVERAGE:
            if len(present) == 1:
                auc.loc[r.target, r.method] = _fmt(r.mean)
            else:
                values = [(n, raw.get(f"mean_{n}")) for n in present]
                auc.loc[r.target, r.method] = " · ".join(f"{METRIC_LABELS[n]} {_fmt(v)}" for n, v in values
                                                         if v is not None and np.isfinite(v))
            d = "" if r.method == reference else f"{_fmt(r.delta, '+.3f')} ({int(r.wins)}/{int(r.n_tasks)} tasks up)"
            delta.loc[r.target, r.method] = d
            continue
        task = names[r.target]
        auc.loc[task, r.method] = f"{_fmt(r.mean)} ± {_fmt(r.sd)} ({_fmt(r.ci_lo, '.2f')}–{_fmt(r.ci_hi, '.2f')})"
        delta.loc[task, r.method] = "" if r.method == reference else f"{_fmt(r.delta, '+.3f')} (p={_fmt(r.p_bootstrap)})"
    return auc.fillna(""), delta.fillna("")


def table_titles(table: pd.DataFrame, reference: str) -> tuple[str, str]:
    """Titles of the two wide tables: the metric (AUROC, or each task's own) and Δ vs ``reference``."""
    if "metric" not in table.columns:
        return ("AUROC: mean ± sd over folds (95% CI of the pooled AUROC)",
                f"Δ AUROC vs {reference} (paired bootstrap p)")
    return ("Primary metric (AUROC; named beside the task when another): mean ± sd over folds (95% CI of the "
            "pooled value)", f"Δ of the primary metric vs {reference} (paired bootstrap p)")


def _markdown(df: pd.DataFrame, corner: str) -> str:
    header = "| " + " | ".join([corner, *df.columns]) + " |"
    sep = "|" + "|".join(["---"] * (len(df.columns) + 1)) + "|"
    body = ["| " + " | ".join([str(i), *map(str, row)]) + " |" for i, row in zip(df.index, df.to_numpy(), strict=True)]
    return "\n".join([header, sep, *body])


def write_comparison(table: pd.DataFrame, out: str | os.PathLike[str], *, reference: str = REFERENCE_METHOD) -> Path:
    """Write ``comparison.csv`` (long), ``comparison.md`` (two wide tables) and ``comparison.png``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "comparison.csv", table.to_csv(index=False))
    auc, delta = format_tables(table, reference=reference)
    if "metric" not in table.columns:
        text = (
            "# AUROC by task and method\n\nMean ± sd over test folds (95 % bootstrap CI of the pooled "
            "out-of-fold AUROC).\n\n" + _markdown(auc, "task") +
            f"\n\n# Δ AUROC vs {reference}\n\nDifference of mean fold AUROCs; p: paired, fold-stratified "
            "bootstrap. Average row: mean Δ and the number of tasks above the reference.\n\n"
            + _markdown(delta, "task") + "\n"
        )
    else:
        text = (
            "# Primary metric by task and method\n\nEach task in its endpoint's metric: AUROC (classification), "
            "Spearman ρ (regression), C-index (survival; named beside the task). Mean ± sd over test folds (95 % "
            "bootstrap CI of the pooled out-of-fold value).\n\n" + _markdown(auc, "task") +
            f"\n\n# Δ vs {reference}\n\nDifference of mean fold values; p: paired, fold-stratified bootstrap "
            "(also by class or event status); DeLong only for binary tasks (comparison.csv). Average row: mean Δ "
            "over every task and the number of tasks above the reference.\n\n" + _markdown(delta, "task") + "\n"
        )
    atomic_write_text(folder / "comparison.md", text)
    per_task = table[table["target"] != AVERAGE]
    order = methods_in_order(per_task)
    if "metric" not in table.columns:
        write_comparison_plot(per_task, folder / "comparison.png", reference=reference, method_order=order)
    else:  # one panel per task, titled with its metric
        view = comparison_view(per_task)
        view["target"] = [_task_label(t, m) for t, m in zip(view["target"], view["metric"], strict=True)]
        write_comparison_plot(view, folder / "comparison.png", reference=reference, method_order=order,
                              mean="mean", sd="sd", xlabel="primary metric",
                              note="dot and caps: mean ± sd over folds; band: 95 % bootstrap CI of the pooled "
                                   "value; dashed: reference")
    return folder
