"""AUROC, bootstrap CIs, paired comparisons and DeLong against sklearn and hand computation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mixmag.evaluate.bootstrap import bootstrap_auroc_ci, paired_bootstrap, stratified_indices
from mixmag.evaluate.delong import delong_test, placements
from mixmag.evaluate.metrics import auroc, auroc_rows, fold_aurocs, summarize_folds


def _binary(n: int = 60, seed: int = 0, strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = y * strength + rng.standard_normal(n)
    return y, np.round(1 / (1 + np.exp(-score)), 2)  # rounding creates ties on purpose


def test_auroc_matches_sklearn_binary_and_multiclass() -> None:
    y, p = _binary()
    assert auroc(y, p) == pytest.approx(roc_auc_score(y, p))
    rng = np.random.default_rng(1)
    y3 = rng.integers(0, 3, 90)
    logits = rng.standard_normal((90, 3)) + np.eye(3)[y3]
    p3 = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert auroc(y3, p3) == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr", average="macro"))


def test_auroc_single_class_raises_or_nan() -> None:
    with pytest.raises(ValueError, match="undefined"):
        auroc(np.ones(5, int), np.linspace(0, 1, 5))
    assert np.isnan(auroc(np.ones(5, int), np.linspace(0, 1, 5), on_single_class="nan"))


def test_auroc_rows_matches_sklearn_per_resample() -> None:
    y, p = _binary(40)
    idx = stratified_indices(y, 25, np.random.default_rng(3))
    expected = [roc_auc_score(y[row], p[row]) for row in idx]
    np.testing.assert_allclose(auroc_rows(y, p, idx), expected, rtol=1e-12)


def test_stratified_indices_keep_class_counts() -> None:
    y = np.array([0] * 7 + [1] * 3)
    idx = stratified_indices(y, 50, np.random.default_rng(0))
    assert idx.shape == (50, 10)
    assert (y[idx].sum(axis=1) == 3).all()


def test_bootstrap_ci_equals_percentiles_of_sklearn_aurocs() -> None:
    y, p = _binary(50, seed=4)
    ci = bootstrap_auroc_ci(y, p, n_boot=300, seed=11)
    idx = stratified_indices(y, 300, np.random.default_rng(11))  # the same resamples, by construction
    by_hand = np.quantile([roc_auc_score(y[r], p[r]) for r in idx], [0.025, 0.975])
    assert ci.estimate == pytest.approx(roc_auc_score(y, p))
    assert (ci.lo, ci.hi) == pytest.approx(tuple(by_hand))
    assert ci.lo < ci.estimate < ci.hi


def test_fold_aurocs_single_class_fold_is_nan_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    y = np.array([0, 1, 0, 1, 1, 1])
    p = np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.6])
    folds = np.array([0, 0, 0, 0, 1, 1])
    with caplog.at_level(logging.WARNING, logger="mixmag"):
        per_fold = fold_aurocs(y, p, folds)
    assert per_fold[0] == 1.0 and np.isnan(per_fold[1])
    assert "all one class" in caplog.text
    assert summarize_folds(per_fold) == (1.0, pytest.approx(np.nan, nan_ok=True))


def test_summarize_folds_mean_and_sample_sd() -> None:
    mean, sd = summarize_folds({0: 0.6, 1: 0.8, 2: 0.7})
    assert mean == pytest.approx(0.7) and sd == pytest.approx(np.std([0.6, 0.8, 0.7], ddof=1))


def test_paired_bootstrap_identical_methods_give_delta_zero_p_one() -> None:
    y, p = _binary()
    res = paired_bootstrap(y, p, p, n_boot=200, seed=0)
    assert res.delta == 0 and res.lo == 0 and res.hi == 0 and res.p_value == 1.0


def test_paired_bootstrap_detects_a_better_method_and_uses_fold_means() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 120)
    weak = y * 0.3 + rng.standard_normal(120)
    strong = y * 2.5 + rng.standard_normal(120)
    folds = np.arange(120) % 4
    res = paired_bootstrap(y, weak, strong, folds=folds, n_boot=500, seed=1)
    by_hand = np.mean([roc_auc_score(y[folds == f], strong[folds == f]) - roc_auc_score(y[folds == f], weak[folds == f])
                       for f in range(4)])
    assert res.statistic == "mean_fold_auroc"
    assert res.delta == pytest.approx(by_hand)
    assert res.lo > 0 and res.p_value < 0.01
    reverse = paired_bootstrap(y, strong, weak, folds=folds, n_boot=500, seed=1)
    assert reverse.delta == pytest.approx(-res.delta) and reverse.hi < 0


def test_delong_matches_naive_structural_components() -> None:
    y, a = _binary(40, seed=7, strength=0.8)
    b = np.round(a + np.random.default_rng(8).normal(0, 0.2, 40), 2)
    pos, neg = y == 1, y == 0

    def psi(s: np.ndarray) -> np.ndarray:  # (m, n) Mann-Whitney kernel, the O(mn) definition
        d = s[pos][:, None] - s[neg][None, :]
        return (d > 0) + 0.5 * (d == 0)

    for s in (a, b):
        v10, v01 = placements(y, s)
        np.testing.assert_allclose(v10, psi(s).mean(1))
        np.testing.assert_allclose(v01, psi(s).mean(0))
    ka, kb = psi(a), psi(b)
    s10 = np.cov(np.stack([ka.mean(1), kb.mean(1)]))
    s01 = np.cov(np.stack([ka.mean(0), kb.mean(0)]))
    var = (s10 / pos.sum() + s01 / neg.sum()) @ np.array([1, -1]) @ np.array([1, -1])
    res = delong_test(y, a, b)
    assert res.auc_a == pytest.approx(roc_auc_score(y, a)) and res.auc_b == pytest.approx(roc_auc_score(y, b))
    assert res.se == pytest.approx(np.sqrt(var))
    assert 0 < res.p_value < 1
    assert delong_test(y, a, a).p_value == 1.0
