"""Label tables: read, validate, and turn into bags (one per patient or per slide) for one target.

A labels table is CSV or TSV (delimiter sniffed) with columns ``patient_id``, ``slide_id`` and one
or more label columns. Every problem is reported with what is wrong and how to fix it:

- slide ids without a feature file (the first few are listed, plus the count), or whose file is
  unusable (corrupt, incomplete, NaN/inf ...: each listed with its reason) -> one error, or, with
  ``allow_missing_slides``, excluded and recorded with the reason;
- a slide listed under two patients, or twice with different labels -> error;
- a patient whose slides disagree on a label with patient-level bags -> error (listed);
- missing label values -> those rows are excluded for that target, counted in the log and recorded;
- a label column with a single class -> error.

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

import pandas as pd

from mixmag.errors import MixmagFileNotFoundError, MixmagValueError, reading_user_file

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
        label: Class index into :attr:`TargetBags.classes`.
    """

    bag_id: str
    patient_id: str
    slide_ids: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class Exclusion:
    """A labels-table row left out of a target, and why."""

    target: str
    patient_id: str
    slide_id: str
    reason: str


@dataclass
class TargetBags:
    """Bags of one target with their class names (``classes[label]``) and what was excluded."""

    target: str
    classes: list[str]
    bags: list[Bag]
    bag_level: str
    exclusions: list[Exclusion] = field(default_factory=list)

    @property
    def patient_labels(self) -> pd.Series:
        """One class index per patient (most frequent over the patient's bags), for splitting."""
        df = pd.DataFrame({"patient_id": [b.patient_id for b in self.bags], "label": [b.label for b in self.bags]})
        return df.groupby("patient_id")["label"].agg(lambda s: s.value_counts().idxmax())


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


def build_bags(df: pd.DataFrame, target: str, *, available_slides: Iterable[str], bag_level: str = "patient",
               allow_missing_slides: bool = False, unusable: Mapping[str, str] | None = None) -> TargetBags:
    """Validate one label column and group its slides into bags.

    Args:
        df: Table from :func:`read_labels`.
        target: Label column.
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
    if bag_level not in BAG_LEVELS:
        raise MixmagValueError(f"bag_level must be one of {BAG_LEVELS}, got {bag_level!r}")
    available = set(available_slides)
    exclusions: list[Exclusion] = []
    part = df[["patient_id", "slide_id", target]].copy()
    part[target] = part[target].str.strip()
    na = part[target].isna() | (part[target] == "")
    if na.any():
        logger.warning("target %r: %d of %d slides have no label and are excluded", target, int(na.sum()), len(part))
        exclusions += [Exclusion(target, r.patient_id, r.slide_id, MISSING_LABEL) for r in part[na].itertuples()]
        part = part[~na]
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
    per_patient = part.groupby("patient_id")[target].nunique()
    conflicting = per_patient[per_patient > 1].index
    if len(conflicting):
        if bag_level == "patient":
            raise MixmagValueError(f"target {target!r}: patients whose slides have different labels: {_few(conflicting)}. "
                                   "Fix the table, or use slide-level bags "
                                   "(mil.bag_level: slide, or --set mil.bag_level=slide)")
        logger.warning("target %r: %d patients have slides with different labels; their split stratum is "
                       "the most frequent label", target, len(conflicting))
    classes = _class_order(part[target])
    if len(classes) < 2:
        raise MixmagValueError(f"target {target!r} has a single class ({classes[0] if classes else 'none'}) among "
                               f"{len(part)} usable slides; AUROC needs two. Choose other --targets")
    index = {c: i for i, c in enumerate(classes)}
    bags: list[Bag] = []
    if bag_level == "patient":
        for pid, g in part.groupby("patient_id", sort=True):
            bags.append(Bag(str(pid), str(pid), tuple(sorted(g["slide_id"])), index[g[target].iloc[0]]))
    else:
        part = part.sort_values("slide_id")
        for sid, pid, value in zip(part["slide_id"], part["patient_id"], part[target], strict=True):
            bags.append(Bag(str(sid), str(pid), (str(sid),), index[value]))
    logger.info("target %r: %d %s bags from %d slides, classes %s", target, len(bags), bag_level,
                len(part), {c: sum(b.label == i for b in bags) for c, i in index.items()})
    return TargetBags(target=target, classes=classes, bags=bags, bag_level=bag_level, exclusions=exclusions)
