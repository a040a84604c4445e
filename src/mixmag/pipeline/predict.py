"""``mixmag predict``: apply trained runs to a new (external) cohort.

Given slide files, the new cohort is tiled and embedded exactly as the training features were
(region geometry, tissue settings, tile encoder, weights and precision are read from the
training features' provenance), then every selected run scores it (:mod:`mixmag.mil.deploy`).
Given a features folder, it is checked against the same provenance and scored directly; both
routes give identical scores for the same slides. The output folder (``docs/formats/predictions.md``)::

    OUT/
      predictions.csv            one row per (bag, target, method): reported and per-model probabilities
      metrics.csv / .json        AUROC with bootstrap CI per run, when labels are given
      problems.csv               slides that failed tiling/embedding or have unusable features, labelled
                                 slides without features
      <target>/<method>/roc.png, calibration.png
      heatmaps/                  attention of the most and least confident bags
      tiles/, features/<encoder>/ only when slides were given
      report.html
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixmag.errors import MixmagValueError
from mixmag.geometry import RegionSpec
from mixmag.io.features import iter_feature_files
from mixmag.io.h5common import FormatError
from mixmag.mil.data import FeatureStore
from mixmag.mil.deploy import (
    RunScores,
    TrainedRun,
    find_trained_runs,
    new_cohort_bags,
    provenance_mismatches,
    read_feature_provenance,
    score_run,
)
from mixmag.mil.labels import read_labels
from mixmag.mil.runfolder import write_csv
from mixmag.report.run_plots import write_calibration, write_roc
from mixmag.report.settings import ReportSettings
from mixmag.utils.atomic import atomic_write_json
from mixmag.utils.device import resolve_device

logger = logging.getLogger(__name__)

PREDICTIONS_CSV, METRICS_CSV, PROBLEMS_CSV = "predictions.csv", "metrics.csv", "problems.csv"


@dataclass
class PredictResult:
    """What :func:`predict_cohort` wrote.

    Attributes:
        out_dir: Output folder.
        predictions: One row per (bag, target, method) (``predictions.csv``).
        metrics: One row per run with labelled bags of both classes (``metrics.csv``); empty without labels.
        problems: ``slide_id, stage, reason`` of every slide left out (``problems.csv``).
        features_dir: The features that were scored.
        report: ``report.html``.
    """

    out_dir: Path
    predictions: pd.DataFrame
    metrics: pd.DataFrame
    problems: pd.DataFrame
    features_dir: Path
    report: Path | None = None
    heatmaps: list[Path] = field(default_factory=list)


def _is_features_folder(path: Path) -> bool:
    if not path.is_dir():
        return False
    files = list(iter_feature_files(path))
    for candidate in files:
        try:
            read_feature_provenance(candidate)
            return True
        except FormatError:
            continue
    # every .h5 is damaged: still a folder of feature files if it holds no slide, so each file is
    # reported with its reason in problems.csv (as a folder of slides it would hold "no slides")
    from mixmag.slides.opener import known_extensions

    slide_suffixes = set(known_extensions())
    return bool(files) and not any(p.suffix.lower() in slide_suffixes for p in path.rglob("*") if p.is_file())


def _shared_provenance(runs: Sequence[TrainedRun]) -> dict[str, Any]:
    """The one training-feature provenance of ``runs`` (slides can be embedded only one way)."""
    reference = next((r.feature_attrs for r in runs if r.feature_attrs), {})
    if not reference:
        raise MixmagValueError(
            "the trained runs do not record how their features were made (older runs whose features folder is gone), "
            "so new slides cannot be embedded the same way: embed them with the training encoder, weights and "
            "region geometry (`mixmag tile` + `mixmag embed`) and pass the features folder instead")
    for run in runs:
        differ = provenance_mismatches(reference, run.feature_attrs)
        if differ:
            raise MixmagValueError(f"the selected runs were trained on different features ({run.name}: "
                                   f"{'; '.join(differ)}); select runs of one training with --method/--target")
    return reference


def tiling_from_provenance(attrs: dict[str, Any]) -> dict[str, Any]:
    """``tile_slides`` keyword arguments that reproduce the training features' tiling.

    The region geometry, tissue detector settings, region/tile tissue thresholds, thumbnail size
    and resampling filter are read from the provenance attributes of a training feature file.
    """
    from mixmag.slides.tissue import TissueParams

    raw = attrs.get("tissue_params") or "{}"
    tissue = json.loads(raw) if isinstance(raw, str) else dict(raw)
    known = {f.name for f in fields(TissueParams)}
    spec_raw = attrs["region_spec"]
    spec = RegionSpec.from_dict(json.loads(spec_raw) if isinstance(spec_raw, str) else dict(spec_raw))
    options = {k: tissue[k] for k in ("min_tissue", "valid_min_tissue", "thumbnail_px") if k in tissue}
    return {"spec": spec, "tissue_params": TissueParams(**{k: v for k, v in tissue.items() if k in known}),
            "resample": str(attrs.get("resample", "box")), **options}


def embedding_from_provenance(attrs: dict[str, Any], *, weights: str | None = None) -> dict[str, Any]:
    """``EmbedSettings`` fields that reproduce the training features' embedding.

    Args:
        attrs: Provenance of a training feature file.
        weights: Weights file or hub id to use instead of the recorded source (e.g. the training
            machine's path does not exist here); its SHA-256 must still equal the recorded one.
    """
    source = str(attrs.get("weights_source", ""))
    settings: dict[str, Any] = {"encoder": str(attrs["encoder"])}
    if weights is not None:
        settings["weights"] = weights
    elif source == "random":
        settings["random_weights"] = True
    elif source and not source.startswith("package:"):  # a package's weights are the entry's default
        settings["weights"] = source
    if attrs.get("precision"):
        settings["precision"] = str(attrs["precision"])
    return settings


def _embed_slides(inputs: Sequence[str | os.PathLike[str]], out: Path, reference: dict[str, Any], *,
                  weights: str | None, device: str, workers: int, progress: bool) -> tuple[Path, list[dict[str, str]]]:
    """Tile and embed ``inputs`` like the training features; return the features folder and failures."""
    from mixmag.embed.engine import embed_slides
    from mixmag.embed.settings import EmbedSettings
    from mixmag.tiling.settings import TilingSettings
    from mixmag.tiling.tile import tile_slides

    tiling = tiling_from_provenance(reference)
    spec = tiling.pop("spec")
    tissue, resample = tiling.pop("tissue_params"), tiling.pop("resample")
    tiles = tile_slides(inputs, out / "tiles", settings=TilingSettings(workers=workers, **tiling), spec=spec,
                        tissue_params=tissue, resample=resample, progress=progress)
    problems = [{"slide_id": r.slide_id, "stage": "tile", "reason": r.error or str(r.status)}
                for r in tiles.results if r.error]
    embed = EmbedSettings(device=device, **embedding_from_provenance(reference, weights=weights))
    features = out / "features" / embed.encoder
    summary = embed_slides(out / "tiles", features, settings=embed, progress=progress)
    problems += [{"slide_id": sid, "stage": "embed", "reason": msg} for sid, msg in summary.errors.items()]
    return features, problems


def _labelled_metrics(scores: RunScores, *, n_boot: int, seed: int) -> dict[str, Any] | None:
    """The external metric of a run's labelled bags (None without enough labels): AUROC, or the
    endpoint's own metric (Spearman's ρ, C-index) under its own key with a ``metric`` key."""
    if scores.run.endpoint != "classification":
        return _endpoint_metrics(scores, n_boot=n_boot, seed=seed)
    from mixmag.evaluate.bootstrap import bootstrap_auroc_ci
    from mixmag.evaluate.metrics import auroc

    y = np.asarray([b.label for b in scores.bags])
    keep = y >= 0
    if len(np.unique(y[keep])) < 2:
        return None
    y = y[keep]
    binary = len(scores.run.classes) == 2
    prob = scores.reported[keep]
    ci = bootstrap_auroc_ci(y, prob[:, 1] if binary else prob, n_boot=n_boot, seed=seed)
    per_model = {name: auroc(y, p[keep][:, 1] if binary else p[keep]) for name, p in scores.probs.items()}
    return {"target": scores.run.target, "method": scores.run.method, "model": scores.run.reported,
            "n_bags": int(keep.sum()), "n_unlabelled": int((~keep).sum()),
            "class_counts": {c: int((y == i).sum()) for i, c in enumerate(scores.run.classes)},
            "auroc": ci.estimate, "ci_lo": ci.lo, "ci_hi": ci.hi, "n_boot": ci.n_boot,
            "auroc_per_model": per_model, "run_dir": str(scores.run.run_dir), "plots_dir": _plots_dir(scores.run)}


def _endpoint_metrics(scores: RunScores, *, n_boot: int, seed: int) -> dict[str, Any] | None:
    """External Spearman's ρ (regression) or C-index (survival) of the reported model, with its CI."""
    from mixmag.evaluate.bootstrap import bootstrap_ci
    from mixmag.evaluate.endpoints import ENDPOINT_METRICS

    em = ENDPOINT_METRICS.get(scores.run.endpoint)
    keep = scores.labelled
    truth = scores.truth()
    score = em.metric.score(truth, scores.reported[keep][:, 0]) if keep.sum() > 1 else float("nan")
    if not np.isfinite(score):
        return None
    name = em.metric.name
    ci = bootstrap_ci(truth, scores.reported[keep][:, 0], metric=em.metric, n_boot=n_boot, seed=seed)
    per_model = {model: em.metric.score(truth, p[keep][:, 0]) for model, p in scores.probs.items()}
    extra = {"n_events": int(truth[:, 1].sum())} if scores.run.endpoint == "survival" else {}
    return {"target": scores.run.target, "method": scores.run.method, "model": scores.run.reported,
            "n_bags": int(keep.sum()), "n_unlabelled": int((~keep).sum()), **extra, "metric": name,
            name: ci.estimate, "ci_lo": ci.lo, "ci_hi": ci.hi, "n_boot": ci.n_boot, f"{name}_per_model": per_model,
            "run_dir": str(scores.run.run_dir), "plots_dir": _plots_dir(scores.run)}


