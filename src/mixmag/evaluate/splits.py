"""Patient-level stratified k-fold splits with an inner validation split, saved as a reusable CSV.

Split file (``splits.csv``, see ``docs/formats/mil-run.md``): one row per (patient, fold)::

    patient_id,fold,role          role in {train, val, test}
    [target]                      optional: a file may hold different splits per label column

Every patient is ``test`` in exactly one fold; within a fold every patient has one role. Bags are
built *after* splitting, so all slides of a patient always land in the same role, whatever the bag
level. Every method of a comparison reads the same file, hence identical folds.

Fallbacks (each logged as a warning; see ``docs/concepts/evaluation.md``):

- the rarest class has fewer patients than ``folds`` -> use that many folds (>= 2), else error;
- a class has fewer than 2 training patients in a fold -> the validation split is not stratified;
- the validation split of a fold ends up single-class -> the training engine early-stops on
  validation loss instead of AUROC (logged there).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from mixmag.errors import MixmagFileNotFoundError, MixmagValueError, reading_user_file
from mixmag.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

ROLES = ("train", "val", "test")
SPLIT_COLUMNS = ("patient_id", "fold", "role")


def make_splits(patient_labels: pd.Series, *, folds: int = 5, val_frac: float = 0.2,
                seed: int = 0, class_names: Sequence[str] | None = None, stratum: str = "class") -> pd.DataFrame:
    """Stratified patient-level k-fold with an inner stratified validation split per fold.

    Args:
        patient_labels: One label per patient, indexed by patient_id (for multi-class tasks any
            hashable class value; slide-level bags use the patient's most frequent label).
        folds: Requested number of folds k (reduced, with a warning, when the rarest class has
            fewer than k patients).
        val_frac: Fraction of each fold's non-test patients used for early stopping.
        seed: Seed of the fold assignment and of every inner split.
        class_names: The class values when ``patient_labels`` holds class indices (label ``i`` is
            ``class_names[i]``), so a message names the value written in the labels table; the
            splits never depend on them.
        stratum: What the labels are, for messages: ``class``, or for the other endpoints
            (docs/concepts/endpoints.md) the stratum they are split by (``event status``,
            ``quantile bin of the value``).

    Returns:
        DataFrame with columns ``patient_id, fold, role`` (k rows per patient).

    Raises:
        ValueError: fewer than two classes, or a class with fewer than two patients.
    """
    labels = patient_labels.astype(str)
    if labels.index.has_duplicates:
        dup = labels.index[labels.index.duplicated()].unique().tolist()
        raise MixmagValueError(f"patient ids must be unique for splitting; duplicated: {dup[:5]}")
    counts = labels.value_counts()

    def name(label: str) -> str:
        return str(class_names[int(label)]) if class_names is not None else label

    if len(counts) < 2:
        raise MixmagValueError(f"cannot split: every patient has {'label' if stratum == 'class' else stratum} "
                               f"{name(counts.index[0])!r}")
    smallest = int(counts.min())
    if smallest < 2:
        rare = str(counts.idxmin())
        who = ", ".join(map(str, labels.index[labels == rare][:5]))
        raise MixmagValueError(
            f"cannot make a stratified split: {stratum} {name(rare)!r} has only {smallest} patient ({who}); every "
            f"{stratum} needs at least 2 patients (one per test fold for 2 folds): correct the label if it is a typo, or "
            "leave that cell empty to exclude the patient"
        )
    k = folds
    if smallest < folds:
        k = smallest
        logger.warning("%s %r has only %d patients, fewer than the %d folds requested: using %d folds "
                       "so every test fold contains every %s", stratum, name(str(counts.idxmin())), smallest, folds, k,
                       stratum)
    pids = labels.index.to_numpy()
    y = labels.to_numpy()
    rows: list[tuple[str, int, str]] = []
    outer = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (rest_idx, test_idx) in enumerate(outer.split(pids, y)):
        rest_y = y[rest_idx]
        rest_counts = pd.Series(rest_y).value_counts()
        n_classes = len(rest_counts)
        # at least one validation patient per class, and at least one training patient per class
        n_val = min(max(round(val_frac * len(rest_idx)), n_classes), len(rest_idx) - n_classes)
        if n_val < 1:
            raise MixmagValueError(f"fold {fold}: only {len(rest_idx)} non-test patients, too few for a "
                                   "training and a validation set; use fewer folds or more patients")
        stratify = rest_y if rest_counts.min() >= 2 else None
        if stratify is None:
            logger.warning("fold %d: a class has fewer than 2 training patients, so the validation split "
                           "is not stratified (it may miss a class; early stopping then uses the loss)", fold)
        train_idx, val_idx = train_test_split(rest_idx, test_size=n_val, stratify=stratify,
                                              random_state=seed + 1000 * (fold + 1))
        rows += [(str(pids[i]), fold, "train") for i in train_idx]
        rows += [(str(pids[i]), fold, "val") for i in val_idx]
        rows += [(str(pids[i]), fold, "test") for i in test_idx]
    out = pd.DataFrame(rows, columns=list(SPLIT_COLUMNS))
    return out.sort_values(["fold", "role", "patient_id"], kind="stable").reset_index(drop=True)


def validate_splits(splits: pd.DataFrame, *, source: str = "splits") -> pd.DataFrame:
    """Check the split invariants; return the table with ``patient_id`` as str and ``fold`` as int.

    Raises:
        ValueError: missing columns, unknown roles, a patient with two roles in one fold, a patient
            that is test in zero or several folds, or a fold without training patients.
    """
    missing = [c for c in SPLIT_COLUMNS if c not in splits.columns]
    if missing:
        raise MixmagValueError(f"{source}: missing column(s) {missing}; a split file has columns "
                               f"{', '.join(SPLIT_COLUMNS)}")
    df = splits.copy()
    df["patient_id"] = df["patient_id"].astype(str)
    with reading_user_file(source):  # a fold that is not a whole number
        df["fold"] = df["fold"].astype(int)
    df["role"] = df["role"].astype(str).str.strip().str.lower()
    bad_roles = sorted(set(df["role"]) - set(ROLES))
    if bad_roles:
        raise MixmagValueError(f"{source}: unknown role(s) {bad_roles}; use train, val or test")
    dup = df.duplicated(["patient_id", "fold"], keep=False)
    if dup.any():
        raise MixmagValueError(f"{source}: {int(dup.sum())} rows give a patient two roles in one fold, e.g. "
                               f"{df.loc[dup, 'patient_id'].iloc[0]!r}")
    test_counts = df[df["role"] == "test"].groupby("patient_id").size()
    all_pids = df["patient_id"].unique()
    not_once = [p for p in all_pids if test_counts.get(p, 0) != 1]
    if not_once:
        raise MixmagValueError(f"{source}: {len(not_once)} patients are not test in exactly one fold "
                               f"(e.g. {not_once[:3]}); every patient must be tested once")
    for fold, part in df.groupby("fold"):
        if not (part["role"] == "train").any():
            raise MixmagValueError(f"{source}: fold {fold} has no training patients")
    return df


def read_splits(path: str | os.PathLike[str], *, target: str | None = None) -> pd.DataFrame:
    """Read and validate a split file; with a ``target`` column, keep that target's rows."""
    p = Path(path)
    if not p.exists():
        raise MixmagFileNotFoundError(f"split file {p} does not exist")
    with reading_user_file(p):
        df = pd.read_csv(p, dtype={"patient_id": str})
    if "target" in df.columns:
        if target is None:
            raise MixmagValueError(f"{p} holds splits for several targets; say which target to use")
        df = df[df["target"].astype(str) == target].drop(columns="target")
        if df.empty:
            raise MixmagValueError(f"{p} has no splits for target {target!r}")
    return validate_splits(df, source=str(p))


def restrict_splits(splits: pd.DataFrame, patients: list[str] | np.ndarray, *,
                    source: str = "splits") -> pd.DataFrame:
    """Keep the rows of ``patients``; error when one of them has no split (nothing is guessed).

    Patients present in the split file but not in ``patients`` (e.g. their label is missing for this
    target) are dropped with a logged count.
    """
    wanted = pd.Index([str(p) for p in patients])
    have = pd.Index(splits["patient_id"].unique())
    missing = wanted.difference(have)
    if len(missing):
        raise MixmagValueError(f"{source}: {len(missing)} labelled patients have no split (e.g. "
                               f"{missing[:5].tolist()}); regenerate the split file or pass the matching one")
    extra = have.difference(wanted)
    if len(extra):
        logger.info("%s: %d patients in the split file have no usable label here and are ignored",
                    source, len(extra))
    return splits[splits["patient_id"].isin(wanted)].reset_index(drop=True)


def fold_roles(splits: pd.DataFrame, fold: int) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` patient ids of one fold."""
    part = splits[splits["fold"] == fold]
    return {role: sorted(part.loc[part["role"] == role, "patient_id"].tolist()) for role in ROLES}


def write_splits(splits: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Atomically write a split table as CSV; returns the path."""
    atomic_write_text(path, splits.to_csv(index=False))
    return Path(path)
