"""``train_methods``: the paper's comparison under one cross-validation protocol.

For every target (label column) the bags are validated, one split file is made (or read) and then
every method is trained on exactly those folds; see ``docs/concepts/evaluation.md`` for the
protocol and ``docs/formats/mil-run.md`` for what lands on disk. Each fold ends by writing a
``done.json`` marker carrying the run's config hash, so an interrupted run resumes at the first
unfinished fold and a changed configuration is never mixed with old folds. With ``refit_all`` a
run then trains one more model on all of its bags for deployment (``final/``, see
:func:`_refit_all`), resumable in the same way.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixmag.errors import MixmagValueError, reading_user_file
from mixmag.evaluate.endpoints import ENDPOINT_METRICS, primary_summary
from mixmag.evaluate.settings import EvaluateSettings, cross_validation_fields
from mixmag.evaluate.splits import (
    fold_roles,
    make_splits,
    read_splits,
    restrict_splits,
    write_splits,
)
from mixmag.mil.artifacts import explain, safe_name, save_fold_model, write_attention
from mixmag.mil.data import BagDataset, FeatureStore
from mixmag.mil.encoders import MissingCheckpointError, RegionEncoderRecipe, resolve_encoder
from mixmag.mil.estimator import MILClassifier
from mixmag.mil.labels import MISSING_LABEL, TargetBags, build_bags, read_labels, warn_rare_classes
from mixmag.mil.methods import METHODS
from mixmag.mil.runfolder import predictions_frame, read_predictions, summarize_run, write_csv
from mixmag.mil.settings import PAPER_METHODS, MilSettings
from mixmag.mil.targets import check_values, resolve_targets
from mixmag.report.run_plots import write_learning_curve
from mixmag.utils.atomic import atomic_write_json
from mixmag.utils.cost import CostEstimate, format_seconds
from mixmag.utils.device import resolve_device
from mixmag.utils.env import environment_info
from mixmag.utils.hashing import sha256_file, sha256_text

logger = logging.getLogger(__name__)

#: The single output a regression or survival model writes into its attention files (``classes``).
_OUTPUT_NAME = {"regression": ["value"], "survival": ["risk"]}


@dataclass(frozen=True)
class RunResult:
    """Headline numbers of one (target, method) run, in its endpoint's primary metric.

    Attributes:
        mean: Mean over test folds of ``metric`` (AUROC, Spearman's ρ or C-index).
        sd: Their sample sd.
        pooled: ``metric`` of the pooled out-of-fold predictions.
        ci_lo: Lower bound of its 95 % bootstrap CI.
        ci_hi: Upper bound.
        metric: ``auroc`` (classification), ``spearman`` (regression) or ``cindex`` (survival).
    """

    target: str
    method: str
    run_dir: str
    n_bags: int
    mean: float
    sd: float
    pooled: float
    ci_lo: float | None
    ci_hi: float | None
    metric: str = "auroc"

    def _auroc(self, value: float) -> float:
        return value if self.metric == "auroc" else float("nan")

    @property
    def mean_auroc(self) -> float:
        """The mean fold AUROC (NaN for a run of another metric)."""
        return self._auroc(self.mean)

    @property
    def sd_auroc(self) -> float:
        """The sd of the fold AUROCs (NaN for a run of another metric)."""
        return self._auroc(self.sd)

    @property
    def pooled_auroc(self) -> float:
        """The pooled AUROC (NaN for a run of another metric)."""
        return self._auroc(self.pooled)

    def to_dict(self) -> dict[str, Any]:
        """``target, method, run_dir, n_bags, mean_<metric>, sd_<metric>, pooled_<metric>, ci_lo, ci_hi``
        (+ ``metric`` unless AUROC): the form of ``summary.json`` and :meth:`TrainSummary.table`."""
        m = self.metric
        out = {"target": self.target, "method": self.method, "run_dir": self.run_dir, "n_bags": self.n_bags,
               f"mean_{m}": self.mean, f"sd_{m}": self.sd, f"pooled_{m}": self.pooled, "ci_lo": self.ci_lo,
               "ci_hi": self.ci_hi}
        return out if m == "auroc" else {**out, "metric": m}


@dataclass(frozen=True)
class SkippedRun:
    """A method that was not trained, and why."""

    method: str
    reason: str


@dataclass
class TrainSummary:
    """What :func:`train_methods` did: finished runs, skipped methods and excluded slides.

    Attributes:
        excluded: Per target, the labelled slides left out (the rows of ``<target>/excluded.csv``)
            and the patients left with no slide: ``{"slides", "patients", "missing_label",
            "no_usable_features"}`` counts (the last: no feature file, or one that failed its checks).
        endpoints: ``{target: endpoint}`` (docs/concepts/endpoints.md).
    """

    out_dir: str
    targets: list[str]
    runs: list[RunResult] = field(default_factory=list)
    skipped: list[SkippedRun] = field(default_factory=list)
    excluded: dict[str, dict[str, int]] = field(default_factory=dict)

    endpoints: dict[str, str] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per run (target, method, mean/sd of the fold values, pooled value, CI), columns
        named after the metric (``mean_auroc`` ...; a ``metric`` column when not every run is AUROC)."""
        table = pd.DataFrame([r.to_dict() for r in self.runs])
        if "metric" not in table.columns:
            return table
        # several metrics: each one's columns side by side (AUROC, ρ, C-index), the CI and `metric` last
        stats = [f"{stat}_{m}" for m in ("auroc", "spearman", "cindex") for stat in ("mean", "sd", "pooled")]
        table = table[["target", "method", "run_dir", "n_bags", *(c for c in stats if c in table.columns),
                       "ci_lo", "ci_hi", "metric"]]
        return table.assign(metric=table["metric"].fillna("auroc"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (written to ``<out>/summary.json``); ``endpoints`` only when a target
        is not classification."""
        out = {"out_dir": self.out_dir, "targets": self.targets, "runs": [r.to_dict() for r in self.runs],
               "skipped": [asdict(s) for s in self.skipped], "excluded": self.excluded}
        if any(e != "classification" for e in self.endpoints.values()):
            out["endpoints"] = self.endpoints
        return out


@dataclass(frozen=True)
class _Job:
    """What every run of one :func:`train_methods` call shares besides the protocol."""

    settings: MilSettings
    device: str  # resolved: the same device for every fold
    bootstrap: int
    overwrite: bool
    progress: bool
    labels: dict[str, str]  # path and sha256 of the labels table (written to each run's config)


def _prepare_splits(tb: TargetBags, target_dir: Path, *, splits: str | os.PathLike[str] | None, folds: int,
                    val_frac: float, seed: int) -> pd.DataFrame:
    patients = tb.patient_labels
    if splits is not None:
        with reading_user_file(splits):
            columns = pd.read_csv(splits, nrows=0).columns if Path(splits).is_file() else ()
        # a missing file is reported by read_splits, with the message that names it
        table = read_splits(splits, target=tb.target if "target" in columns else None)
        table = restrict_splits(table, patients.index.to_numpy(), source=str(splits))
        logger.info("target %r: reusing splits from %s (%d folds)", tb.target, splits, table["fold"].nunique())
    else:
        strata, names = tb.patient_strata(folds)
        try:
            table = make_splits(strata, folds=folds, val_frac=val_frac, seed=seed, class_names=names,
                                stratum=ENDPOINT_METRICS.get(tb.endpoint).stratum)
        except MixmagValueError as exc:
            raise MixmagValueError(f"target {tb.target!r}: {exc}") from None
    write_splits(table, target_dir / "splits.csv")
    return table


def _exclusion_counts(tb: TargetBags) -> dict[str, int]:
    """Slides excluded from a target (by kind) and the patients left without any slide."""
    kept = {b.patient_id for b in tb.bags}
    no_label = sum(e.reason == MISSING_LABEL for e in tb.exclusions)
    return {"slides": len(tb.exclusions), "patients": len({e.patient_id for e in tb.exclusions} - kept),
            "missing_label": no_label, "no_usable_features": len(tb.exclusions) - no_label}


def _endpoint_config(tb: TargetBags, settings: MilSettings) -> dict[str, Any]:
    """What a regression or survival run records of its endpoint (in the config hash)."""
    used: dict[str, dict[str, Any]] = {"regression": {"regression_loss": settings.regression_loss},
                                       "survival": {"survival_batch": settings.survival_batch}}
    return {"key": tb.endpoint, "columns": list(tb.columns), **used.get(tb.endpoint, {})}


def _endpoint_params(endpoint: str, settings: MilSettings) -> dict[str, Any]:
    """Estimator parameters of the endpoint (none for classification: its models stay as they were)."""
    if endpoint == "classification":
        return {}
    return {"endpoint": endpoint, "regression_loss": settings.regression_loss, "survival_batch": settings.survival_batch}


def _run_config(tb: TargetBags, method: str, recipe: RegionEncoderRecipe | None, job: _Job,
                splits: pd.DataFrame, store: FeatureStore) -> dict[str, Any]:
    bags = [(b.bag_id, b.label, list(b.slide_ids)) if tb.endpoint == "classification"
            else (b.bag_id, list(b.value), list(b.slide_ids)) for b in tb.bags]
    # classification runs record what they always did (same config hash: finished runs resume)
    endpoint = {} if tb.endpoint == "classification" else {"endpoint": _endpoint_config(tb, job.settings)}
    return {
        "target": tb.target, "method": method, "method_spec": METHODS.get(method).to_dict(),
        "classes": tb.classes, "bag_level": tb.bag_level, "n_bags": len(tb.bags),
        "bags_hash": sha256_text(repr(bags)), "splits_hash": sha256_text(splits.to_csv(index=False)),
        "features_dir": str(store.folder), "feature_encoder": store.encoder, "tile_dim": store.tile_dim,
        "region_spec": None if store.spec is None else store.spec.to_dict(),
        "encoder": None if recipe is None else recipe.to_dict(), "seed": job.settings.seed,
        "train": job.settings.estimator_params(), "bootstrap": job.bootstrap, **endpoint,
    }


def _run_method(tb: TargetBags, method: str, recipe: RegionEncoderRecipe | None, splits: pd.DataFrame,
                store: FeatureStore, run_dir: Path, job: _Job) -> RunResult:
    config = _run_config(tb, method, recipe, job, splits, store)
    config_hash = sha256_text(repr(sorted(config.items(), key=lambda kv: kv[0])))
    cfg_path = run_dir / "config.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text(encoding="utf-8")).get("config_hash")
        if old != config_hash:
            if not job.overwrite:
                raise MixmagValueError(f"{run_dir} holds a run with other settings; pass overwrite=True (--overwrite) "
                                       "to replace it, or choose another output folder")
            for sub in ("folds", "attention", "final"):
                shutil.rmtree(run_dir / sub, ignore_errors=True)
    # labels and feature provenance are recorded but not hashed: a moved labels file or a re-stamped
    # attr does not retrain (the bags hash and the feature encoder/geometry are in the hash)
    atomic_write_json(cfg_path, {**config, "config_hash": config_hash, "labels": job.labels,
                                 "feature_attrs": store.reference_attrs})
    atomic_write_json(run_dir / "env.json", environment_info())
    write_splits(splits, run_dir / "splits.csv")
    by_patient: dict[str, list[int]] = {}
    for i, b in enumerate(tb.bags):
        by_patient.setdefault(b.patient_id, []).append(i)
    dataset = BagDataset(store, tb.bags)
    y = tb.truth  # (n,) classes or values, or (n, 2) time and event
    n_classes = len(tb.classes)
    endpoint_params = _endpoint_params(tb.endpoint, job.settings)
    oof, histories, fold_info = [], [], {}
    folds = sorted(splits["fold"].unique().tolist())
    estimated = False
    for position, fold in enumerate(folds):
        fold_dir = run_dir / "folds" / f"fold_{fold}"
        done = fold_dir / "done.json"
        marker = json.loads(done.read_text(encoding="utf-8")) if done.exists() else {}
        if marker.get("config_hash") == config_hash:
            logger.info("%s/%s fold %d: already done, skipped (resume)", tb.target, method, fold)
            oof.append(read_predictions(fold_dir / "predictions.csv"))
            histories.append(pd.read_csv(fold_dir / "history.csv").assign(fold=fold))
            fold_info[fold] = {k: v for k, v in marker.items() if k != "config_hash"}
            continue
        t_fold = time.perf_counter()
        roles = {r: [i for p in pids for i in by_patient[p]] for r, pids in fold_roles(splits, fold).items()}
        parts: dict[str, BagDataset] = {r: BagDataset(store, [tb.bags[i] for i in idx]) for r, idx in roles.items()}
        clf = MILClassifier(method, encoder=None if recipe is None else recipe.build(),
                            classes=list(range(n_classes)) if n_classes else None,
                            device=job.device, seed=job.settings.seed + fold, progress=job.progress,
                            threads=job.settings.threads,
                            **job.settings.estimator_params(), **endpoint_params)
        clf.fit(parts["train"], y[roles["train"]], val_bags=parts["val"] if roles["val"] else None,
                val_y=y[roles["val"]] if roles["val"] else None)
        preds = clf.predict_bags(parts["test"], attention=True)
        for bag, bag_regions, pred in zip(parts["test"].bags, parts["test"], preds, strict=True):
            write_attention(run_dir / "attention" / f"{safe_name(bag.bag_id)}.h5",
                            explain(pred, bag_regions, tb.classes or _OUTPUT_NAME[tb.endpoint]),
                            {"bag_id": bag.bag_id, "patient_id": bag.patient_id, "method": method,
                             "target": tb.target, "fold": fold, "label": tb.label_text(bag)})
        fold_df = predictions_frame(parts["test"].bags, np.stack([p.prob for p in preds]), fold, tb.classes,
                                    endpoint=tb.endpoint)
        history = pd.DataFrame(clf.history_)
        write_csv(fold_df, fold_dir / "predictions.csv")
        write_csv(history, fold_dir / "history.csv")
        write_learning_curve(history, fold_dir / "learning_curve.png", best_epoch=clf.best_epoch_,
                             title=f"{tb.target} — {method} — fold {fold}")
        info = {"best_epoch": int(clf.best_epoch_), "criterion": clf.criterion_, "epochs_run": len(history),
                **{f"n_{r}": len(idx) for r, idx in roles.items()}}
        save_fold_model(fold_dir / "model.pt", clf, spec=store.spec, recipe=recipe, extra=info)  # type: ignore[arg-type]
        atomic_write_json(done, {**info, "config_hash": config_hash})  # last: marks the fold complete
        oof.append(fold_df)
        histories.append(history.assign(fold=fold))
        fold_info[fold] = info
        seconds = time.perf_counter() - t_fold
        logger.info("%s/%s fold %d: best epoch %d (%s), %d test bags, %s", tb.target, method, fold,
                    clf.best_epoch_, clf.criterion_, len(roles["test"]), format_seconds(seconds))
        if not estimated:  # the first fold trained here times the others (early stopping varies them)
            estimated = True
            _log_folds_left(f"{tb.target}/{method}", seconds, folds_left=len(folds) - position - 1,
                            device=job.device)
    write_csv(pd.concat(histories, ignore_index=True), run_dir / "learning_curves.csv")
    m = summarize_run(run_dir, pd.concat(oof, ignore_index=True), target=tb.target, method=method,
                      classes=tb.classes, fold_info=fold_info, n_boot=job.bootstrap,
                      seed=job.settings.seed, extra={"config_hash": config_hash}, endpoint=tb.endpoint,
                      n_risk_groups=job.settings.risk_groups)
    head = primary_summary(m)
    logger.info("%s/%s: %s %.3f ± %.3f (pooled %.3f, 95%% CI %.3f to %.3f)", tb.target, method, head.label, head.mean,
                head.sd, head.pooled, _or_nan(m["ci_lo"]), _or_nan(m["ci_hi"]))
    if job.settings.refit_all:
        _refit_all(tb, method, recipe, dataset, store, run_dir, job, fold_info=fold_info, config_hash=config_hash)
    return RunResult(tb.target, method, str(run_dir), m["n_bags"], head.mean, head.sd, head.pooled, m["ci_lo"],
                     m["ci_hi"], metric=head.metric)


def _final_epochs(fold_best_epochs: list[int]) -> int:
    """Epochs of the final model: the median of the folds' (1-based) best epochs, rounded up.

    ``best_epoch_`` counts from 1 (:func:`mixmag.mil.train.fit`), and without validation bags the
    last epoch is kept, so training this many epochs ends exactly at the median best epoch.
    """
    return max(1, math.ceil(float(np.median(fold_best_epochs))))


def _refit_all(tb: TargetBags, method: str, recipe: RegionEncoderRecipe | None, dataset: BagDataset,
               store: FeatureStore, run_dir: Path, job: _Job, *, fold_info: dict[int, dict[str, Any]],
               config_hash: str) -> None:
    """Train the deployment model on every bag of the run; write ``final/model.pt``, then ``final/done.json``.

    Built like the fold models (same recipe, estimator parameters) except: no validation bags, so
    no early stopping; :func:`_final_epochs` epochs; seed ``settings.seed + last fold + 1`` (``seed + k``
    for folds 0..k-1), a seed no fold used. Skipped when ``done.json`` carries ``config_hash``.
    """
    final_dir = run_dir / "final"
    done = final_dir / "done.json"
    marker = json.loads(done.read_text(encoding="utf-8")) if done.exists() else {}
    if marker.get("config_hash") == config_hash:
        logger.info("%s/%s final model: already done, skipped (resume)", tb.target, method)
        return
    folds = sorted(fold_info)
    best = [int(fold_info[f]["best_epoch"]) for f in folds]
    epochs = _final_epochs(best)
    seed = job.settings.seed + max(folds) + 1
    clf = MILClassifier(method, encoder=None if recipe is None else recipe.build(),
                        classes=list(range(len(tb.classes))) if tb.classes else None, device=job.device, seed=seed,
                        progress=job.progress, threads=job.settings.threads,
                        **{**job.settings.estimator_params(), "epochs": epochs},
                        **_endpoint_params(tb.endpoint, job.settings))
    clf.fit(dataset, tb.truth)
    info = {"epochs": epochs, "fold_best_epochs": best, "n_train": len(dataset), "seed": seed}
    save_fold_model(final_dir / "model.pt", clf, spec=store.spec, recipe=recipe,  # type: ignore[arg-type]
                    extra={**info, "best_epoch": int(clf.best_epoch_), "criterion": clf.criterion_})
    atomic_write_json(done, {**info, "config_hash": config_hash})  # last: marks the final model complete
    logger.info("%s/%s final model: %d epochs (median fold best epoch of %s) on all %d bags", tb.target, method,
                epochs, best, len(dataset))


def train_methods(
    features_dir: str | os.PathLike[str], labels_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
    settings: MilSettings | None = None, evaluation: EvaluateSettings | None = None,
    pretrained: Mapping[str, str | os.PathLike[str]] | None = None, overwrite: bool = False, progress: bool = True,
    **options: Any,
) -> TrainSummary:
    """Cross-validate every method on every target with identical splits; write run folders.

    Args:
        features_dir: Folder of ``<slide_id>.h5`` feature files (one tile encoder).
        labels_path: CSV/TSV with ``patient_id``, ``slide_id`` and label columns (the study and
            ``mixmag train`` pass ``settings.labels``).
        out_dir: Output root; runs go to ``<out>/<target>/<method>/``.
        settings: Methods, targets, model and optimisation settings
            (:class:`~mixmag.mil.settings.MilSettings`; its defaults when None).
        evaluation: The cross-validation protocol, the fields of
            :class:`~mixmag.evaluate.settings.EvaluateSettings` marked ``CROSS_VALIDATION``: outer
            ``folds`` k (reduced with a warning when a class is rarer than k patients), the
            ``val_frac`` of a fold's non-test patients used for early stopping, ``bootstrap``
            resamples for CIs (0 = none), and a ``splits`` file to reuse instead of making one
            (its defaults when None). The splits are seeded by ``settings.seed``.
        pretrained: Region-encoder checkpoints made upstream, per role (``{"mem": ..., "cmem": ...,
            "random": ...}``, the study's pretraining stages); ``settings.checkpoints`` entries win.
            A method whose role has no checkpoint is skipped and recorded in the summary.
        overwrite: Replace runs made with other settings (else that is an error).
        progress: Progress bars.
        **options: Single fields replacing those of ``settings`` (e.g. ``epochs=2, hidden_dim=8``)
            or, for ``folds``, ``val_frac``, ``bootstrap`` and ``splits``, of ``evaluation``;
            unknown names raise with close matches.

    Returns:
        The finished runs and the skipped methods (also written to ``<out>/summary.json``).
    """
    protocol = {k: options.pop(k) for k in cross_validation_fields(EvaluateSettings) if k in options}
    ev = (evaluation if evaluation is not None else EvaluateSettings()).updated(**protocol)
    s = (settings if settings is not None else MilSettings()).updated(**options)
    methods, targets = s.methods, s.targets
    method_keys = list(methods or PAPER_METHODS)
    for key in method_keys:
        METHODS.get(key)  # unknown keys fail here, with close matches, before any work
    ckpts = {k: Path(v) for k, v in {**(pretrained or {}), **s.checkpoints}.items() if v is not None}
    out = Path(out_dir)
    store = FeatureStore(features_dir, cache_bytes=int(s.cache_gb * (1 << 30)))
    table = read_labels(labels_path)
    job = _Job(settings=s, device=str(resolve_device(s.device)), bootstrap=ev.bootstrap, overwrite=overwrite,
               progress=progress, labels={"path": str(labels_path), "sha256": sha256_file(labels_path)})
    specs = resolve_targets(table, list(targets) if targets else None, target_types=s.target_types,
                            survival_columns=s.survival_columns)
    target_list = [t.name for t in specs]
    for target_spec in specs:  # a wrong label type stops here, before every feature file is read
        check_values(table, target_spec)
    problems = store.check(table["slide_id"])  # every labelled file, checked once (values included)
    if s.allow_missing_slides:  # else build_bags stops with one error that names them all
        for sid, reason in list(problems.items())[:5]:
            logger.warning("slide %s: %s", sid, reason)
        if len(problems) > 5:
            logger.warning("... and %d more slides without usable features", len(problems) - 5)
    available = set(store.paths) - set(problems)
    unlabelled = len(set(store.paths) - set(table["slide_id"]))
    if unlabelled:
        logger.info("%d feature files in %s have no row in the labels table (not used)", unlabelled, store.folder)
    target_bags = [build_bags(table, t, available_slides=available, bag_level=s.bag_level,
                              allow_missing_slides=s.allow_missing_slides, unusable=problems) for t in specs]
    assert store.spec is not None and store.tile_dim is not None
    summary = TrainSummary(out_dir=str(out), targets=target_list,
                           excluded={tb.target: _exclusion_counts(tb) for tb in target_bags},
                           endpoints={tb.target: tb.endpoint for tb in target_bags})
    recipes: dict[str, RegionEncoderRecipe | None] = {}
    for key in method_keys:
        spec = METHODS.get(key)
        if spec.encoder is None:
            recipes[key] = None
            continue
        try:
            recipes[key] = resolve_encoder(spec, checkpoints=ckpts, tile_dim=store.tile_dim, spec=store.spec,
                                           preset=s.region_preset, seed=s.seed, features=store.folder)
        except MissingCheckpointError as exc:
            logger.warning("method %s skipped: %s", key, exc)
            summary.skipped.append(SkippedRun(key, str(exc)))
    for tb in target_bags:
        target_dir = out / safe_name(tb.target)
        target_dir.mkdir(parents=True, exist_ok=True)
        if tb.exclusions:
            write_csv(pd.DataFrame([asdict(e) for e in tb.exclusions]), target_dir / "excluded.csv")
        split_table = _prepare_splits(tb, target_dir, splits=ev.splits, folds=ev.folds, val_frac=ev.val_frac,
                                       seed=s.seed)
        warn_rare_classes(tb, declared=s.target_types.get(tb.target))
        for key in method_keys:
            if key not in recipes:
                continue
            summary.runs.append(_run_method(tb, key, recipes[key], split_table, store, target_dir / key, job))
    atomic_write_json(out / "summary.json", summary.to_dict())
    return summary


#: Estimates of a method's remaining folds shorter than this are not logged.
MIN_LOGGED_FOLD_SECONDS = 60.0


def _log_folds_left(run: str, fold_seconds: float, *, folds_left: int, device: str) -> None:
    """Log how long the run's remaining folds take at the first fold's pace (when it matters)."""
    if folds_left <= 0:
        return
    estimate = CostEstimate(stage=f"{run}: {folds_left} more fold(s)", unit="fold", unit_seconds=fold_seconds,
                            units_left=folds_left, device=device,
                            advice="early stopping can end folds sooner; fewer methods, mil.epochs or a GPU "
                                   "shorten it")
    if estimate.seconds >= MIN_LOGGED_FOLD_SECONDS:
        logger.info("%s (%s)", estimate.describe(), estimate.advice)


def _or_nan(value: float | None) -> float:
    """A bound that may be missing (a single-class fold) as a float for ``%.3f`` logging."""
    return math.nan if value is None else float(value)