def _plots_dir(run: TrainedRun) -> str:
    """``<target>/<method>`` folder of a run's plots, relative to the output folder."""
    from mixmag.mil.artifacts import safe_name

    return f"{safe_name(run.target)}/{run.method}"


def _plots(scores: RunScores, out: Path) -> None:
    if scores.run.endpoint != "classification":
        _endpoint_plots(scores, out)
        return
    y = np.asarray([b.label for b in scores.bags])
    keep = y >= 0
    if len(np.unique(y[keep])) < 2:
        return
    folder = out / _plots_dir(scores.run)
    prob = scores.reported[keep]
    title = f"{scores.run.target} — {scores.run.method} (external, {scores.run.reported})"
    write_roc(y[keep], prob, None, folder / "roc.png", title=title, class_names=scores.run.classes)
    if len(scores.run.classes) == 2:
        write_calibration(y[keep], prob[:, 1], folder / "calibration.png", title=title)


def _endpoint_plots(scores: RunScores, out: Path) -> None:
    """``scatter.png`` (regression) or ``km.png`` of the external median risk split (survival)."""
    from mixmag.evaluate.survival import RISK_GROUP_NAMES, kaplan_meier, logrank_test, risk_groups
    from mixmag.report.run_plots import write_km, write_scatter

    keep = scores.labelled
    if keep.sum() < 2:
        return
    truth, pred = scores.truth(), scores.reported[keep][:, 0]
    folder = out / _plots_dir(scores.run)
    title = f"{scores.run.target} — {scores.run.method} (external, {scores.run.reported})"
    if scores.run.endpoint == "regression":
        write_scatter(truth, pred, None, folder / "scatter.png", title=title)
        return
    group = risk_groups(pred, None, 2)  # the median of the new cohort's risks: no outcome is used
    names = RISK_GROUP_NAMES[2]
    curves = {names[g]: asdict(kaplan_meier(truth[group == g, 0], truth[group == g, 1])) for g in range(2)}
    test = logrank_test(truth[:, 0], truth[:, 1], group)
    write_km(curves, folder / "km.png", p_value=test.p_value, title=title)


