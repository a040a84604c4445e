"""Metrics of the regression and survival endpoints against references (scipy, brute force), and the
bootstrap and splits of every endpoint (docs/concepts/endpoints.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import balanced_accuracy_score

from mixmag.evaluate.bootstrap import bootstrap_ci, paired_bootstrap
from mixmag.evaluate.endpoints import (
    CINDEX_METRIC,
    ENDPOINT_METRICS,
    SPEARMAN_METRIC,
    primary_summary,
)
from mixmag.evaluate.metrics import balanced_accuracy
from mixmag.evaluate.regression import mae, pearson, quantile_bins, spearman, spearman_rows
from mixmag.evaluate.splits import make_splits
from mixmag.evaluate.survival import (
    concordance_index,
    concordance_rows,
    kaplan_meier,
    logrank_test,
    risk_groups,
)


def _survival(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    time = rng.exponential(10.0, n).round(0) + 1  # rounded: tied times, as in real follow-up
    event = (rng.random(n) < 0.7).astype(int)
    risk = np.round(rng.standard_normal(n), 1)  # rounded: tied risks
    return time, event, risk


def _brute_cindex(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    num = den = 0.0
    for i in range(len(time)):
        for j in range(len(time)):
            if i != j and event[i] and (time[i] < time[j] or (time[i] == time[j] and not event[j])):
                den += 1
                num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return num / den


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cindex_matches_the_pairwise_definition(seed: int) -> None:
    time, event, risk = _survival(70, seed)
    assert concordance_index(time, event, risk) == pytest.approx(_brute_cindex(time, event, risk), abs=1e-12)


def test_cindex_orientation_and_extremes() -> None:
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.ones(4)
    assert concordance_index(time, event, -time) == 1.0  # earliest event, highest risk
    assert concordance_index(time, event, time) == 0.0
    assert concordance_index(time, event, np.zeros(4)) == 0.5
    assert np.isnan(concordance_index(time, np.zeros(4), -time))  # no event: no comparable pair


def test_cindex_rows_equal_the_cindex_of_each_resample() -> None:
    time, event, risk = _survival(40, 3)
    idx = np.random.default_rng(0).integers(0, 40, size=(6, 40))
    expected = [concordance_index(time[i], event[i], risk[i]) for i in idx]
    assert np.allclose(concordance_rows(time, event, risk, idx), expected)


def test_kaplan_meier_matches_scipy() -> None:
    time, event, _ = _survival(80, 4)
    km = kaplan_meier(time, event)
    ref = stats.ecdf(stats.CensoredData(uncensored=time[event == 1], right=time[event == 0]))
    assert np.allclose(km.at(ref.sf.quantiles), ref.sf.probabilities)
    assert km.n == 80 and km.events == int(event.sum()) and km.survival[0] == 1.0
    assert np.all(np.diff(km.survival) <= 0)


def test_logrank_matches_scipy_for_two_groups_and_is_chi2_for_three() -> None:
    time, event, _ = _survival(90, 5)
    group = np.arange(90) % 2
    ours = logrank_test(time, event, group)
    ref = stats.logrank(stats.CensoredData(uncensored=time[(group == 0) & (event == 1)],
                                           right=time[(group == 0) & (event == 0)]),
                        stats.CensoredData(uncensored=time[(group == 1) & (event == 1)],
                                           right=time[(group == 1) & (event == 0)]))
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    three = logrank_test(time, event, np.arange(90) % 3)
    assert three.df == 2 and 0 <= three.p_value <= 1
    # groups that differ: the earliest events in one group
    separated = logrank_test(np.r_[np.arange(1, 31), np.arange(31, 61)], np.ones(60), np.r_[np.zeros(30), np.ones(30)])
    assert separated.p_value < 1e-6


def test_risk_groups_are_cut_within_each_fold() -> None:
    risk = np.r_[np.arange(10.0), 100 + np.arange(10.0)]  # fold 1 risks all above fold 0's
    folds = np.r_[np.zeros(10, int), np.ones(10, int)]
    groups = risk_groups(risk, folds, 2)
    assert groups.tolist() == [0] * 5 + [1] * 5 + [0] * 5 + [1] * 5
    assert np.bincount(risk_groups(risk, None, 3)).tolist() == [7, 7, 6]


def test_regression_metrics_match_scipy() -> None:
    rng = np.random.default_rng(0)
    y = rng.standard_normal(60)
    pred = np.round(y + rng.standard_normal(60), 1)
    assert spearman(y, pred) == pytest.approx(stats.spearmanr(y, pred)[0], abs=1e-12)
    assert pearson(y, pred) == pytest.approx(stats.pearsonr(y, pred)[0], abs=1e-12)
    assert mae(y, pred) == pytest.approx(np.mean(np.abs(y - pred)))
    idx = rng.integers(0, 60, size=(5, 60))
    assert np.allclose(spearman_rows(y, pred, idx), [stats.spearmanr(y[i], pred[i])[0] for i in idx])
    assert np.isnan(spearman(y, np.ones(60)))  # a constant prediction has no rank correlation
    assert np.bincount(quantile_bins(y, 4)).tolist() == [15, 15, 15, 15]


def test_balanced_accuracy_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 50)
    prob = rng.dirichlet(np.ones(3), 50)
    assert balanced_accuracy(y, prob) == pytest.approx(balanced_accuracy_score(y, prob.argmax(1)))


def test_bootstrap_ci_of_the_cindex_keeps_every_resamples_events() -> None:
    time, event, risk = _survival(60, 6)
    truth = np.stack([time, event], 1)
    ci = bootstrap_ci(truth, risk, metric=CINDEX_METRIC, n_boot=200, seed=0)
    assert ci.lo <= ci.estimate <= ci.hi and ci.n_boot == 200
    assert ci.estimate == pytest.approx(concordance_index(time, event, risk))
    assert ENDPOINT_METRICS.get("survival").metric.strata(truth).tolist() == event.tolist()


def test_paired_bootstrap_detects_a_better_regression_model() -> None:
    rng = np.random.default_rng(2)
    y = rng.standard_normal(120)
    good, bad = y + 0.3 * rng.standard_normal(120), rng.standard_normal(120)
    folds = np.arange(120) % 3
    res = paired_bootstrap(y, bad, good, folds=folds, n_boot=300, seed=0, metric=SPEARMAN_METRIC)
    assert res.statistic == "mean_fold_spearman" and res.delta > 0.5 and res.p_value < 0.01 and res.lo > 0
    same = paired_bootstrap(y, good, good, folds=folds, n_boot=100, seed=0, metric=SPEARMAN_METRIC)
    assert same.delta == 0 and same.p_value == 1.0


def test_primary_summary_reads_every_endpoint() -> None:
    auroc = primary_summary({"mean_auroc": 0.8, "sd_auroc": 0.1, "pooled_auroc": 0.79, "ci_lo": 0.7, "ci_hi": 0.9})
    assert (auroc.endpoint, auroc.metric, auroc.label, auroc.mean) == ("classification", "auroc", "AUROC", 0.8)
    cindex = primary_summary({"endpoint": "survival", "mean_cindex": 0.7, "sd_cindex": None, "pooled_cindex": 0.68,
                              "ci_lo": None, "ci_hi": None})
    assert (cindex.metric, cindex.label, cindex.mean, np.isnan(cindex.sd)) == ("cindex", "C-index", 0.7, True)


@pytest.mark.parametrize("endpoint", ["regression", "survival"])
def test_splits_are_stratified_by_quantile_bin_or_event(endpoint: str) -> None:
    rng = np.random.default_rng(0)
    n = 60
    if endpoint == "regression":
        truth = rng.standard_normal(n)
    else:
        truth = np.stack([rng.exponential(10, n), np.r_[np.ones(12), np.zeros(n - 12)]], 1)
    strata = ENDPOINT_METRICS.get(endpoint).split_strata(truth, 4)
    patients = pd.Series(strata, index=[f"P{i:02d}" for i in range(n)])
    table = make_splits(patients, folds=3, seed=0, stratum=ENDPOINT_METRICS.get(endpoint).stratum)
    for fold in range(3):
        test = table[(table["fold"] == fold) & (table["role"] == "test")]["patient_id"]
        counts = np.bincount(patients.loc[test].to_numpy(), minlength=strata.max() + 1)
        expected = np.bincount(strata) / 3
        assert np.all(np.abs(counts - expected) <= 1), (fold, counts, expected)  # each stratum split evenly
