"""Label tables: read, validate, and turn into bags (one per patient or per slide) for one target.

A labels table is CSV or TSV (delimiter sniffed) with columns ``patient_id``, ``slide_id`` and one
or more label columns. Every problem is reported with what is wrong and how to fix it:

- slide ids without a feature file (the first few are listed, plus the count), or whose file is
  unusable (corrupt, incomplete, NaN/inf ...: each listed with its reason) -> one error, or, with
  ``allow_missing_slides``, excluded and recorded with the reason;
- a slide listed under two patients, or twice with different labels -> error;
- a patient whose slides disagree on a label with patient-level bags -> error (listed);
- missing label values -> those rows are excluded for that target, counted in the log and recorded;
- a label column with a single class (a regression column with one value, a survival target
  without events) -> error;
- values that do not fit the target's endpoint -> one :class:`~mixmag.mil.targets.LabelTypeError`.

A target is a :class:`~mixmag.mil.targets.TargetSpec` (endpoint and columns, from
:func:`~mixmag.mil.targets.resolve_targets`) or, as before endpoints existed, a column name
(classification).

Excluded rows are never dropped silently: they are returned as :class:`Exclusion` records that the
training run writes to ``excluded.csv``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mixmag.errors import MixmagFileNotFoundError, MixmagValueError, reading_user_file
from mixmag.evaluate.endpoints import ENDPOINT_METRICS
from mixmag.evaluate.regression import quantile_bins
from mixmag.mil.targets import TargetSpec, parse_regression, parse_survival

logger = logging.getLogger(__name__)

ID_COLUMNS = ("patient_id", "slide_id")
BAG_LEVELS = ("patient", "slide")
_SHOW = 5  # how many offending ids an error message lists
NO_FEATURE_FILE = "no feature file"
MISSING_LABEL = "missing label"


@dataclass(frozen=True)
class Bag:
    """One bag: the slides pooled into one prediction and its label.

    Attributes:
        bag_id: Patient id (patient-level bags) or slide id (slide-level bags).
        patient_id: Patient the bag belongs to (splits are always by patient).
        slide_ids: Slides whose regions form the bag, sorted.
        label: Class index into :attr:`TargetBags.classes` (classification); for the other
            endpoints 0, or the event status (survival).
        value: The truth of a regression (``(value,)``) or survival (``(time, event)``) target;
            empty for classification.
    """

    bag_id: str
    patient_id: str
    slide_ids: tuple[str, ...]
    label: int
    value: tuple[float, ...] = ()


@dataclass(frozen=True)
class Exclusion:
    """A labels-table row left out of a target, and why."""

    target: str
    patient_id: str
    slide_id: str
    reason: str


@dataclass
class TargetBags:
    """Bags of one target with their class names (``classes[label]``) and what was excluded.

    Attributes:
        endpoint: ``classification``, ``regression`` or ``survival`` (docs/concepts/endpoints.md).
        columns: The label column(s) read (survival: time, event).
        classes: Class values (classification); empty for the other endpoints.
    """

    target: str
    classes: list[str]
    bags: list[Bag]
    bag_level: str
    exclusions: list[Exclusion] = field(default_factory=list)
    endpoint: str = "classification"
    columns: tuple[str, ...] = ()

    @property
    def patient_labels(self) -> pd.Series:
        """One class index per patient (most frequent over the patient's bags), for splitting."""
        df = pd.DataFrame({"patient_id": [b.patient_id for b in self.bags], "label": [b.label for b in self.bags]})
        return df.groupby("patient_id")["label"].agg(lambda s: s.value_counts().idxmax())

    @property
    def truth(self) -> np.ndarray:
        """The truth of every bag: (n,) class indices, (n,) values, or (n, 2) time and event."""
        if self.endpoint == "classification":
            return np.asarray([b.label for b in self.bags], dtype=np.int64)
        values = np.asarray([b.value for b in self.bags], dtype=np.float64)
        return values[:, 0] if values.shape[1] == 1 else values

    def patient_strata(self, folds: int) -> tuple[pd.Series, list[str]]:
        """The stratum of each patient for splitting, and the stratum names (for messages).

        Classification: the class (as :attr:`patient_labels`). Regression: equal-count quantile bins
        of the patient's value, ``max(2, min(5, patients // (2 * folds)))`` of them, so each bin
        has at least two patients per test fold. Survival: the event status, or quantile bins of the
        time when every patient has the same status (e.g. no censoring).
        """
        if self.endpoint == "classification":
            return self.patient_labels, self.classes
        df = pd.DataFrame({"patient_id": [b.patient_id for b in self.bags],
                           **{f"v{i}": [b.value[i] for b in self.bags] for i in range(len(self.bags[0].value))}})
        per_patient = df.groupby("patient_id").mean()
        n_bins = max(2, min(5, len(per_patient) // (2 * max(folds, 1))))
        truth = per_patient.to_numpy()
        if self.endpoint == "survival" and len(np.unique(truth[:, 1] > 0)) > 1:
            strata = ENDPOINT_METRICS.get("survival").split_strata(truth, n_bins)
            return pd.Series(strata, index=per_patient.index), ["censored", "event"]
        bins = quantile_bins(truth[:, 0], n_bins)
        edges = [f"{truth[bins == b, 0].min():g}-{truth[bins == b, 0].max():g}" for b in range(n_bins)]
        what = "value" if self.endpoint == "regression" else "time"
        return pd.Series(bins, index=per_patient.index), [f"{what} {e}" for e in edges]

    def label_text(self, bag: Bag) -> str:
        """The bag's truth as written in outputs: class value, value, or ``time (event|censored)``."""
        if self.endpoint == "classification":
            return self.classes[bag.label]
        if self.endpoint == "survival":
            return f"{bag.value[0]:g} ({'event' if bag.value[1] else 'censored'})"
        return f"{bag.value[0]:g}"


def _few(items: Iterable[object]) -> str:
    items = list(items)
    shown = ", ".join(repr(str(i)) for i in items[:_SHOW])
    return f"{shown}{' ...' if len(items) > _SHOW else ''} ({len(items)} in total)"


def read_labels(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a CSV/TSV labels table; ids are strings, empty cells are missing values.

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``patient_id``/``slide_id`` missing, empty ids, a slide under two patients, or
            a slide listed twice with different labels.
    """
    p = Path(path)
    if not p.exists():
        raise MixmagFileNotFoundError(f"labels file {p} does not exist; check the path")
    with reading_user_file(p):
        text = p.read_text(encoding="utf-8-sig")
    try:
        sep = csv.Sniffer().sniff(text.splitlines()[0] if text else "", delimiters=",\t;").delimiter
    except csv.Error:
        sep = "\t" if p.suffix.lower() in (".tsv", ".tab") else ","
    with reading_user_file(p):
        df = pd.read_csv(p, sep=sep, dtype=str, keep_default_na=True, skipinitialspace=True)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ID_COLUMNS if c not in df.columns]
    if missing:
        raise MixmagValueError(f"{p}: missing column(s) {missing}; a labels table needs patient_id, slide_id "
                               f"and label columns (found: {list(df.columns)})")
    for col in ID_COLUMNS:
        df[col] = df[col].str.strip()
        empty = df[col].isna() | (df[col] == "")
        if empty.any():
            raise MixmagValueError(f"{p}: {int(empty.sum())} rows have an empty {col} (first at line "
                                   f"{int(empty.to_numpy().nonzero()[0][0]) + 2}); fill in or delete those rows")
    patients_per_slide = df.groupby("slide_id")["patient_id"].nunique()
    multi = patients_per_slide[patients_per_slide > 1].index
    if len(multi):
        raise MixmagValueError(f"{p}: slides listed under more than one patient: {_few(multi)}; keep one row per "
                               "slide, under its patient")
    label_cols = [c for c in df.columns if c not in ID_COLUMNS]
    dup = df.duplicated("slide_id", keep=False)
    if dup.any():
        conflicting = [s for s, g in df[dup].groupby("slide_id") if len(g[label_cols].drop_duplicates()) > 1]
        if conflicting:
            raise MixmagValueError(f"{p}: slides listed twice with different labels: {_few(conflicting)}; keep the "
                                   "row with the right label")
        logger.info("%s: %d repeated identical rows ignored", p, int(df.duplicated().sum()))
        df = df.drop_duplicates("slide_id")
    return df.reset_index(drop=True)


def label_columns(df: pd.DataFrame, targets: list[str] | None = None) -> list[str]:
    """The targets to train: ``targets`` (checked to exist) or every non-id column."""
    available = [c for c in df.columns if c not in ID_COLUMNS]
    if targets:
        unknown = [t for t in targets if t not in available]
        if unknown:
            raise MixmagValueError(f"label column(s) {unknown} not in the labels table; available: {available}")
        return list(targets)
    if not available:
        raise MixmagValueError("the labels table has no label column besides patient_id and slide_id; add one "
                               "column per target (e.g. label) with a value per slide")
    return available


def _with_reasons(reasons: Mapping[str, str]) -> str:
    """``'S1': reason; 'S2': reason ... (n in total)`` for the first few slides."""
    shown = "; ".join(f"{s!r}: {r}" for s, r in list(reasons.items())[:_SHOW])
    return shown + (f" ... ({len(reasons)} in total)" if len(reasons) > _SHOW else "")


def _unusable_message(target: str, reasons: Mapping[str, str]) -> str:
    """One error for labelled slides without usable features: missing files listed, bad files with reasons."""
    missing = [s for s, r in reasons.items() if r == NO_FEATURE_FILE]
    bad = {s: r for s, r in reasons.items() if r != NO_FEATURE_FILE}
    parts = []
    if missing:
        parts.append(f"{len(missing)} labelled slides have no feature file: {_few(missing)}. Check the slide_id "
                     "column against the feature file names (<slide_id>.h5), or run `mixmag embed` for them")
    if bad:
        parts.append(f"{len(bad)} labelled slides have an unusable feature file: {_with_reasons(bad)}")
    return (f"target {target!r}: " + ". ".join(parts) + ". To train without them, set mil.allow_missing_slides: "
            "true (--set mil.allow_missing_slides=true): they are then excluded and recorded in excluded.csv")


def _class_order(values: pd.Series) -> list[str]:
    """Classes in natural order: numeric when every value parses as a number, else lexicographic."""
    uniq = values.unique().tolist()
    try:
        return [v for _, v in sorted((float(v), v) for v in uniq)]
    except ValueError:
        return sorted(uniq)


def _values(part: pd.DataFrame, spec: TargetSpec) -> pd.Series:
    """The label of each row as one hashable value (str class, float, or (time, event)), index kept."""
    if spec.endpoint == "classification":
        return part[spec.columns[0]]
    if spec.endpoint == "regression":
        return parse_regression(part[spec.columns[0]], spec)
    parsed = parse_survival(part[spec.columns[0]], part[spec.columns[1]], spec)
    return pd.Series(list(zip(parsed["time"], parsed["event"], strict=True)), index=parsed.index, dtype=object)


def _check_values(spec: TargetSpec, values: pd.Series, n_slides: int) -> None:
    """An endpoint's target must vary: two classes, two values, or at least one event."""
    if spec.endpoint == "regression" and values.nunique() < 2:
        raise MixmagValueError(f"target {spec.name!r} has a single value ({values.iloc[0] if len(values) else 'none'}) "
                               f"among {n_slides} usable slides; a regression target needs several. Choose other "
                               "--targets")
    if spec.endpoint == "survival" and not any(v[1] for v in values):
        raise MixmagValueError(f"survival target {spec.name!r} has no event among {n_slides} usable slides (every "
                               f"{spec.columns[1]!r} is 0); the C-index needs events. Check the event coding "
                               "(1 = event observed)")


def build_bags(df: pd.DataFrame, target: str | TargetSpec, *, available_slides: Iterable[str],
               bag_level: str = "patient", allow_missing_slides: bool = False,
               unusable: Mapping[str, str] | None = None) -> TargetBags:
    """Validate one target's label column(s) and group its slides into bags.

    Args:
        df: Table from :func:`read_labels`.
        target: The target (:func:`~mixmag.mil.targets.resolve_targets`), or a column name
            (classification).
        available_slides: Slide ids that have a usable feature file.
        bag_level: ``"patient"`` (all of a patient's slides form one bag) or ``"slide"``.
        allow_missing_slides: Exclude (and record) labelled slides without usable features instead of failing.
        unusable: ``{slide_id: reason}`` of slides whose feature file exists but cannot be used
            (:meth:`~mixmag.mil.data.FeatureStore.check`); a labelled slide not in ``available_slides``
            is excluded with this reason, else with "no feature file".

    Returns:
        The bags, class names (``classes[i]`` is class index i; for binary tasks the probability
        reported is that of ``classes[1]``) and the exclusions.
    """
    spec = target if isinstance(target, TargetSpec) else TargetSpec(target, "classification", (target,))
    target = spec.name
    if bag_level not in BAG_LEVELS:
        raise MixmagValueError(f"bag_level must be one of {BAG_LEVELS}, got {bag_level!r}")
    available = set(available_slides)
    exclusions: list[Exclusion] = []
    part = df[["patient_id", "slide_id", *spec.columns]].copy()
    na = pd.Series(True, index=part.index)
    for col in spec.columns:  # a survival row with one of its two cells filled is an error (parse_survival)
        part[col] = part[col].str.strip()
        na &= part[col].isna() | (part[col] == "")
    if na.any():
        logger.warning("target %r: %d of %d slides have no label and are excluded", target, int(na.sum()), len(part))
        exclusions += [Exclusion(target, r.patient_id, r.slide_id, MISSING_LABEL) for r in part[na].itertuples()]
        part = part[~na]
    part = part.assign(_value=_values(part, spec))
    no_feat = ~part["slide_id"].isin(available)
    if no_feat.any():
        reasons = {str(sid): (unusable or {}).get(str(sid), NO_FEATURE_FILE) for sid in part.loc[no_feat, "slide_id"]}
        if not allow_missing_slides:
            raise MixmagValueError(_unusable_message(target, reasons))
        lost = set(part.loc[no_feat, "patient_id"]) - set(part.loc[~no_feat, "patient_id"])
        logger.warning("target %r: %d labelled slides without usable features excluded (%d patients lose every "
                       "slide; recorded in excluded.csv): %s", target, len(reasons), len(lost), _with_reasons(reasons))
        exclusions += [Exclusion(target, r.patient_id, r.slide_id, reasons[str(r.slide_id)])
                       for r in part[no_feat].itertuples()]
        part = part[~no_feat]
    per_patient = part.groupby("patient_id")["_value"].nunique()
    conflicting = per_patient[per_patient > 1].index
    if len(conflicting):
        if bag_level == "patient":
            raise MixmagValueError(f"target {target!r}: patients whose slides have different labels: {_few(conflicting)}. "
                                   "Fix the table, or use slide-level bags "
                                   "(mil.bag_level: slide, or --set mil.bag_level=slide)")
        logger.warning("target %r: %d patients have slides with different labels; their split stratum is "
                       "the most frequent label", target, len(conflicting))
    if spec.endpoint != "classification":
        return _value_bags(part, spec, bag_level, exclusions)
    classes = _class_order(part["_value"])
    if len(classes) < 2:
        raise MixmagValueError(f"target {target!r} has a single class ({classes[0] if classes else 'none'}) among "
                               f"{len(part)} usable slides; AUROC needs two. Choose other --targets")
    if spec.declared == "binary" and len(classes) != 2:
        raise MixmagValueError(f"target {target!r} is declared binary but has {len(classes)} classes {classes}; "
                               f"declare it multiclass (mil.target_types: {{{target}: multiclass}}) or fix the column")
    if spec.declared == "multiclass" and len(classes) < 3:
        raise MixmagValueError(f"target {target!r} is declared multiclass but has {len(classes)} classes {classes}; "
                               f"declare it binary or classification (mil.target_types: {{{target}: classification}})")
    index = {c: i for i, c in enumerate(classes)}
    bags: list[Bag] = []
    if bag_level == "patient":
        for pid, g in part.groupby("patient_id", sort=True):
            bags.append(Bag(str(pid), str(pid), tuple(sorted(g["slide_id"])), index[g["_value"].iloc[0]]))
    else:
        part = part.sort_values("slide_id")
        for sid, pid, value in zip(part["slide_id"], part["patient_id"], part["_value"], strict=True):
            bags.append(Bag(str(sid), str(pid), (str(sid),), index[value]))
    logger.info("target %r: %d %s bags from %d slides, classes %s", target, len(bags), bag_level,
                len(part), {c: sum(b.label == i for b in bags) for c, i in index.items()})
    return TargetBags(target=target, classes=classes, bags=bags, bag_level=bag_level, exclusions=exclusions,
                      columns=spec.columns)


def _value_bags(part: pd.DataFrame, spec: TargetSpec, bag_level: str, exclusions: list[Exclusion]) -> TargetBags:
    """Bags of a regression or survival target (``Bag.value`` holds the truth)."""
    _check_values(spec, part["_value"], len(part))

    def value(v: object) -> tuple[float, ...]:
        return (float(v[0]), float(v[1])) if isinstance(v, tuple) else (float(v),)  # type: ignore[arg-type]

    bags: list[Bag] = []
    if bag_level == "patient":
        for pid, g in part.groupby("patient_id", sort=True):
            v = value(g["_value"].iloc[0])
            bags.append(Bag(str(pid), str(pid), tuple(sorted(g["slide_id"])), int(v[1]) if len(v) == 2 else 0, v))
    else:
        part = part.sort_values("slide_id")
        for sid, pid, raw in zip(part["slide_id"], part["patient_id"], part["_value"], strict=True):
            v = value(raw)
            bags.append(Bag(str(sid), str(pid), (str(sid),), int(v[1]) if len(v) == 2 else 0, v))
    truth = np.asarray([b.value for b in bags])
    if spec.endpoint == "survival":
        logger.info("target %r (survival): %d %s bags from %d slides, %d events, follow-up %g-%g", spec.name,
                    len(bags), bag_level, len(part), int(truth[:, 1].sum()), truth[:, 0].min(), truth[:, 0].max())
    else:
        logger.info("target %r (regression): %d %s bags from %d slides, values %g-%g (mean %g)", spec.name,
                    len(bags), bag_level, len(part), truth[:, 0].min(), truth[:, 0].max(), truth[:, 0].mean())
    return TargetBags(target=spec.name, classes=[], bags=bags, bag_level=bag_level, exclusions=exclusions,
                      endpoint=spec.endpoint, columns=spec.columns)


#: An undeclared third (or later) class with fewer bags than this, or than this share of the bags,
#: is probably a typo in the labels table ("postive" beside "positive").
RARE_CLASS_BAGS = 3
RARE_CLASS_FRACTION = 0.05


def warn_rare_classes(tb: TargetBags, *, declared: str | None) -> dict[str, int]:
    """Warn about the rare classes of a classification target not declared multi-class.

    A typo in a binary column silently makes a third class that the model then learns as one; the
    warning names the classes and both fixes. It comes after the target's split succeeded, so a
    class too small to split still stops the run with the split's one error line instead.

    Returns:
        ``{class: bags}`` of the classes warned about (empty: no warning).
    """
    if tb.endpoint != "classification" or len(tb.classes) <= 2 or declared == "multiclass":
        return {}
    counts = {c: sum(b.label == i for b in tb.bags) for i, c in enumerate(tb.classes)}
    rare = {c: n for c, n in counts.items() if n < max(RARE_CLASS_BAGS, RARE_CLASS_FRACTION * len(tb.bags))}
    if rare:
        logger.warning("target %r: class(es) %s hold very few bags (%s of %d): a typo in the labels table? Fix the "
                       "cells, or declare the target multi-class (--target-type %s=multiclass) to silence this",
                       tb.target, ", ".join(repr(c) for c in rare), ", ".join(map(str, rare.values())),
                       len(tb.bags), tb.target)
    return rare
