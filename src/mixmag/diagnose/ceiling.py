"""Region-supervised ceiling: how well could a MIL model that scores slides by their best regions do?

For every (feature set, property) the probe of :mod:`mixmag.diagnose.probes` (``linear`` by
default, same ``PROBES`` registry, same ``GroupKFold`` over slides, same seeds) is fit on *region*
labels, and every region gets an out-of-fold score from the fold model that never saw its slide.
Each slide is then scored by the **max** of its regions' scores and by the **mean of its top 3**,
and the slide-level AUROC of those scores against a slide label is reported. The slide label is
"any of the slide's probe regions holds the property" or, when given, a label from a slide table
(``labels.csv``: ``patient_id, slide_id, <label>``). With region labels in hand this is close to
the best that any MIL model pooling a slide's top regions can expect from these features: if it
is near 0.5-0.7, the property is not visible enough region by region to decide a slide of this size.

Scores are made comparable across folds (a deviation from plain out-of-fold probabilities):
each fold model's logits are shifted so that their mean over *every* region of the set is the
same for all folds, then mapped back to probabilities at the overall region prevalence. A fold
model's intercept follows the prevalence of its training part, which is low exactly when the test
part holds the positive slides; pooling raw probabilities across folds would push uninformative
features *below* 0.5 (about 0.42 on 16 slides x 60 regions), the effect the probes avoid by
averaging fold AUROCs. Slide AUROCs cannot be averaged per fold - a fold holds one or two slides -
so the common reference is used instead. ``region_auroc`` is the probes' number (mean test-fold
AUROC) for the same fits.

A row is skipped, with the reason in ``note``, when the property has fewer than ``MIN_CLASS``
positive or negative regions (the probe cannot be fit), when its regions come from one slide, or
when fewer than ``MIN_SLIDES`` slides are positive or negative (a slide AUROC would be noise).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold

from mixmag.diagnose.probes import DEFAULT_FOLDS, MIN_CLASS, PROBES, fit_probe
from mixmag.errors import MixmagValueError
from mixmag.mil.labels import build_bags, label_columns, read_labels

logger = logging.getLogger(__name__)

MIN_SLIDES = 4  # fewer positive (or negative) slides than this and a slide AUROC is mostly noise
TOP_K = 3
CEILING_COLUMNS = ("feature_set", "property", "probe", "region_auroc", "slide_auroc_max", "slide_auroc_top3",
                   "n_slides", "n_pos_slides", "note")
_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before the logit


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def out_of_fold_scores(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, probe: str = "linear",
                       n_folds: int = DEFAULT_FOLDS, seed: int = 0) -> tuple[np.ndarray, float]:
    """Out-of-fold region probabilities on a common scale, and the probe's region AUROC.

    The folds, estimators and seeds are those of :func:`~mixmag.diagnose.probes.probe_auroc`.

    Args:
        x: (N, F) features (finite).
        y: (N,) bool/0-1 region labels with both classes.
        groups: (N,) slide of each region; at least two distinct values.
        probe: Key of ``PROBES``.
        n_folds: Folds (reduced to the number of slides when there are fewer).
        seed: Seeds the estimators (fold ``i`` uses ``seed + i``).

    Returns:
        ``(scores, region_auroc)``: (N,) probabilities in (0, 1), each from the fold model whose
        training part excluded the region's slide, shifted per fold as the module docstring says;
        and the mean test-fold AUROC (NaN when no test fold holds both classes).
    """
    factory = PROBES.get(probe)
    y = np.asarray(y).astype(np.int64)
    groups = np.asarray(groups)
    folds = min(n_folds, len(np.unique(groups)))
    logits = np.zeros(len(y))  # a fold whose training part has one class scores every region alike
    aucs = []
    for fold, (train, test) in enumerate(GroupKFold(n_splits=folds).split(x, y, groups)):
        y_train, y_test = y[train], y[test]
        if y_train.min() == y_train.max():
            if y_test.min() != y_test.max():
                aucs.append(0.5)
            continue
        est = fit_probe(factory, x[train], y_train, seed + fold)
        everywhere = _logit(est.predict_proba(x)[:, 1])  # (N,): the common reference is every region
        # rounded: the fold offsets must not order slides through float noise (constant features)
        logits[test] = np.round(everywhere[test] - everywhere.mean(), 9)
        if y_test.min() != y_test.max():
            aucs.append(float(roc_auc_score(y_test, everywhere[test])))
    prevalence = float(np.clip(y.mean(), _EPS, 1 - _EPS))
    scores = 1.0 / (1.0 + np.exp(-(logits + np.log(prevalence / (1 - prevalence)))))
    return scores, float(np.mean(aucs)) if aucs else float("nan")


def slide_scores(scores: np.ndarray, groups: np.ndarray, *, top_k: int = TOP_K) -> pd.DataFrame:
    """Pool region scores into slide scores.

    Args:
        scores: (N,) region scores.
        groups: (N,) slide of each region.
        top_k: Regions averaged by ``top`` (all of a slide's regions when it has fewer).

    Returns:
        Indexed by slide id (sorted), columns ``max`` (best region) and ``top`` (mean of the
        ``top_k`` best) and ``n_regions``.
    """
    df = pd.DataFrame({"slide": np.asarray(groups), "score": np.asarray(scores, dtype=float)})
    best = df.sort_values("score", ascending=False, kind="stable").groupby("slide", sort=True).head(top_k)
    by = df.groupby("slide", sort=True)["score"]
    return pd.DataFrame({"max": by.max(), "top": best.groupby("slide", sort=True)["score"].mean(),
                         "n_regions": by.size()})


def _slide_truth(holds: np.ndarray, groups: np.ndarray, slide_labels: Mapping[str, int] | None) -> pd.Series:
    """0/1 label per slide: from ``slide_labels`` when given, else "any region holds it"."""
    present = pd.Series(holds, index=groups).groupby(level=0, sort=True).any().astype(int)
    if slide_labels is None:
        return present
    unlabelled = [s for s in present.index if s not in slide_labels]
    if unlabelled:
        logger.info("ceiling: %d of %d slides have no slide label and are left out (e.g. %s)", len(unlabelled),
                    len(present), ", ".join(map(str, unlabelled[:5])))
    return pd.Series({s: int(slide_labels[s]) for s in present.index if s in slide_labels}, dtype=int)


def _skip_reason(y: np.ndarray, groups: np.ndarray, truth: pd.Series) -> str:
    n_pos = int(y.sum())
    if len(np.unique(groups)) < 2:
        return "regions from one slide only: slide-grouped CV needs >= 2 slides"
    if min(n_pos, len(y) - n_pos) < MIN_CLASS:
        return f"{n_pos} positive / {len(y) - n_pos} negative regions (need >= {MIN_CLASS} of each)"
    pos_slides = int(truth.sum())
    if min(pos_slides, len(truth) - pos_slides) < MIN_SLIDES:
        return f"{pos_slides} positive / {len(truth) - pos_slides} negative slides (need >= {MIN_SLIDES} of each)"
    return ""


def run_ceiling(features: Mapping[str, np.ndarray], holds: np.ndarray, properties: Sequence[str],
                groups: np.ndarray, *, slide_labels: Mapping[str, int] | None = None,
                probes: Sequence[str] = ("linear",), n_folds: int = DEFAULT_FOLDS, top_k: int = TOP_K,
                seed: int = 0) -> pd.DataFrame:
    """Region-supervised slide AUROC ceiling of every property from every feature set.

    Args:
        features: ``{feature set: (N, F)}``; rows with a NaN are left out of that set (their slide
            keeps its label and is scored from its other regions, or left out if it has none).
        holds: (N, P) bool region labels (the probe's training target).
        properties: The P property names.
        groups: (N,) slide id of each region.
        slide_labels: ``{slide_id: 0/1}`` used as the slide label of every property; slides missing
            from it are left out. Default: a slide is positive when any of its regions holds the property.
        probes: Keys of ``PROBES``.
        n_folds: GroupKFold folds over slides.
        top_k: Regions averaged for ``slide_auroc_top3``.
        seed: Seeds the estimators.

    Returns:
        One row per (feature set, property, probe), columns :data:`CEILING_COLUMNS`. AUROCs are NaN
        and ``note`` says why for skipped rows; ``n_slides``/``n_pos_slides`` count the slides scored.
    """
    for p in probes:
        PROBES.get(p)
    if slide_labels is not None:
        bad = {s: v for s, v in slide_labels.items() if v not in (0, 1)}
        if bad:
            raise MixmagValueError(f"slide labels must be 0 or 1; got {dict(list(bad.items())[:5])}")
    groups = np.asarray(groups).astype(str)
    rows = []
    for name, x in features.items():
        ok = np.isfinite(x).all(axis=1)
        for k, prop in enumerate(properties):
            truth = _slide_truth(holds[:, k], groups, slide_labels)
            truth = truth[truth.index.isin(np.unique(groups[ok]))]  # slides with a region in this set
            keep = ok & np.isin(groups, truth.index)
            y, g = holds[keep, k].astype(np.int64), groups[keep]
            reason = _skip_reason(y, g, truth)
            if reason:
                logger.info("ceiling %s / %s skipped: %s", name, prop, reason)
            for probe in probes:
                region = slide_max = slide_top = float("nan")
                if not reason:
                    scores, region = out_of_fold_scores(x[keep], y, g, probe=probe, n_folds=n_folds, seed=seed)
                    pooled = slide_scores(scores, g, top_k=top_k)
                    target = truth.loc[pooled.index].to_numpy()
                    slide_max = float(roc_auc_score(target, pooled["max"]))
                    slide_top = float(roc_auc_score(target, pooled["top"]))
                rows.append({"feature_set": name, "property": prop, "probe": probe, "region_auroc": region,
                             "slide_auroc_max": slide_max, "slide_auroc_top3": slide_top,
                             "n_slides": int(len(truth)), "n_pos_slides": int(truth.sum()), "note": reason})
    return pd.DataFrame(rows, columns=list(CEILING_COLUMNS))


def read_slide_labels(path: str | os.PathLike[str], column: str | None = None) -> dict[str, int]:
    """Binary slide labels from a ``mixmag train`` labels table (``patient_id, slide_id, <label>``).

    The positive class is the second in the training code's class order (numeric when every value
    is a number, else lexicographic), i.e. the class whose probability a binary MIL run reports.

    Args:
        path: CSV/TSV labels table.
        column: Label column; may be omitted when the table has exactly one.

    Returns:
        ``{slide_id: 0/1}``; slides with an empty label are left out (logged).

    Raises:
        ValueError: No or several label columns without ``column``, or not exactly two classes.
    """
    df = read_labels(path)
    columns = label_columns(df, [column] if column else None)
    if len(columns) != 1:
        raise MixmagValueError(f"{path}: several label columns {columns}; choose one (label column)")
    bags = build_bags(df, columns[0], available_slides=df["slide_id"], bag_level="slide")
    if len(bags.classes) != 2:
        raise MixmagValueError(f"{path}: label {columns[0]!r} has {len(bags.classes)} classes {bags.classes}; "
                               "the ceiling needs a binary slide label")
    logger.info("ceiling: slide label %r, positive class %r", columns[0], bags.classes[1])
    return {b.bag_id: int(b.label) for b in bags.bags}
