"""Collect a finished (or partial) study's outputs into the self-contained ``report.html``.

Takes plain values (the run folder, the config, the ledger records, the comparison table), not the
:class:`~mixmag.pipeline.study.Study`: the study calls the report, never the other way round.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixmag.config import PipelineConfig, load_config
from mixmag.errors import MixmagFileNotFoundError
from mixmag.io.manifest import read_manifest
from mixmag.mil.labels import read_labels
from mixmag.pipeline.ledger import LEDGER_NAME, StageLedger, StageRecord
from mixmag.report.build import build_report
from mixmag.report.endpoint_section import EndpointPanel
from mixmag.report.external import (
    external_table,
    metric_label,
    metric_values,
    value_columns,
    write_external_report,
)
from mixmag.utils.atomic import atomic_write_json

logger = logging.getLogger(__name__)

RESOLVED_CONFIG = "config.resolved.yaml"  # written by the study next to its stage ledger
EXTERNAL_DIR = "external"  # the external stage's `mixmag predict` folder inside the run folder

MAX_QC_IMAGES = 4
IMAGENET_BASELINES = ("efficientnet-lite0-imagenet",)


def cohort_table(regions_manifest: Path, labels: Path | None) -> pd.DataFrame | None:
    """One row per slide: tiling status, regions, and (when known) patient and label columns."""
    rows = read_manifest(regions_manifest)
    if not rows:
        return None
    df = pd.DataFrame([{"slide_id": k, "status": r["status"], "regions": r["n_items"], "note": r["error"]}
                       for k, r in rows.items()])
    df["regions"] = pd.to_numeric(df["regions"], errors="coerce").astype("Int64")  # the manifest holds text
    if labels is not None and Path(labels).exists():
        lab = read_labels(labels).astype({"slide_id": str})
        for col in lab.columns.drop(["patient_id", "slide_id"], errors="ignore"):
            # numeric labels stay numeric so the report can count positives
            converted = pd.to_numeric(lab[col], errors="coerce")
            if converted.notna().sum() == lab[col].notna().sum():
                whole = converted.dropna()
                # 0/1 labels stay integers (nullable: unlabelled slides have none), not 1.000
                lab[col] = converted.astype("Int64") if bool((whole == whole.round()).all()) else converted
        df = df.merge(lab, on="slide_id", how="left")
    return df


def comparison_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Per-(target, method) rows renamed for the report (``method, mean, ci_low, ci_high`` ...).

    Each row is in its target's primary metric; a table of several endpoints gets a ``metric``
    column (``AUROC``, ``Spearman ρ``, ``C-index``) after the method.
    """
    from mixmag.evaluate.compare import comparison_view
    from mixmag.evaluate.endpoints import METRIC_LABELS

    runs = comparison_view(table[table["target"] != "Average"])
    several = runs["target"].nunique() > 1
    out = pd.DataFrame({
        "method": [f"{t} · {m}" if several else m for t, m in zip(runs["target"], runs["method"], strict=True)],
        "mean": runs["mean"].astype(float),
        "sd": runs["sd"].astype(float),
        "ci_low": runs["ci_lo"].astype(float),
        "ci_high": runs["ci_hi"].astype(float),
        "Δ vs abmil-20x": runs["delta"].astype(float),
        "p (paired bootstrap)": runs["p_bootstrap"].astype(float),
    })
    if "metric" in table.columns:
        out.insert(1, "metric", [METRIC_LABELS[m] for m in runs["metric"]])
    return out.reset_index(drop=True)


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None or not np.isfinite(float(value)) else format(float(value), spec)


