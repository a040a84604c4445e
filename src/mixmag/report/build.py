"""Assemble the study report from stage outputs: config, cohort/QC, comparison, ROC, pretraining
loss, heatmaps, diagnostics, timings and environment.

:func:`build_report` takes the pieces as Python objects; :func:`build_report_from_inputs` takes
a JSON-able mapping of file paths (the ``mixmag report --inputs`` file); :func:`discover_inputs`
finds the conventional files of a run folder (docs/report.md lists them). Missing pieces are
skipped, so a report can be built at any point of a run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import pandas as pd
import yaml

from mixmag.errors import MixmagFileNotFoundError, MixmagValueError, reading_user_file
from mixmag.report.diagnostics_section import add_diagnostics_section
from mixmag.report.endpoint_section import EndpointPanel, add_endpoint_section
from mixmag.report.evaluation_plots import ROC_LEGEND_INSIDE_MAX, comparison_plot, roc_curves
from mixmag.report.external import add_external_section
from mixmag.report.html import ImageLike, Report, flatten
from mixmag.report.plots import MetricsSource, loss_curves, timings_plot
from mixmag.utils.cost import format_seconds
from mixmag.utils.env import environment_info

logger = logging.getLogger(__name__)

Captioned: TypeAlias = ImageLike | tuple[ImageLike, str | None]

# Config keys shown in the summary table (the full config is one click away).
HEADLINE_KEYS = ("out", "slides.inputs", "tiling.magnifications", "tiling.region_um", "embed.encoder",
                 "region.preset", "region.objectives", "region.steps", "mil.methods", "mil.bag_level",
                 "evaluate.folds", "evaluate.bootstrap")


def _captioned(items: Sequence[Captioned]) -> list[tuple[ImageLike, str | None]]:
    out: list[tuple[ImageLike, str | None]] = []
    for item in items:
        if isinstance(item, tuple):
            out.append((item[0], item[1]))
        else:
            out.append((item, Path(item).stem if isinstance(item, (str, os.PathLike)) else None))
    return out


def _config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if hasattr(config, "model_dump"):
        return config.model_dump(mode="json")
    if isinstance(config, (str, os.PathLike)):
        try:
            return yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:  # a file the user listed; not a mixmag bug
            raise MixmagValueError(f"{config}: invalid YAML ({exc})") from exc
    return dict(config)


def _ci_text(row: pd.Series, mean: str, low: str, high: str) -> str:
    return f"{row[mean]:.3f} ({row[low]:.3f}–{row[high]:.3f})"


#: Cohort tables longer than this are collapsed under their summary.
COHORT_ROWS_OPEN = 20


def cohort_summary(cohort: pd.DataFrame) -> pd.DataFrame | None:
    """Slides (and regions) per tiling ``status`` and ``label``, whichever of them the table has.

    Returns None when it has neither column (nothing to summarise).
    """
    keys = [c for c in ("status", "label") if c in cohort.columns]
    if not keys:
        return None
    df = cohort.assign(label=cohort["label"].astype("string").fillna("unlabelled")) if "label" in keys else cohort
    counts = df.groupby(keys, dropna=False).size().rename("slides")
    if "regions" in df.columns:
        regions = pd.to_numeric(df["regions"], errors="coerce").groupby([df[k] for k in keys], dropna=False).sum()
        return pd.concat([counts, regions.rename("regions")], axis=1).reset_index()
    return counts.reset_index()


def build_report(
    out_html: str | os.PathLike[str],
    *,
    title: str = "mixmag study report",
    subtitle: str | None = None,
    config: Any = None,
    cohort: pd.DataFrame | None = None,
    qc_images: Sequence[Captioned] = (),
    comparison: pd.DataFrame | None = None,
    roc: Mapping[str, Any] | None = None,
    loss: Mapping[str, MetricsSource] | None = None,
    heatmaps: Sequence[Captioned] = (),
    diagnostics: str | os.PathLike[str] | None = None,
    external: str | os.PathLike[str] | None = None,
    external_internal: pd.DataFrame | None = None,
    timings: Mapping[str, float] | None = None,
    environment: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    metric: str = "AUROC",
    endpoints: Sequence[EndpointPanel] = (),
) -> Path:
    """Write one self-contained HTML report.

    Args:
        out_html: Output file.
        title: Report title.
        subtitle: Line under the title.
        config: PipelineConfig, mapping, or path of ``config.resolved.yaml``.
        cohort: One row per slide (e.g. slide_id, patient_id, label, n_regions, status).
        qc_images: QC pictures (paths/arrays/figures, or ``(image, caption)``).
        comparison: One row per method with ``method, mean, ci_low, ci_high`` (+ any columns).
        roc: ``{method: (y_true, y_score)}`` or per-fold lists (see
            :func:`~mixmag.report.evaluation_plots.roc_curves`).
        loss: ``{run name: metrics}`` (DataFrame, CSV or JSONL with ``step`` and ``loss``).
        heatmaps: Heatmap PNGs (or ``(image, caption)``).
        diagnostics: A ``mixmag diagnose`` output folder (skipped when it holds no result).
        external: A ``mixmag predict`` output folder: the "External validation" section.
        external_internal: The study's comparison table (``target, method, mean_auroc, ci_lo,
            ci_hi``), shown beside the external AUROC.
        timings: ``{stage: seconds}`` in pipeline order.
        environment: From :func:`mixmag.utils.env.environment_info`; collected now when None.
        notes: Paragraphs shown in the summary.
        metric: Name of the comparison metric. When ``comparison`` has a ``metric`` column (tasks
            of several endpoints), each row is in its own metric and the forest plot has a panel
            per metric.
        endpoints: Multi-class, regression and survival results (the "Endpoints" section).

    Returns:
        The path written.
    """
    report = Report(title, subtitle=subtitle)
    cfg = _config_dict(config)
    summary = report.section("Summary")
    cards: dict[str, Any] = {}
    if cohort is not None:
        cards["slides"] = len(cohort)
        if "label" in cohort.columns:
            cards["positive slides"] = int((cohort["label"] == 1).sum())
    several_metrics = comparison is not None and "metric" in comparison.columns \
        and comparison["metric"].nunique() > 1
    if comparison is not None and len(comparison) and {"method", "mean"} <= set(comparison.columns) \
            and not several_metrics:
        best = comparison.loc[comparison["mean"].astype(float).idxmax()]
        cards[f"best {metric}"] = f"{best['mean']:.3f}"
        cards["best method"] = best["method"]
    if timings:
        cards["total time"] = format_seconds(float(sum(timings.values())))
    if cards:
        summary.cards(cards)
    for note in notes:
        summary.text(note)
    if not cards and not notes:
        summary.text("This report collects the outputs available in the run folder.")

    if cfg:
        sec = report.section("Configuration")
        flat = flatten(cfg)
        headline = {k: flat[k] for k in HEADLINE_KEYS if k in flat}
        if headline:
            sec.key_values(headline, caption="Main settings; the full resolved config is below.")
        sec.code(yaml.safe_dump(cfg, sort_keys=False), summary="Full resolved configuration (YAML)")

    if cohort is not None or qc_images:
        sec = report.section("Cohort and QC")
        if cohort is not None:
            per_status = cohort_summary(cohort)
            if per_status is not None:
                sec.table(per_status, caption="Slides per tiling status and label.")
            if len(cohort) > COHORT_ROWS_OPEN:
                sec.table(cohort, caption=f"{len(cohort)} slides.", collapsed=f"All {len(cohort)} slides")
            else:
                sec.table(cohort, caption=f"{len(cohort)} slides.")
        if qc_images:
            sec.heading("Tissue detection and region grid")
            sec.figures(_captioned(qc_images))

    if comparison is not None or roc:
        sec = report.section("Method comparison")
        if comparison is not None:
            table = comparison.copy()
            if {"mean", "ci_low", "ci_high"} <= set(table.columns):
                table.insert(1, f"{metric} (95% CI)", [_ci_text(r, "mean", "ci_low", "ci_high")
                                                       for _, r in table.iterrows()])
            # rows of different metrics have no common best
            sec.table(table, highlight_max="mean" if "mean" in table.columns and not several_metrics else None,
                      caption=f"{metric} per method with bootstrap 95% confidence intervals"
                      + ("; each row in its task's metric." if several_metrics else "; best in bold."))
            if {"method", "mean", "ci_low", "ci_high"} <= set(comparison.columns):
                sd = "sd" if "sd" in comparison.columns else None
                order = comparison.sort_values("mean", ascending=False, kind="stable")["method"].tolist()
                panel = "metric" if "metric" in comparison.columns else None  # no shared axis, no chance line
                sec.figure(comparison_plot(comparison, sd=sd, order=order, xlabel=metric, panel=panel,
                                           reference=None if panel else 0.5),
                           caption=f"{metric}: dot, mean{' (caps: ± sd)' if sd else ''}; band, 95% CI"
                           + ("; one panel per metric." if panel else "; dashed line: chance."), width="70%")
        if roc:
            # a legend beside the axes makes the figure wider: give it the room to stay legible
            width = "55%" if len(roc) <= ROC_LEGEND_INSIDE_MAX else "90%"
            sec.figure(roc_curves(roc), caption="ROC curves of the out-of-fold predictions.", width=width)

    add_endpoint_section(report, endpoints)

    if loss:
        sec = report.section("Region-encoder pretraining")
        sec.figure(loss_curves(loss, xlabel="optimizer step", title="training loss"),
                   caption="Pretraining loss per optimizer step (long runs: faint raw values under an "
                   "exponential moving average).", width="75%")

    if heatmaps:
        sec = report.section("Heatmaps")
        sec.text("Region attention of the trained model over each slide, which magnification drove "
                 "the top region, and the top regions at every magnification.")
        sec.figures(_captioned(heatmaps), min_px=520)

    if external is not None:
        add_external_section(report, external, internal=external_internal)

    if diagnostics is not None:
        add_diagnostics_section(report, diagnostics)

    if timings:
        sec = report.section("Timings")
        rows = [{"stage": k, "seconds": float(v), "wall time": format_seconds(float(v))} for k, v in timings.items()]
        sec.table(rows, float_format="{:.1f}", caption="Wall time per stage.")
        sec.figure(timings_plot(timings), width="60%")

    if environment is None:
        environment = environment_info()
    report.section("Environment").key_values(environment, caption="Versions, platform and device.")
    path = report.write(out_html)
    logger.info("wrote report %s", path)
    return path


def _read_predictions(path: Path) -> Any:
    """``y_true, y_score[, fold]`` CSV -> pooled tuple, or per-fold list when ``fold`` exists."""
    df = pd.read_csv(path)
    missing = {"y_true", "y_score"} - set(df.columns)
    if missing:
        raise MixmagValueError(f"{path}: predictions need columns y_true and y_score (missing {sorted(missing)})")
    if "fold" in df.columns:
        return [(g["y_true"].to_numpy(), g["y_score"].to_numpy()) for _, g in df.groupby("fold", sort=True)]
    return (df["y_true"].to_numpy(), df["y_score"].to_numpy())


def build_report_from_inputs(inputs: Mapping[str, Any] | str | os.PathLike[str],
                             out_html: str | os.PathLike[str] | None = None) -> Path:
    """Build the report from a mapping (or JSON file) of file paths; see docs/report.md.

    Keys (all optional): ``title``, ``subtitle``, ``out`` (HTML path), ``config`` (YAML),
    ``cohort`` (CSV), ``qc_images`` (list), ``comparison`` (CSV), ``roc`` ({method: predictions
    CSV}), ``loss`` ({run: metrics CSV/JSONL}), ``heatmaps`` (list of paths or {path, caption}),
    ``diagnostics`` (a ``mixmag diagnose`` folder), ``timings`` (JSON file or {stage: seconds}),
    ``environment`` (``env.json``), ``notes``.
    Relative paths are resolved against the JSON file's folder.
    """
    base = Path.cwd()
    if isinstance(inputs, (str, os.PathLike)):
        base = Path(inputs).resolve().parent
        with reading_user_file(inputs):
            spec: dict[str, Any] = json.loads(Path(inputs).read_text(encoding="utf-8"))
    else:
        spec = dict(inputs)

    def p(value: Any) -> Path:
        path = Path(value)
        return path if path.is_absolute() else base / path

    def images(items: Sequence[Any]) -> list[Captioned]:
        out: list[Captioned] = []
        for it in items:
            out.append((p(it["path"]), it.get("caption")) if isinstance(it, Mapping) else p(it))
        return out

    timings = spec.get("timings")
    if isinstance(timings, (str, os.PathLike)):
        with reading_user_file(p(timings)):
            timings = json.loads(p(timings).read_text(encoding="utf-8"))
    env = spec.get("environment")
    if isinstance(env, (str, os.PathLike)):
        with reading_user_file(p(env)):
            env = json.loads(p(env).read_text(encoding="utf-8"))
    out = out_html or spec.get("out")
    if out is None:
        raise MixmagValueError("no output path: pass out_html or set 'out' in the inputs")
    return build_report(
        p(out) if out_html is None else out,
        title=spec.get("title", "mixmag study report"),
        subtitle=spec.get("subtitle"),
        config=p(spec["config"]) if spec.get("config") else None,
        cohort=pd.read_csv(p(spec["cohort"])) if spec.get("cohort") else None,
        qc_images=images(spec.get("qc_images", [])),
        comparison=pd.read_csv(p(spec["comparison"])) if spec.get("comparison") else None,
        roc={k: _read_predictions(p(v)) for k, v in spec.get("roc", {}).items()} or None,
        loss={k: p(v) for k, v in spec.get("loss", {}).items()} or None,
        heatmaps=images(spec.get("heatmaps", [])),
        diagnostics=p(spec["diagnostics"]) if spec.get("diagnostics") else None,
        timings=timings,
        environment=env,
        notes=spec.get("notes", []),
    )


def discover_inputs(run_dir: str | os.PathLike[str], *, max_images: int = 12) -> dict[str, Any]:
    """The report inputs found at their conventional places in a run folder (docs/report.md)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise MixmagFileNotFoundError(f"run folder {run} does not exist")
    found: dict[str, Any] = {"title": f"mixmag report: {run.resolve().name}", "out": str(run / "report.html")}

    def first(*names: str) -> Path | None:
        return next((run / n for n in names if (run / n).is_file()), None)

    for key, names in (("config", ("config.resolved.yaml",)), ("environment", ("env.json",)),
                       ("timings", ("timings.json",)), ("cohort", ("cohort.csv",)),
                       ("comparison", ("evaluate/comparison.csv", "comparison.csv"))):
        hit = first(*names)
        if hit is not None:
            found[key] = str(hit)
    qc = sorted((run / "tiles" / "qc").glob("*.png")) or sorted((run / "qc").glob("*.png"))
    if qc:
        found["qc_images"] = [str(q) for q in qc[:max_images]]
    preds = sorted((run / "evaluate" / "predictions").glob("*.csv"))
    if preds:
        found["roc"] = {q.stem: str(q) for q in preds}
    loss = {q.parent.name: str(q) for q in sorted((run / "pretrain").glob("*/metrics.jsonl"))}
    if loss:
        found["loss"] = loss
    heat = sorted((run / "heatmaps").glob("*.png"))
    if heat:
        found["heatmaps"] = [str(h) for h in heat[:max_images]]
    if (run / "diagnostics" / "diagnostics.json").is_file():
        found["diagnostics"] = str(run / "diagnostics")
    inputs = [k for k in found if k not in ("title", "out")]
    if not inputs:  # an empty report.html would look like a finished run with nothing in it
        raise MixmagFileNotFoundError(
            f"{run} holds nothing a report shows (no config.resolved.yaml, comparison.csv, predictions, "
            "pretraining metrics, QC images or heatmaps); pass the --out folder of `mixmag run` or `mixmag demo`")
    logger.info("report inputs found in %s: %s", run, ", ".join(inputs))
    return found