def predict_cohort(
    run: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    labels: str | os.PathLike[str] | None = None,
    methods: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    weights: str | None = None,
    device: str = "auto",
    workers: int = 1,
    n_boot: int = 1000,
    seed: int = 0,
    report: ReportSettings | None = None,
    heatmap_methods: Sequence[str] | None = None,
    write_report: bool = True,
    progress: bool = True,
) -> PredictResult:
    """Score a new cohort with trained runs; write predictions, metrics, plots, heatmaps and a report.

    Args:
        run: A study folder, a ``mixmag train --out`` folder, one run folder or one ``model.pt``.
        inputs: Slide files/folders/CSV lists (tiled and embedded like the training features), or
            one folder of feature files made with the training encoder and geometry.
        out_dir: Output folder.
        labels: Optional labels table (``patient_id``, ``slide_id``, label columns): groups slides
            into patients and, where a target's cell is filled, gives the AUROC. Without it every
            slide is its own unlabelled patient.
        methods: Method keys to apply (None: all trained ones).
        targets: Targets to apply (None: all).
        weights: Weights of the tile encoder when the recorded source is not reachable here; its
            SHA-256 must equal the training weights'.
        device: Device of embedding and scoring.
        workers: Tiling processes.
        n_boot: Bootstrap resamples of the AUROC CI.
        seed: Bootstrap seed.
        report: Heatmap count, top-k and thumbnail size (:class:`ReportSettings`; defaults when None).
        heatmap_methods: Draw heatmaps only for these methods (None: every run; drawing costs
            seconds per slide, so a study draws only its picked method).
        write_report: Write ``report.html``.
        progress: Progress bars.

    Returns:
        The predictions, metrics and problems (also written to ``out_dir``).

    Raises:
        MixmagValueError: the features (given or made) differ from the training features in
            encoder, weights, pooling, dimension or region geometry; or no slide could be scored.
    """
    out = Path(out_dir)
    resolve_device(device)  # a bad device or labels table stops here, not after the slides are embedded
    table = read_labels(labels) if labels is not None else None
    runs = find_trained_runs(run, methods=methods, targets=targets)
    out.mkdir(parents=True, exist_ok=True)
    logger.info("predicting with %d run(s): %s", len(runs), ", ".join(r.name for r in runs))
    problems: list[dict[str, str]] = []
    given = [Path(p) for p in inputs]
    if len(given) == 1 and _is_features_folder(given[0]):
        features_dir = given[0]
    else:
        features_dir, problems = _embed_slides(given, out, _shared_provenance(runs), weights=weights, device=device,
                                               workers=workers, progress=progress)
    store = FeatureStore(features_dir, cache_bytes=1 << 30)
    unusable = store.check(store.paths)
    problems += [{"slide_id": sid, "stage": "features", "reason": why} for sid, why in unusable.items()]
    usable = sorted(set(store.paths) - set(unusable))
    if not usable:
        write_csv(pd.DataFrame(problems, columns=["slide_id", "stage", "reason"]).drop_duplicates(), out / PROBLEMS_CSV)
        raise MixmagValueError(f"no usable feature file in {features_dir} (see {out / PROBLEMS_CSV}, one reason per "
                               "slide); fix those slides and rerun")
    new_attrs = store.reference_attrs
    frames, metrics, all_scores = [], [], []
    for r in runs:
        differ = provenance_mismatches(r.feature_attrs, new_attrs)
        if differ:
            raise MixmagValueError(
                f"{r.name}: the features in {features_dir} were not made like its training features ("
                + "; ".join(differ) + "). Give `mixmag predict` the slide files so they are embedded the training "
                "way, or embed them with the training encoder, weights and region geometry")
        if not r.feature_attrs:
            logger.warning("%s: training provenance unknown; only dimension and geometry were checked", r.name)
        bags, missing = new_cohort_bags(usable, bag_level=r.bag_level, table=table, target=r.target,
                                        classes=r.classes, run=r)
        recorded = {p["slide_id"] for p in problems}  # a slide that failed earlier keeps that reason
        problems += [{"slide_id": sid, "stage": "labels", "reason": "listed in the labels table but has no usable "
                      "features"} for sid in missing if sid not in recorded]
        scores = score_run(r, store, bags, device=device)
        all_scores.append(scores)
        frames.append(scores.frame())
        m = _labelled_metrics(scores, n_boot=n_boot, seed=seed)
        if m is not None:
            metrics.append(m)
            name = m.get("metric", "auroc")
            logger.info("%s: external %s %.3f (95%% CI %.3f to %.3f) on %d bags", r.name, name, m[name], m["ci_lo"],
                        m["ci_hi"], m["n_bags"])
        _plots(scores, out)
    predictions = pd.concat(frames, ignore_index=True)
    write_csv(predictions, out / PREDICTIONS_CSV)
    metrics_df = pd.DataFrame([{k: v for k, v in m.items() if not isinstance(v, dict)} for m in metrics])
    if metrics:
        write_csv(metrics_df, out / METRICS_CSV)
        atomic_write_json(out / "metrics.json", {"artifact": "mil_external_metrics", "format_version": 1,
                                                 "features_dir": str(features_dir), "runs": metrics})
    problems_df = pd.DataFrame(problems, columns=["slide_id", "stage", "reason"]).drop_duplicates()
    write_csv(problems_df, out / PROBLEMS_CSV)
    for p in problems[:5]:
        logger.warning("slide %s left out at %s: %s", p["slide_id"], p["stage"], p["reason"])
    result = PredictResult(out_dir=out, predictions=predictions, metrics=metrics_df, problems=problems_df,
                           features_dir=features_dir)
    settings = report if report is not None else ReportSettings()
    from mixmag.pipeline.heatmaps import write_prediction_heatmaps

    for scores in all_scores:
        if heatmap_methods is not None and scores.run.method not in heatmap_methods:
            continue
        result.heatmaps += write_prediction_heatmaps(scores, store, out / "heatmaps", settings=settings)
    if write_report:
        from mixmag.report.external import write_external_report

        result.report = write_external_report(out, title="mixmag external validation")
    return result