def _panel(run: Path, name: str) -> EndpointPanel | None:
    """The "Endpoints" entry of one run folder: multi-class, regression or survival (None: binary)."""
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    endpoint = metrics.get("endpoint", "classification")
    ci = f"{_fmt(metrics.get('ci_lo'))}–{_fmt(metrics.get('ci_hi'))}"
    if endpoint == "classification":
        if len(metrics.get("classes", [])) <= 2:
            return None
        numbers = {"classes": len(metrics["classes"]), "bags": metrics["n_bags"],
                   "macro AUROC (mean ± sd)": f"{_fmt(metrics['mean_auroc'])} ± {_fmt(metrics['sd_auroc'])}",
                   "pooled macro AUROC (95% CI)": f"{_fmt(metrics['pooled_auroc'])} ({ci})",
                   "balanced accuracy": metrics.get("balanced_accuracy")}
        return EndpointPanel(name, "multi-class", numbers, run / "roc.png" if (run / "roc.png").is_file() else None,
                             f"{name}: one-vs-rest ROC per class (pooled out-of-fold predictions)")
    if endpoint == "regression":
        numbers = {"bags": metrics["n_bags"],
                   "Spearman ρ (mean ± sd)": f"{_fmt(metrics['mean_spearman'])} ± {_fmt(metrics['sd_spearman'])}",
                   "pooled ρ (95% CI)": f"{_fmt(metrics['pooled_spearman'])} ({ci})",
                   "Pearson r": metrics.get("pearson"), "MAE": metrics.get("mae")}
        return EndpointPanel(name, "regression", numbers,
                             run / "scatter.png" if (run / "scatter.png").is_file() else None,
                             f"{name}: predicted against observed values")
    groups = metrics.get("risk_groups") or {}
    numbers = {"bags": metrics["n_bags"], "events": metrics.get("n_events"),
               "C-index (mean ± sd)": f"{_fmt(metrics['mean_cindex'])} ± {_fmt(metrics['sd_cindex'])}",
               "pooled C-index (95% CI)": f"{_fmt(metrics['pooled_cindex'])} ({ci})",
               "risk groups": groups.get("n_groups"), "log-rank p": _fmt(groups.get("logrank_p"), ".2g")}
    return EndpointPanel(name, "survival", numbers, run / "km.png" if (run / "km.png").is_file() else None,
                         f"{name}: Kaplan-Meier curves by predicted risk (log-rank p "
                         f"{_fmt(groups.get('logrank_p'), '.2g')})")


def endpoint_panels(table: pd.DataFrame) -> list[EndpointPanel]:
    """The report's "Endpoints" entries of the comparison table's runs (multi-class, regression, survival)."""
    runs = table[table["target"] != "Average"]
    several = runs["target"].nunique() > 1
    panels = []
    for _, row in runs.iterrows():
        run = Path(str(row["run_dir"]))
        if not (run / "metrics.json").is_file():
            continue
        panel = _panel(run, f"{row['target']} · {row['method']}" if several else str(row["method"]))
        if panel is not None:
            panels.append(panel)
    return panels


