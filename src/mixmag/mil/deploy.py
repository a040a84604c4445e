"""Apply trained MIL runs to a new cohort: find the runs, check feature provenance, score bags.

A *trained run* is one ``<target>/<method>/`` folder of ``mixmag train`` (or of a ``mixmag run``
study's ``mil/``): its ``config.json`` names the classes and bag level, ``folds/fold_<k>/model.pt``
holds one model per cross-validation fold and, after ``--refit-all``, ``final/model.pt`` one model
trained on every labelled patient. New bags are scored by every fold model; the reported
probability is the final model's when there is one, else the mean of the fold models (each fold's
own score is kept too). Attention is averaged the same way, so a heatmap shows what the reported
probability rests on.

Features of the new cohort must come from the same tile encoder, weights and region geometry as
the training features; :func:`provenance_mismatches` compares the HDF5 attributes of both
(``docs/cli/predict.md``). The tile resolution of the new slides may differ: the region geometry
is physical (µm), so every slide is read at the same µm/px.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixmag.errors import MixmagFileNotFoundError, MixmagValueError
from mixmag.geometry import RegionSpec
from mixmag.io.features import FeatureFile, iter_feature_files
from mixmag.io.h5common import FormatError
from mixmag.mil.artifacts import explain, load_fold_model
from mixmag.mil.data import BagDataset, FeatureStore
from mixmag.mil.estimator import MILClassifier
from mixmag.mil.labels import Bag
from mixmag.mil.targets import TargetSpec, parse_regression, parse_survival

logger = logging.getLogger(__name__)

#: Feature attributes that must be equal between training and new features (else the scores mean nothing).
MUST_MATCH = ("encoder", "embed_dim", "pooling", "weights_hash")
#: Name of the reported model: the refit-on-all model when present, else the fold ensemble.
FINAL, ENSEMBLE = "final", "ensemble"


@dataclass(frozen=True)
class TrainedRun:
    """One trained (target, method) run folder.

    Attributes:
        run_dir: The ``<target>/<method>/`` folder.
        target: Label column the run predicts.
        method: Method key.
        classes: Class values in model output order (``classes[1]`` is the positive class of a
            binary task).
        bag_level: ``patient`` or ``slide``: what one prediction covers.
        fold_models: ``{fold: model.pt}`` of the finished folds.
        final_model: ``final/model.pt`` of ``--refit-all`` (None when absent).
        feature_attrs: Provenance of the training features (encoder, weights hash, region spec,
            tissue settings ...), empty when unknown.
        endpoint: ``classification``, ``regression`` or ``survival`` (docs/concepts/endpoints.md).
        columns: The label column(s) of the target (survival: time, event); empty when unknown
            (runs made before endpoints existed: the target's own column).
    """

    run_dir: Path
    target: str
    method: str
    classes: list[str]
    bag_level: str
    fold_models: dict[int, Path]
    final_model: Path | None = None
    feature_attrs: dict[str, Any] = field(default_factory=dict)
    endpoint: str = "classification"
    columns: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """``target/method``."""
        return f"{self.target}/{self.method}"

    @property
    def reported(self) -> str:
        """Which score is the run's prediction: :data:`FINAL` or :data:`ENSEMBLE`."""
        return FINAL if self.final_model is not None else ENSEMBLE

    def models(self) -> dict[str, Path]:
        """``{"fold0": path, ..., "final": path}``: every model that scores new bags."""
        found = {f"fold{k}": p for k, p in sorted(self.fold_models.items())}
        if self.final_model is not None:
            found[FINAL] = self.final_model
        return found


def _training_feature_attrs(config: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """The training features' provenance: from ``config.json``, else from a file of its features folder."""
    attrs = config.get("feature_attrs")
    if attrs:
        return dict(attrs)
    folder = Path(str(config.get("features_dir", "")))
    for path in iter_feature_files(folder) if folder.is_dir() else ():
        try:
            return read_feature_provenance(path)
        except FormatError:
            continue
    logger.warning("%s: the training features' provenance is not recorded and %s is gone; only the embedding "
                   "dimension and region geometry of new features can be checked", run_dir, folder)
    return {}


def read_feature_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The provenance attributes of one feature file (encoder, weights, region geometry, tissue settings)."""
    with FeatureFile(path) as ff:
        return FeatureStore.provenance_of(ff)


def _load_run(run_dir: Path) -> TrainedRun | None:
    cfg_path = run_dir / "config.json"
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("%s: unreadable run config (%s); skipped", cfg_path, exc)
        return None
    folds: dict[int, Path] = {}
    for model in sorted(run_dir.glob("folds/fold_*/model.pt")):
        if (model.parent / "done.json").exists():  # an unfinished fold's model is never used
            folds[int(model.parent.name.removeprefix("fold_"))] = model
    final = run_dir / "final" / "model.pt"
    final_model = final if final.exists() and (final.parent / "done.json").exists() else None
    if not folds and final_model is None:
        logger.warning("%s: no finished fold model; skipped", run_dir)
        return None
    endpoint = config.get("endpoint") or {}
    return TrainedRun(run_dir=run_dir, target=str(config["target"]), method=str(config["method"]),
                      classes=[str(c) for c in config["classes"]], bag_level=str(config.get("bag_level", "patient")),
                      fold_models=folds, final_model=final_model,
                      feature_attrs=_training_feature_attrs(config, run_dir),
                      endpoint=str(endpoint.get("key", "classification")),
                      columns=tuple(endpoint.get("columns", ())))


def find_trained_runs(path: str | os.PathLike[str], *, methods: Sequence[str] | None = None,
                      targets: Sequence[str] | None = None) -> list[TrainedRun]:
    """The trained runs under ``path``, optionally only some methods and targets.

    Args:
        path: A ``mixmag run`` study folder, a ``mixmag train --out`` folder, one
            ``<target>/<method>/`` run folder, or one ``model.pt`` inside a run folder (then only
            that model scores).
        methods: Keep only these method keys (None: all).
        targets: Keep only these targets (None: all).

    Raises:
        MixmagFileNotFoundError: ``path`` does not exist or holds no trained run.
        MixmagValueError: ``methods``/``targets`` select nothing (the message lists what exists).
    """
    root = Path(path)
    if not root.exists():
        raise MixmagFileNotFoundError(f"{root} does not exist: pass a study folder, a `mixmag train --out` folder, "
                                      "a run folder or a model.pt")
    if root.is_file():
        return [_single_model_run(root)]
    search = root / "mil" if (root / "mil").is_dir() else root
    candidates = [search] if (search / "config.json").is_file() else sorted(
        p.parent for depth in ("*/config.json", "*/*/config.json") for p in search.glob(depth))
    runs = [r for r in (_load_run(c) for c in candidates if (c / "folds").is_dir() or (c / "final").is_dir())
            if r is not None]
    if not runs:
        raise MixmagFileNotFoundError(f"no trained MIL run under {root}: train one with `mixmag train` or `mixmag run`")
    kept = [r for r in runs if (not methods or r.method in methods) and (not targets or r.target in targets)]
    if not kept:
        raise MixmagValueError(
            f"no run under {root} matches methods={list(methods or [])} targets={list(targets or [])}; available: "
            + ", ".join(sorted({r.name for r in runs})))
    return kept


def _single_model_run(model: Path) -> TrainedRun:
    """A ``model.pt`` inside ``<run>/folds/fold_k/`` or ``<run>/final/``: that model alone."""
    run_dir = model.parent.parent.parent if model.parent.parent.name == "folds" else model.parent.parent
    run = _load_run(run_dir) if (run_dir / "config.json").is_file() else None
    if run is None:
        raise MixmagValueError(f"{model} is not inside a mixmag run folder (<target>/<method>/folds/fold_k/model.pt "
                               "or <target>/<method>/final/model.pt); pass the run folder instead")
    if model.parent.name == "final":
        return replace(run, fold_models={}, final_model=model)
    fold = int(model.parent.name.removeprefix("fold_"))
    return replace(run, fold_models={fold: model}, final_model=None)


def _spec_of(attrs: Mapping[str, Any]) -> RegionSpec | None:
    raw = attrs.get("region_spec")
    if raw is None:
        return None
    return RegionSpec.from_dict(json.loads(raw) if isinstance(raw, str) else dict(raw))


def provenance_mismatches(trained: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between the training features' provenance and the new features' (empty: compatible).

    Compared: tile encoder, embedding dimension, pooling, SHA-256 of the weights, and the region
    geometry (region side in µm, tile px, magnifications). Keys missing on either side are not
    compared (older runs record less). The slides' own µm/px is not compared: every slide is
    read at the geometry's exact µm/px.
    """
    problems = [f"{key}: training {trained[key]!r}, new {new[key]!r}" for key in MUST_MATCH
                if key in trained and key in new and str(trained[key]) != str(new[key])]
    spec_a, spec_b = _spec_of(trained), _spec_of(new)
    if spec_a is not None and spec_b is not None and spec_a != spec_b:
        problems.append(f"region geometry: training {spec_a}, new {spec_b}")
    return problems


@dataclass
class RunScores:
    """Scores of one trained run on new bags.

    Attributes:
        run: The run.
        bags: The scored bags (``label`` -1 where the new cohort has no label; regression and
            survival: an empty ``value``).
        probs: ``{model name: (n_bags, C)}`` class probabilities of every model
            (:meth:`TrainedRun.models`) plus :data:`ENSEMBLE` (mean of the fold models);
            regression: (n_bags, 1) values, survival: (n_bags, 1) risks.
        region_attention: Per bag, ``{slide_id: (R,) attention}`` of the reported model(s), averaged
            over the fold models for the ensemble; sums to 1 over the bag.
        token_attention: Per bag, ``{slide_id: (R, T) attention per region token}``, or None for
            methods whose instances are not tokens.
    """

    run: TrainedRun
    bags: list[Bag]
    probs: dict[str, np.ndarray]
    region_attention: list[dict[str, np.ndarray]]
    token_attention: list[dict[str, np.ndarray] | None]

    @property
    def reported(self) -> np.ndarray:
        """(n_bags, C) probabilities of the reported model (final, else the fold ensemble)."""
        return self.probs[self.run.reported]

    @property
    def labelled(self) -> np.ndarray:
        """(n_bags,) bool: the bag has a label in the new cohort's table."""
        if self.run.endpoint == "classification":
            return np.asarray([b.label >= 0 for b in self.bags], dtype=bool)
        return np.asarray([len(b.value) > 0 for b in self.bags], dtype=bool)

    def truth(self) -> np.ndarray:
        """The labelled bags' truth: (n,) classes or values, or (n, 2) time and event."""
        keep = [b for b, ok in zip(self.bags, self.labelled, strict=True) if ok]
        if self.run.endpoint == "classification":
            return np.asarray([b.label for b in keep], dtype=np.int64)
        values = np.asarray([b.value for b in keep], dtype=np.float64).reshape(len(keep), -1)
        return values[:, 0] if values.shape[1] == 1 else values

    def frame(self, class_names: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per bag (see ``docs/formats/predictions.md``)."""
        if self.run.endpoint != "classification":
            return self._value_frame()
        classes = list(class_names or self.run.classes)
        binary = len(classes) == 2
        rows: dict[str, Any] = {
            "bag_id": [b.bag_id for b in self.bags], "patient_id": [b.patient_id for b in self.bags],
            "slide_ids": [";".join(b.slide_ids) for b in self.bags], "target": self.run.target,
            "method": self.run.method, "model": self.run.reported,
            "label": [classes[b.label] if b.label >= 0 else "" for b in self.bags],
        }
        for name, p in [(self.run.reported, self.reported), *[(k, v) for k, v in self.probs.items()
                                                               if k != self.run.reported]]:
            prefix = "prob" if name == self.run.reported else f"prob_{name}"
            if binary:
                rows[prefix] = p[:, 1]
            else:
                for c, cls in enumerate(classes):
                    rows[f"{prefix}_{cls}"] = p[:, c]
        return pd.DataFrame(rows)

    def _value_frame(self) -> pd.DataFrame:
        """Regression (``label``, ``pred``) or survival (``time``, ``event``, ``risk``) rows."""
        survival = self.run.endpoint == "survival"
        column = "risk" if survival else "pred"
        rows: dict[str, Any] = {
            "bag_id": [b.bag_id for b in self.bags], "patient_id": [b.patient_id for b in self.bags],
            "slide_ids": [";".join(b.slide_ids) for b in self.bags], "target": self.run.target,
            "method": self.run.method, "model": self.run.reported}
        if survival:
            rows["time"] = [b.value[0] if b.value else np.nan for b in self.bags]
            rows["event"] = pd.array([int(b.value[1]) if b.value else None for b in self.bags], dtype="Int64")
        else:
            rows["label"] = [b.value[0] if b.value else np.nan for b in self.bags]
        for name, p in [(self.run.reported, self.reported), *[(k, v) for k, v in self.probs.items()
                                                               if k != self.run.reported]]:
            rows[column if name == self.run.reported else f"{column}_{name}"] = p[:, 0]
        return pd.DataFrame(rows)


def _token_map(region: np.ndarray, token: np.ndarray, attention: np.ndarray, n_regions: int,
               n_tokens: int) -> np.ndarray | None:
    if token.size == 0 or (token < 0).any():
        return None
    scores = np.zeros((n_regions, n_tokens), dtype=np.float64)
    np.add.at(scores, (region, token), attention)
    return scores


def score_run(run: TrainedRun, store: FeatureStore, bags: Sequence[Bag], *, device: str = "auto") -> RunScores:
    """Score ``bags`` with every model of ``run``.

    Args:
        run: The trained run.
        store: The new cohort's features (checked: call ``store.check`` first).
        bags: Bags to score (their slides must be in ``store``).
        device: Device of the forward passes.

    Raises:
        MixmagValueError: the features' dimension or region geometry differs from the model's.
    """
    dataset = BagDataset(store, list(bags))
    probs: dict[str, np.ndarray] = {}
    region_sum: list[dict[str, np.ndarray]] = [{} for _ in bags]
    token_sum: list[dict[str, np.ndarray] | None] = [{} for _ in bags]
    reported = [n for n in run.models() if n.startswith("fold")] if run.final_model is None else [FINAL]
    for name, path in run.models().items():
        clf: MILClassifier
        clf, spec = load_fold_model(path)
        if store.spec != spec or store.tile_dim != clf.n_features_in_:
            raise MixmagValueError(
                f"{run.name}: the new features have dimension {store.tile_dim} and geometry {store.spec}; the model "
                f"{path} was trained on dimension {clf.n_features_in_} and {spec}. Embed the new slides with the "
                "training run's encoder and region geometry (give `mixmag predict` the slide files to do that)")
        clf.set_params(device=device)
        preds = clf.predict_bags(dataset, attention=name in reported)
        probs[name] = np.stack([p.prob for p in preds]) if preds else np.zeros((0, len(run.classes) or 1))
        if name not in reported:
            continue
        for i, (pred, bag_regions) in enumerate(zip(preds, dataset, strict=True)):
            expl = explain(pred, bag_regions, run.classes)
            for s in expl.slides:
                region_sum[i][s.slide_id] = region_sum[i].get(s.slide_id, 0.0) + s.region_attention / len(reported)
                tokens = token_sum[i]
                if tokens is None:
                    continue
                t = _token_map(s.instance_region, s.instance_token, s.attention, len(s.region_attention),
                               bag_regions.spec.n_tokens)
                if t is None:
                    token_sum[i] = None
                else:
                    tokens[s.slide_id] = tokens.get(s.slide_id, 0.0) + t / len(reported)
    folds = [v for k, v in probs.items() if k.startswith("fold")]
    if folds:
        probs[ENSEMBLE] = np.mean(folds, axis=0)
    return RunScores(run=run, bags=list(bags), probs=probs, region_attention=region_sum, token_attention=token_sum)


def _cohort_values(table: pd.DataFrame, run: TrainedRun) -> dict[str, tuple[float, ...]]:
    """``{slide_id: value}`` of a regression (``(value,)``) or survival (``(time, event)``) target
    in a new cohort's labels table; slides with empty cells, or a table without the columns, have none.

    Raises:
        LabelTypeError: Values that do not fit the endpoint (as in training).
    """
    columns = run.columns or (run.target,)
    if any(c not in table.columns for c in columns):
        logger.info("%s: the labels table has no column(s) %s: predictions only", run.name, list(columns))
        return {}
    spec = TargetSpec(run.target, run.endpoint, tuple(columns))
    filled = pd.Series(True, index=table.index)
    for c in columns:
        filled &= table[c].notna() & (table[c].astype(str).str.strip() != "")
    rows = table[filled]
    if run.endpoint == "survival":
        parsed = parse_survival(rows[columns[0]], rows[columns[1]], spec)
        return {str(sid): (float(t), float(e)) for sid, t, e in
                zip(rows["slide_id"], parsed["time"], parsed["event"], strict=True)}
    values = parse_regression(rows[columns[0]].astype(str).str.strip(), spec)
    return {str(sid): (float(v),) for sid, v in zip(rows["slide_id"], values, strict=True)}


def new_cohort_bags(slide_ids: Iterable[str], *, bag_level: str, table: pd.DataFrame | None = None,
                    target: str | None = None, classes: Sequence[str] = (), run: TrainedRun | None = None
                    ) -> tuple[list[Bag], list[str]]:
    """Bags of a new cohort and the labels-table slides that have no features.

    Args:
        slide_ids: Slides with usable features.
        bag_level: The trained run's bag level (``patient``: a patient's slides form one bag).
        table: Labels table (``patient_id``, ``slide_id`` and label columns) or None: every slide
            is its own patient and bag, unlabelled.
        target: Label column of ``table`` to read (absent or empty cells: unlabelled bag).
        classes: The run's classes; a label value outside them is an error.
        run: The trained run; a regression or survival run reads its value (or time and event)
            columns into ``Bag.value`` instead of a class.

    Returns:
        (bags sorted by bag id, slide ids of ``table`` without features).

    Raises:
        MixmagValueError: a label value the model was not trained on.
    """
    if run is not None and run.endpoint != "classification":
        return _value_cohort_bags(slide_ids, bag_level=bag_level, table=table, run=run)
    available = sorted(set(slide_ids))
    patient_of = {s: s for s in available}
    label_of: dict[str, str] = {}
    missing: list[str] = []
    if table is not None:
        for row in table.itertuples(index=False):
            sid, pid = str(row.slide_id), str(row.patient_id)
            if sid not in patient_of:
                missing.append(sid)
                continue
            patient_of[sid] = pid
            if target is not None and target in table.columns:
                value = getattr(row, target)
                if pd.notna(value) and str(value).strip() != "":
                    label_of[sid] = _as_class(str(value).strip(), classes)
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted({v for v in label_of.values() if v not in lookup})
    if unknown:
        raise MixmagValueError(f"target {target!r}: label value(s) {unknown} were not among the training classes "
                               f"{list(classes)}; fix the labels file or leave those cells empty (unlabelled)")
    groups: dict[str, list[str]] = {}
    for sid in available:
        key = patient_of[sid] if bag_level == "patient" else sid
        groups.setdefault(key, []).append(sid)
    bags = []
    for key, sids in sorted(groups.items()):
        labels = {label_of[s] for s in sids if s in label_of}
        if len(labels) > 1:
            raise MixmagValueError(f"target {target!r}: the slides of patient {key} have different labels {sorted(labels)}")
        label = lookup[labels.pop()] if labels else -1
        bags.append(Bag(bag_id=key, patient_id=patient_of[sids[0]], slide_ids=tuple(sorted(sids)), label=label))
    return bags, sorted(set(missing))


def _value_cohort_bags(slide_ids: Iterable[str], *, bag_level: str, table: pd.DataFrame | None,
                       run: TrainedRun) -> tuple[list[Bag], list[str]]:
    """:func:`new_cohort_bags` of a regression or survival run."""
    available = sorted(set(slide_ids))
    patient_of = {s: s for s in available}
    missing: list[str] = []
    values: dict[str, tuple[float, ...]] = {}
    if table is not None:
        for sid, pid in zip(table["slide_id"].astype(str), table["patient_id"].astype(str), strict=True):
            if sid in patient_of:
                patient_of[sid] = pid
            else:
                missing.append(sid)
        values = _cohort_values(table, run)
    groups: dict[str, list[str]] = {}
    for sid in available:
        groups.setdefault(patient_of[sid] if bag_level == "patient" else sid, []).append(sid)
    bags = []
    for key, sids in sorted(groups.items()):
        found = {values[s] for s in sids if s in values}
        if len(found) > 1:
            raise MixmagValueError(f"target {run.target!r}: the slides of patient {key} have different labels "
                                   f"{sorted(found)}")
        value = found.pop() if found else ()
        label = int(value[1]) if len(value) == 2 else 0
        bags.append(Bag(bag_id=key, patient_id=patient_of[sids[0]], slide_ids=tuple(sorted(sids)), label=label,
                        value=value))
    return bags, sorted(set(missing))


def _as_class(value: str, classes: Sequence[str]) -> str:
    """A label cell spelled as the training classes spell it (``1.0`` matches class ``1``)."""
    if value in classes:
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    for c in classes:
        try:
            if float(c) == number:
                return c
        except ValueError:
            continue
    return value
