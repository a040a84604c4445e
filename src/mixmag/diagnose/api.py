"""``run_diagnostics``: run every diagnostic its inputs allow and write the tables, figures and a JSON summary.

Output folder::

    probes.csv, probes.png              region labels given: probe AUROC per feature set x property
    ceiling.csv, ceiling.png            region labels given: slide AUROC of the best regions' probe scores,
                                        and of the best single tiles (``single-tiles-10x|20x`` rows)
    pretraining.csv, pretraining.png    checkpoints given: masked reconstruction vs baselines
    loss_curve_<role>.png               a checkpoint's run folder still holds metrics.jsonl
    attention.csv, attention_summary.csv, attention.png   region labels and a MIL run given
    diagnostics.json                    inputs, settings, files written, what was skipped and why
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from mixmag._version import __version__
from mixmag.diagnose.attention import attention_diagnostics, summarize_attention
from mixmag.diagnose.ceiling import read_slide_labels, run_ceiling
from mixmag.diagnose.dataset import ProbeData, collect_probe_data
from mixmag.diagnose.labels import DEFAULT_MIN_OVERLAP, LabelTable, read_label_table
from mixmag.diagnose.pretraining import find_metrics_log, pretraining_diagnostics
from mixmag.diagnose.probes import PROBES, run_probes
from mixmag.diagnose.tiles import DEFAULT_MAX_TILES, run_tile_ceiling
from mixmag.errors import MixmagFileNotFoundError
from mixmag.io.h5common import FormatError
from mixmag.region.runlog import MetricsLog
from mixmag.report.diagnostics_plots import (
    attention_share_plot,
    ceiling_heatmap,
    probe_heatmap,
    reconstruction_bars,
)
from mixmag.report.figures import save_png
from mixmag.report.run_plots import write_loss_curve
from mixmag.utils.atomic import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

DIAGNOSTICS_ARTIFACT = "mixmag_diagnostics"
DIAGNOSTICS_VERSION = 1


@dataclass
class DiagnosticsResult:
    """What :func:`run_diagnostics` computed and wrote.

    Attributes:
        out_dir: Output folder.
        probes: Probe table (None without region labels).
        ceiling: Region-supervised slide AUROC ceiling (None without region labels or with ceiling off).
        pretraining: Reconstruction table (None without a usable checkpoint).
        attention: Per-bag attention table (None without region labels and a MIL run).
        attention_summary: Attention means per run, property and bag group.
        files: ``{name: path}`` of every file written.
        skipped: ``{diagnostic: reason}`` for what could not run.
    """

    out_dir: Path
    probes: pd.DataFrame | None = None
    ceiling: pd.DataFrame | None = None
    pretraining: pd.DataFrame | None = None
    attention: pd.DataFrame | None = None
    attention_summary: pd.DataFrame | None = None
    files: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _write_csv(result: DiagnosticsResult, name: str, df: pd.DataFrame) -> None:
    path = result.out_dir / f"{name}.csv"
    atomic_write_text(path, df.to_csv(index=False, float_format="%.6g"))
    result.files[name] = path


def _write_png(result: DiagnosticsResult, name: str, fig: Any) -> None:
    result.files[f"{name}.png"] = save_png(fig, result.out_dir / f"{name}.png", dpi=110)


def _probes(result: DiagnosticsResult, features: Path, table: LabelTable, checkpoints: Mapping[str, Path], *,
            probes: Sequence[str], min_overlap: float, max_regions: int, seed: int) -> ProbeData:
    data = collect_probe_data(features, table, checkpoints=checkpoints, min_overlap=min_overlap,
                              max_regions=max_regions, seed=seed)
    result.skipped.update({f"feature set {k}": v for k, v in data.skipped.items()})
    result.probes = run_probes(data.features, data.holds, data.properties, data.slide_ids, probes=probes, seed=seed)
    _write_csv(result, "probes", result.probes)
    if result.probes["auroc"].notna().any():
        _write_png(result, "probes", probe_heatmap(result.probes))
    return data


def _ceiling(result: DiagnosticsResult, data: ProbeData, slide_labels: Mapping[str, int] | None, *,
             features: Path, table: LabelTable, min_overlap: float, max_tiles: int, seed: int) -> None:
    region = run_ceiling(data.features, data.holds, data.properties, data.slide_ids,
                         slide_labels=slide_labels, seed=seed)
    parts = [region]
    if max_tiles > 0:
        # the single-magnification baselines score single tiles: their ceiling is over tiles, not
        # over region means
        parts.append(run_tile_ceiling(features, table, slide_labels=slide_labels, min_overlap=min_overlap,
                                      max_tiles=max_tiles, seed=seed))
    result.ceiling = pd.concat([p for p in parts if not p.empty], ignore_index=True)
    _write_csv(result, "ceiling", result.ceiling)
    if result.ceiling["slide_auroc_max"].notna().any():
        _write_png(result, "ceiling", ceiling_heatmap(result.ceiling))


def _pretraining(result: DiagnosticsResult, features: Path, checkpoints: Mapping[str, Path], *, n_regions: int,
                 seed: int) -> None:
    tables = []
    for role, ckpt in checkpoints.items():
        try:
            tables.append(pretraining_diagnostics(ckpt, features, name=role, n_regions=n_regions, seed=seed))
        except (ValueError, FormatError) as exc:  # e.g. a `random` checkpoint has no decoder to evaluate
            logger.warning("pretraining diagnostics of %s skipped: %s", role, exc)
            result.skipped[f"pretraining {role}"] = str(exc)
        log = find_metrics_log(ckpt)
        records = MetricsLog(log).records() if log is not None else []
        if records:  # the same figure `mixmag pretrain` draws (terms, EMA, learning rate)
            name = f"loss_curve_{role}.png"
            write_loss_curve(records, result.out_dir / name, title=f"pretraining loss ({role})")
            result.files[name] = result.out_dir / name
    if tables:
        result.pretraining = pd.concat(tables, ignore_index=True)
        _write_csv(result, "pretraining", result.pretraining)
        _write_png(result, "pretraining", reconstruction_bars(result.pretraining))


def _attention(result: DiagnosticsResult, features: Path, table: LabelTable, mil_dir: Path, *,
               min_overlap: float) -> None:
    result.attention = attention_diagnostics(mil_dir, features, table, min_overlap=min_overlap)
    result.attention_summary = summarize_attention(result.attention)
    _write_csv(result, "attention", result.attention)
    _write_csv(result, "attention_summary", result.attention_summary)
    if (result.attention_summary["bags"] == "positive").any():
        _write_png(result, "attention", attention_share_plot(result.attention_summary))


def run_diagnostics(
    features_dir: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str],
    region_labels: str | os.PathLike[str] | LabelTable | None = None,
    properties: Sequence[str] | None = None,
    checkpoints: Mapping[str, str | os.PathLike[str]] | None = None,
    mil_dir: str | os.PathLike[str] | None = None,
    probes: Sequence[str] = ("linear", "mlp"),
    ceiling: bool = True,
    slide_labels: str | os.PathLike[str] | Mapping[str, int] | None = None,
    slide_label_column: str | None = None,
    max_regions: int = 20000,
    max_tiles: int = DEFAULT_MAX_TILES,
    pretraining_regions: int = 1024,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    seed: int = 0,
) -> DiagnosticsResult:
    """Run the diagnostics that the inputs allow ("where is the signal lost?").

    * region labels -> probes of every feature set (tile means per magnification, region-encoder
      CLS / token mean for each checkpoint) for every property, with shuffled controls, and the
      region-supervised slide AUROC ceiling of the linear probe (:mod:`mixmag.diagnose.ceiling`);
    * checkpoints -> masked-reconstruction error per pattern and magnification vs two baselines
      (no labels needed), and the loss curve when the run's ``metrics.jsonl`` is found;
    * region labels + MIL run -> attention share and rank AUROC on labelled regions per bag.

    Args:
        features_dir: Folder of per-slide feature files (``mixmag embed`` output).
        out_dir: Output folder (created; files listed in the module docstring).
        region_labels: Region-labels CSV (boxes or regions, see :mod:`mixmag.diagnose.labels`) or a table.
        properties: Property columns of a region-labels CSV (default: every 0/1 column).
        checkpoints: ``{role: checkpoint or pretraining run folder}``, e.g. ``{"mem": ..., "cmem": ...}``.
        mil_dir: A ``mixmag train`` run folder, or its ``--out`` folder (every run below it).
        probes: Keys of :data:`~mixmag.diagnose.probes.PROBES` to fit (``linear``, ``mlp``).
        ceiling: Also compute the slide AUROC ceiling (linear probe) whenever the probes run.
        slide_labels: Slide label of the ceiling: a ``mixmag train`` labels table
            (``patient_id, slide_id, <label>``) or ``{slide_id: 0/1}``. Default: a slide is
            positive for a property when any of its labelled regions holds it.
        slide_label_column: Label column of a ``slide_labels`` table with several.
        max_regions: Most labelled regions used by the probes (seeded subsample above it).
        max_tiles: Most tiles per magnification for the single-tile ceiling
            (:mod:`mixmag.diagnose.tiles`); 0 turns it off.
        pretraining_regions: Regions sampled for the reconstruction diagnostics.
        min_overlap: Box coverage from which a region holds a property.
        seed: Seeds every sample, permutation and estimator.

    Returns:
        A :class:`DiagnosticsResult`; ``diagnostics.json`` in ``out_dir`` records the same.
    """
    features = Path(features_dir)
    if not features.is_dir() or not any(features.glob("*.h5")):
        what = "holds no feature file (<slide_id>.h5)" if features.is_dir() else "does not exist"
        raise MixmagFileNotFoundError(f"feature folder {features} {what}; pass the --out folder of `mixmag embed`")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = DiagnosticsResult(out_dir=out)
    ckpts = {role: Path(p) for role, p in (checkpoints or {}).items()}
    table = read_label_table(region_labels, properties=properties) if region_labels is not None and not isinstance(
        region_labels, LabelTable) else region_labels
    if table is not None:
        for key in probes:
            PROBES.get(key)  # a typo fails before any work
        slide_map = read_slide_labels(slide_labels, slide_label_column) if isinstance(
            slide_labels, str | os.PathLike) else slide_labels
        data = _probes(result, features, table, ckpts, probes=probes, min_overlap=min_overlap,
                       max_regions=max_regions, seed=seed)
        if ceiling:
            _ceiling(result, data, slide_map, features=features, table=table, min_overlap=min_overlap,
                     max_tiles=max_tiles, seed=seed)
        else:
            result.skipped["ceiling"] = "turned off (ceiling=False)"
    else:
        result.skipped["probes"] = "no region labels (--region-labels)"
    if ckpts:
        _pretraining(result, features, ckpts, n_regions=pretraining_regions, seed=seed)
    else:
        result.skipped["pretraining"] = "no region-encoder checkpoint (--checkpoint)"
    if table is not None and mil_dir is not None:
        _attention(result, features, table, Path(mil_dir), min_overlap=min_overlap)
    else:
        result.skipped["attention"] = "needs region labels and a MIL run (--region-labels, --mil)"
    _write_summary(result, features=features, table=table, checkpoints=ckpts, mil_dir=mil_dir,
                   slide_labels=slide_labels,
                   settings={"probes": list(probes), "ceiling": ceiling, "slide_label_column": slide_label_column,
                             "max_regions": max_regions, "max_tiles": max_tiles, "pretraining_regions": pretraining_regions,
                             "min_overlap": min_overlap, "seed": seed})
    return result


def _records(df: pd.DataFrame | None) -> list[dict[str, Any]] | None:
    return None if df is None else df.astype(object).where(df.notna(), None).to_dict("records")


def _describe_slide_labels(slide_labels: Any) -> str | None:
    if isinstance(slide_labels, Mapping):
        return f"{{slide_id: 0/1}} given in memory ({len(slide_labels)} slides)"
    return None if slide_labels is None else str(slide_labels)


def _write_summary(result: DiagnosticsResult, *, features: Path, table: LabelTable | None,
                   checkpoints: Mapping[str, Path], mil_dir: Any, slide_labels: Any,
                   settings: dict[str, Any]) -> None:
    path = result.out_dir / "diagnostics.json"
    result.files["diagnostics.json"] = path
    atomic_write_json(path, {
        "artifact": DIAGNOSTICS_ARTIFACT, "format_version": DIAGNOSTICS_VERSION, "mixmag_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"features": str(features), "region_labels": table.path if table is not None else None,
                   "label_format": table.kind if table is not None else None,
                   "properties": list(table.properties) if table is not None else [],
                   "checkpoints": {k: str(v) for k, v in checkpoints.items()},
                   "mil": str(mil_dir) if mil_dir is not None else None,
                   "slide_labels": _describe_slide_labels(slide_labels)},
        "settings": settings,
        "files": {k: str(v) for k, v in result.files.items()},
        "skipped": result.skipped,
        "probes": _records(result.probes),
        "ceiling": _records(result.ceiling),
        "pretraining": _records(result.pretraining),
        "attention_summary": _records(result.attention_summary),
    })