def roc_inputs(table: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{method: (y_true, y_score)}`` from the pooled out-of-fold predictions of binary runs."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    runs = table[table["target"] != "Average"]
    several = runs["target"].nunique() > 1
    for _, row in runs.iterrows():
        pred = pd.read_csv(Path(str(row["run_dir"])) / "predictions.csv")
        if "prob" not in pred.columns:
            continue  # multi-class: the table carries the macro AUROC
        name = f"{row['target']} · {row['method']}" if several else str(row["method"])
        out[name] = (pred["label"].to_numpy(), pred["prob"].to_numpy())
    return out


#: Runs whose external metric the summary names one by one; with more, it names the best three.
MAX_EXTERNAL_NAMED = 4


def external_summary(folder: Path, comparison: pd.DataFrame | None) -> str:
    """The summary paragraph of an external validation: external metric per run beside the internal one.

    Args:
        folder: The external stage's ``mixmag predict`` folder (``predictions.csv``, ``metrics.csv``).
        comparison: The study's comparison table (internal cross-validated AUROC) or None.
    """
    predictions = pd.read_csv(folder / "predictions.csv")
    n_bags = predictions["bag_id"].nunique()
    text = (f"**External validation**: the trained models scored {n_bags} bags of a cohort they never saw "
            f"(`external.inputs`). ")
    metrics_path = folder / "metrics.csv"
    if metrics_path.is_file():
        metrics = pd.read_csv(metrics_path)
        table = external_table(metrics, comparison)
        several = table["target"].nunique() > 1
        internal, external = value_columns(table)
        runs = [f"`{r['target']} · {r['method']}`" if several else f"`{r['method']}`" for _, r in table.iterrows()]
        values = [r[external] + (f" vs {r[internal]} cross-validated" if internal else "")
                  for _, r in table.iterrows()]
        label = metric_label(metrics)
        shown = list(range(len(runs)))
        if len(runs) > MAX_EXTERNAL_NAMED:  # the best few; every run is in the section's table
            shown = [int(i) for i in metric_values(metrics).sort_values(ascending=False).index[:3]]
            label = f"{label}, best 3 of {len(runs)} runs"
        text += f"External {label} (95% CI): " + "; ".join(f"{runs[i]} {values[i]}" for i in shown) + ". "
    else:
        text += "No labels (`external.labels`) for a target with both classes: predictions only. "
    return text + "ROC, calibration, attention and left-out slides: section External validation below."


#: Excluded slides named in the report summary per target (the rest are counted; all are in excluded.csv).
MAX_EXCLUDED_NAMED = 8


def excluded_notes(mil_dir: Path) -> list[str]:
    """One summary line per target whose training left labelled slides out, naming them and why.

    Read from each target's ``excluded.csv`` (docs/formats/mil-run.md): slides without usable
    features (with ``mil.allow_missing_slides``) and slides without a label for that target.
    """
    notes = []
    for path in sorted(mil_dir.glob("*/excluded.csv")):
        table = pd.read_csv(path, dtype=str)
        if table.empty:
            continue
        named = "; ".join(f"{r.slide_id} ({r.reason})" for r in table.head(MAX_EXCLUDED_NAMED).itertuples())
        more = f"; and {len(table) - MAX_EXCLUDED_NAMED} more" if len(table) > MAX_EXCLUDED_NAMED else ""
        notes.append(f"**{len(table)} labelled slide(s) left out of training** for target `{path.parent.name}` "
                     f"(every method trained on the others; `{path.relative_to(mil_dir.parent)}`): {named}{more}.")
    return notes


def write_study_report(out: Path, config: PipelineConfig, stages: Mapping[str, StageRecord],
                       comparison: pd.DataFrame | None) -> Path:
    """Write ``<out>/report.html`` (and ``timings.json``) from a study's stage outputs.

    With an external cohort (``external.inputs`` and its ``external/predictions.csv``) the summary
    gives its AUROC per run and ``external/report.html`` the whole external-validation section.

    Args:
        out: The study's run folder.
        config: The study config.
        stages: Ledger record per stage that ran (or was reused) in this run, in run order.
        comparison: The compare stage's methods x tasks table (None without labels).
    """
    timings = {name: rec.seconds for name, rec in stages.items()}
    atomic_write_json(out / "timings.json", timings)
    notes: list[str] = []
    encoder = config.embed.encoder
    if encoder in IMAGENET_BASELINES:
        notes.append(f"Tile embeddings come from {encoder}, an ImageNet model used as an offline "
                     "baseline, not a pathology foundation model.")
    if config.embed.random_weights:
        notes.append("Tile embeddings come from an encoder with RANDOM weights (testing only).")
    pretrain_notes = {rec.outputs.get("corpus_note") for k, rec in stages.items() if k.startswith("pretrain-")}
    notes.extend(sorted(n for n in pretrain_notes if n))
    train = stages.get("train")
    if train is not None:
        for method, reason in (train.outputs.get("skipped") or {}).items():
            notes.append(f"Method {method} was not run: {reason}")
    if train is not None:
        notes.extend(excluded_notes(out / "mil"))
    external: Path | None = out / EXTERNAL_DIR
    # only while the config asks for it: the folder of an earlier run may hold another cohort
    if config.external.inputs and (out / EXTERNAL_DIR / "predictions.csv").is_file():
        # a section of this report and a page of its own to share, internal AUROC beside the external one
        write_external_report(out / EXTERNAL_DIR, title="mixmag external validation", internal=comparison)
        notes.append(external_summary(out / EXTERNAL_DIR, comparison))
    else:
        external = None

    if stages.get("tile") is not None:
        skipped = [k for k, r in stages.items() if r.skipped]
        if skipped:
            notes.append("Stages reused from an earlier run: " + ", ".join(skipped) + ".")

    qc = sorted((out / "tiles" / "qc").glob("*.png"))[:MAX_QC_IMAGES]
    heatmaps: list[Any] = []
    if "heatmaps" in stages:
        heatmaps = [Path(p) for p in stages["heatmaps"].outputs.get("files", [])]
    loss = {name.removeprefix("pretrain-"): rec.outputs["metrics"] for name, rec in stages.items()
            if name.startswith("pretrain-") and rec.outputs.get("final_loss") is not None}
    # the config's objective order, whether the stages come from this run or from stages.json
    # (alphabetical): a curve keeps its colour between `mixmag run` and `mixmag report`
    order = {objective: i for i, objective in enumerate(config.region.objectives)}
    loss = dict(sorted(loss.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    table = comparison
    # only a diagnose stage of this run: a folder left by an earlier run may describe other inputs
    diagnostics = stages.get("diagnose")
    return build_report(
        out / "report.html",
        title="mixmag study report",
        subtitle=str(out),
        config=config,
        cohort=cohort_table(out / "tiles" / "regions" / "manifest.csv", config.mil.labels),
        qc_images=[(p, p.stem) for p in qc],
        comparison=None if table is None else comparison_rows(table),
        metric="AUROC" if table is None or "metric" not in table.columns else "primary metric",
        endpoints=[] if table is None else endpoint_panels(table),
        roc=None if table is None else roc_inputs(table),
        loss=loss or None,
        heatmaps=[(p, p.stem) for p in heatmaps],
        diagnostics=None if diagnostics is None else diagnostics.outputs.get("diagnostics"),
        external=external,
        external_internal=comparison,
        timings=timings,
        notes=notes,
    )


def is_study_folder(run_dir: str | Path) -> bool:
    """True for the run folder of ``mixmag run`` (it holds the stage ledger and the resolved config)."""
    run = Path(run_dir)
    return (run / LEDGER_NAME).is_file() and (run / RESOLVED_CONFIG).is_file()


def rebuild_study_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/report.html`` of a finished ``mixmag run`` again from its folder.

    Uses the same builder as the study itself (so the comparison table, ROC curves, diagnostics and
    notes appear as after the run), with the heatmaps that are in ``heatmaps/`` now (``mixmag
    report`` may have redrawn them).

    Raises:
        MixmagFileNotFoundError: ``run_dir`` is not the folder of a ``mixmag run``.
    """
    run = Path(run_dir)
    if not is_study_folder(run):
        raise MixmagFileNotFoundError(f"{run} has no {LEDGER_NAME} and {RESOLVED_CONFIG}: not a `mixmag run` folder")
    stages = dict(StageLedger(run).records)
    if "heatmaps" in stages:
        files = [str(p) for p in sorted((run / "heatmaps").glob("*.png"))]
        stages["heatmaps"] = replace(stages["heatmaps"], outputs={**stages["heatmaps"].outputs, "files": files})
    table_path = run / "compare" / "comparison.csv"
    comparison = pd.read_csv(table_path) if table_path.is_file() else None
    return write_study_report(run, load_config(run / RESOLVED_CONFIG), stages, comparison)
