"""Cross-validated probes: can a property of a region be read linearly (or by a small MLP) from a feature set?

For every (feature set, property, probe) a :class:`GroupKFold` over slides (no slide is ever in
both the training and the test part) gives one AUROC per test fold, and their mean is reported.
Fold AUROCs are averaged rather than computed on pooled out-of-fold scores because a property
whose prevalence differs between slides would otherwise score *below* 0.5 from features that carry
no information (each fold's intercept follows its training prevalence, which is anti-correlated
with the test fold's); within a fold every score comes from one model. The
same probe is refit on labels permuted over the whole set - the *shuffled control* - whose AUROC
shows what chance looks like for this number of regions and slides (about 0.5, give or take the
sampling noise). A property is skipped, with the reason recorded, when it has fewer than
``MIN_CLASS`` positives or negatives or its regions come from fewer than two slides.

Probes (registry ``PROBES``; each builds a fresh sklearn estimator from the training labels):

* ``linear``: standardisation + L2 logistic regression, C = 0.1 (a fairly strong penalty: FM
  embeddings have hundreds of dimensions and the probe must not memorise a few thousand regions).
* ``mlp``: standardisation + one hidden layer of 64 ReLU units, early stopping on 10 % of the
  training part (when each class has at least 10 examples there; otherwise a fixed 100 epochs).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from mixmag.registry import Registry

logger = logging.getLogger(__name__)

MIN_CLASS = 5  # fewer positives (or negatives) than this and an AUROC is mostly noise
DEFAULT_FOLDS = 5
PROBE_COLUMNS = ("feature_set", "property", "probe", "auroc", "auroc_shuffled", "n_regions", "n_pos",
                 "n_slides", "note")

#: (training labels (n,) int 0/1, seed) -> unfitted sklearn classifier with predict_proba
ProbeFactory = Callable[[np.ndarray, int], Pipeline]
PROBES: Registry[ProbeFactory] = Registry("diagnostic probe")


@PROBES.register("linear", "standardised L2 logistic regression, C=0.1")
def linear_probe(y: np.ndarray, seed: int) -> Pipeline:
    """Standardisation + L2 logistic regression (C = 0.1)."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed))


@PROBES.register("mlp", "standardised MLP (64 hidden units), early stopping")
def mlp_probe(y: np.ndarray, seed: int) -> Pipeline:
    """Standardisation + MLP with one 64-unit hidden layer; early stopping when both classes allow it."""
    early = int(np.bincount(y, minlength=2).min()) >= 10  # the 10 % validation split needs both classes
    clf = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, early_stopping=early, validation_fraction=0.1,
                        n_iter_no_change=10, max_iter=200 if early else 100, random_state=seed)
    return make_pipeline(StandardScaler(), clf)


def fit_probe(factory: ProbeFactory, x: np.ndarray, y: np.ndarray, seed: int) -> Pipeline:
    """Fit one probe on (x, y); convergence warnings are silenced (a probe, not a tuned model)."""
    est = factory(y, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(x, y)
    return est


def _fold_aurocs(factory: ProbeFactory, x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_folds: int,
                 seed: int) -> list[float]:
    """Test-fold AUROCs under GroupKFold over ``groups`` (folds whose test part lacks a class are left out)."""
    aucs = []
    for fold, (train, test) in enumerate(GroupKFold(n_splits=n_folds).split(x, y, groups)):
        y_train, y_test = y[train], y[test]
        if y_test.min() == y_test.max():
            continue
        if y_train.min() == y_train.max():  # one class only in training: constant scores, AUROC 0.5
            aucs.append(0.5)
            continue
        est = fit_probe(factory, x[train], y_train, seed + fold)
        aucs.append(float(roc_auc_score(y_test, est.predict_proba(x[test])[:, 1])))
    return aucs


def probe_auroc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, probe: str = "linear",
                n_folds: int = DEFAULT_FOLDS, seed: int = 0) -> float:
    """Mean test-fold AUROC of one probe under slide-grouped cross-validation.

    Args:
        x: (N, F) features (finite).
        y: (N,) bool/0-1 labels with both classes.
        groups: (N,) slide of each row; at least two distinct values.
        probe: Key of ``PROBES``.
        n_folds: Folds (reduced to the number of slides when there are fewer).
        seed: Seeds the estimators.

    Returns:
        The mean over folds whose test slides hold both classes; NaN when no fold does.
    """
    y = np.asarray(y).astype(np.int64)
    folds = min(n_folds, len(np.unique(groups)))
    aucs = _fold_aurocs(PROBES.get(probe), x, y, np.asarray(groups), folds, seed)
    return float(np.mean(aucs)) if aucs else float("nan")


def _skip_reason(n_pos: int, n_neg: int, n_slides: int) -> str:
    if n_slides < 2:
        return "regions from one slide only: slide-grouped CV needs >= 2 slides"
    if min(n_pos, n_neg) < MIN_CLASS:
        return f"{n_pos} positives / {n_neg} negatives (need >= {MIN_CLASS} of each)"
    return ""


def run_probes(features: Mapping[str, np.ndarray], holds: np.ndarray, properties: Sequence[str],
               groups: np.ndarray, *, probes: Sequence[str] = ("linear", "mlp"), n_folds: int = DEFAULT_FOLDS,
               seed: int = 0) -> pd.DataFrame:
    """Probe every property from every feature set, with the shuffled control.

    Args:
        features: ``{feature set: (N, F)}``; rows with a NaN are left out of that set's probes.
        holds: (N, P) bool labels.
        properties: The P property names.
        groups: (N,) slide of each region.
        probes: Keys of ``PROBES``.
        n_folds: GroupKFold folds.
        seed: Seeds the label permutation and the estimators.

    Returns:
        One row per (feature set, property, probe) with columns :data:`PROBE_COLUMNS`; ``auroc``
        and ``auroc_shuffled`` are NaN and ``note`` says why when a property was skipped.
    """
    for p in probes:
        PROBES.get(p)
    groups = np.asarray(groups)
    rows = []
    for name, x in features.items():
        ok = np.isfinite(x).all(axis=1)
        for k, prop in enumerate(properties):
            y = holds[ok, k].astype(np.int64)
            g = groups[ok]
            n_pos, n_slides = int(y.sum()), len(np.unique(g))
            reason = _skip_reason(n_pos, len(y) - n_pos, n_slides)
            if reason:
                logger.info("probe %s / %s skipped: %s", name, prop, reason)
            y_shuffled = np.random.default_rng([seed, k, 0x5F]).permutation(y)
            for probe in probes:
                auc = shuffled = float("nan")
                note = reason
                if not reason:
                    auc = probe_auroc(x[ok], y, g, probe=probe, n_folds=n_folds, seed=seed)
                    shuffled = probe_auroc(x[ok], y_shuffled, g, probe=probe, n_folds=n_folds, seed=seed)
                    note = "no test fold holds both classes" if np.isnan(auc) else ""
                rows.append({"feature_set": name, "property": prop, "probe": probe, "auroc": auc,
                             "auroc_shuffled": shuffled, "n_regions": int(len(y)), "n_pos": n_pos,
                             "n_slides": n_slides, "note": note})
    return pd.DataFrame(rows, columns=list(PROBE_COLUMNS))
