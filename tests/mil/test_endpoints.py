"""The training side of the endpoints: Cox loss, risk batches, the estimator's targets and model files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mixmag.geometry import RegionSpec
from mixmag.mil.artifacts import load_fold_model, save_fold_model
from mixmag.mil.endpoints import ENDPOINTS, cox_loss, risk_batches
from mixmag.mil.estimator import MILClassifier
from mixmag.synth.mil_features import SyntheticCohort


def _cox_reference(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
    """Negative partial log-likelihood per event with Breslow ties, written out with loops."""
    total = 0.0
    for i in np.flatnonzero(event):
        at_risk = time >= time[i]
        total += risk[i] - np.log(np.exp(risk[at_risk]).sum())
    return -total / event.sum()


def test_cox_loss_matches_the_partial_likelihood_with_ties() -> None:
    rng = np.random.default_rng(0)
    time = rng.integers(1, 6, 20).astype(float)  # many ties
    event = (rng.random(20) < 0.6).astype(float)
    risk = rng.standard_normal(20)
    got = cox_loss(torch.tensor(risk), torch.tensor(time), torch.tensor(event))
    assert float(got) == pytest.approx(_cox_reference(risk, time, event), rel=1e-10)


def test_cox_loss_prefers_the_right_order_and_is_zero_without_events() -> None:
    time = torch.tensor([1.0, 2.0, 3.0, 4.0])
    event = torch.ones(4)
    assert cox_loss(-time, time, event) < cox_loss(time, time, event)  # earliest event, highest risk: lower loss
    risk = torch.zeros(4, requires_grad=True)
    loss = cox_loss(risk, time, torch.zeros(4))
    loss.backward()
    assert float(loss.detach()) == 0.0 and risk.grad is not None and not risk.grad.any()


def test_risk_batches_spread_the_events_and_keep_every_bag_once() -> None:
    event = np.r_[np.ones(10), np.zeros(40)]
    order = np.random.default_rng(0).permutation(50)
    steps = risk_batches(order, event, 16)
    assert len(steps) == 4 and sorted(np.concatenate(steps).tolist()) == list(range(50))
    assert [int(event[s].sum()) for s in steps] == [3, 3, 2, 2]
    for s in steps:  # inside a step the shuffled order is kept
        positions = [order.tolist().index(b) for b in s]
        assert positions == sorted(positions)


def test_head_widths_and_validation_criteria() -> None:
    assert [ENDPOINTS.get(k).n_outputs(3) for k in ("classification", "regression", "survival")] == [3, 1, 1]
    survival = ENDPOINTS.get("survival")
    assert survival.criterion(np.array([[1.0, 0.0], [2.0, 1.0]])) == "val_cindex"
    assert survival.criterion(np.array([[1.0, 0.0], [2.0, 0.0]])) == "last_epoch"
    assert ENDPOINTS.get("regression").criterion(np.array([1.0, 1.0])) == "val_loss"


def _bags(cohort: SyntheticCohort) -> tuple[Any, np.ndarray]:
    from mixmag.mil.data import BagDataset, FeatureStore
    from mixmag.mil.labels import build_bags, read_labels
    from mixmag.mil.targets import resolve_targets

    table = read_labels(cohort.labels_csv)
    store = FeatureStore(cohort.features_dir)
    assert not store.check(table["slide_id"])
    tb = build_bags(table, resolve_targets(table)[0], available_slides=store.paths)
    return BagDataset(store, tb.bags), tb.truth


@pytest.mark.parametrize("endpoint", ["regression", "survival"])
def test_estimator_fits_saves_and_reloads_other_endpoints(endpoint: str, tmp_path: Path) -> None:
    from mixmag.synth.mil_features import write_synthetic_cohort

    cohort = write_synthetic_cohort(tmp_path / "c", task="rare", endpoint=endpoint, n_patients=24, regions=(3, 4),
                                    tile_dim=8, seed=0)
    bags, truth = _bags(cohort)
    clf = MILClassifier("abmil-20x", endpoint=endpoint, epochs=2, hidden_dim=8, attention_dim=4, device="cpu",
                        survival_batch=8).fit(bags, truth)
    pred = clf.predict(bags)
    assert pred.shape == (24,) and np.isfinite(pred).all()
    if endpoint == "regression":  # predictions in the target's units, not standardised
        assert clf.target_scale_ == pytest.approx((truth.mean(), truth.std()))
        assert abs(pred.mean() - truth.mean()) < 3 * truth.std()
    with pytest.raises(ValueError, match="no class probabilities"):
        clf.predict_proba(bags)
    path = save_fold_model(tmp_path / "model.pt", clf, spec=RegionSpec())
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == 2 and payload["endpoint"]["key"] == endpoint
    loaded, _ = load_fold_model(path)
    assert loaded.endpoint == endpoint and np.allclose(loaded.predict(bags), pred, atol=1e-5)


def test_a_classification_model_file_is_written_as_before(small_cohort: SyntheticCohort, tmp_path: Path) -> None:
    bags, truth = _bags(small_cohort)
    clf = MILClassifier("abmil-20x", epochs=1, hidden_dim=8, attention_dim=4, device="cpu").fit(bags, truth)
    payload = torch.load(save_fold_model(tmp_path / "model.pt", clf, spec=RegionSpec()), weights_only=True)
    assert payload["format_version"] == 1 and "endpoint" not in payload
    assert not {"endpoint", "regression_loss", "survival_batch"} & set(payload["params"])
