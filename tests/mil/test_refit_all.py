"""``refit_all``: one deployment model per run on all bags, after cross-validation (``final/``),
resumable, outside the config hash; and the feature provenance each run records in config.json."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

import mixmag.mil.experiment as experiment
from mixmag.mil.artifacts import load_fold_model, predict_bag
from mixmag.mil.estimator import MILClassifier
from mixmag.mil.experiment import train_methods
from mixmag.synth.mil_features import SyntheticCohort

FAST = {"folds": 2, "epochs": 3, "patience": 2, "lr": 1e-3, "hidden_dim": 8, "attention_dim": 4, "bootstrap": 0,
        "region_preset": "tiny", "device": "cpu", "progress": False}


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def refit(small_cohort: SyntheticCohort, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("refit")
    train_methods(small_cohort.features_dir, small_cohort.labels_csv, out, methods=["abmil-20x", "mix-random"],
                  refit_all=True, **FAST)
    return out


def test_final_epochs_is_the_rounded_up_median() -> None:
    assert experiment._final_epochs([1, 2]) == 2  # median 1.5 -> 2
    assert experiment._final_epochs([3, 1, 2]) == 2
    assert experiment._final_epochs([1, 2, 3, 4]) == 3
    assert experiment._final_epochs([5, 5]) == 5


@pytest.mark.parametrize("method", ["abmil-20x", "mix-random"])
def test_final_model_on_all_bags_for_the_median_best_epoch(refit: Path, small_cohort: SyntheticCohort,
                                                           method: str) -> None:
    run = refit / "label" / method
    done = _json(run / "final" / "done.json")
    best = [_json(run / "folds" / f"fold_{k}" / "done.json")["best_epoch"] for k in (0, 1)]
    assert done["fold_best_epochs"] == best
    assert done["epochs"] == math.ceil(float(np.median(best)))  # best epochs count from 1
    assert done["n_train"] == len(small_cohort.labels) == 16
    assert done["seed"] == 0 + 2  # settings.seed + number of folds: a seed no fold used
    assert done["config_hash"] == _json(run / "config.json")["config_hash"]
    clf, _ = load_fold_model(run / "final" / "model.pt")
    # no validation bags: the last of `epochs` epochs is kept
    assert clf.best_epoch_ == done["epochs"] and clf.epochs == done["epochs"]
    slide = small_cohort.labels["slide_id"].iloc[0]
    expl = predict_bag(run / "final" / "model.pt", small_cohort.features_dir / f"{slide}.h5", device="cpu")
    assert expl.prob.sum() == pytest.approx(1.0, abs=1e-5)


def test_a_second_call_does_not_retrain(refit: Path, small_cohort: SyntheticCohort,
                                        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    final = refit / "label" / "abmil-20x" / "final"
    stamps = [(final / n).stat().st_mtime_ns for n in ("model.pt", "done.json")]
    fits: list[int] = []
    real_fit = MILClassifier.fit
    monkeypatch.setattr(MILClassifier, "fit", lambda self, *a, **k: fits.append(1) or real_fit(self, *a, **k))
    with caplog.at_level(logging.INFO, logger="mixmag"):
        train_methods(small_cohort.features_dir, small_cohort.labels_csv, refit, methods=["abmil-20x"],
                      refit_all=True, **FAST)
    assert fits == [] and "final model: already done" in caplog.text
    assert [(final / n).stat().st_mtime_ns for n in ("model.pt", "done.json")] == stamps


def test_refit_all_is_outside_the_config_hash_and_overwrite_removes_final(small_cohort: SyntheticCohort,
                                                                          tmp_path: Path) -> None:
    run = tmp_path / "label" / "abmil-20x"
    train_methods(small_cohort.features_dir, small_cohort.labels_csv, tmp_path, methods=["abmil-20x"], **FAST)
    assert not (run / "final").exists()
    config_hash = _json(run / "config.json")["config_hash"]
    fold_stamp = (run / "folds" / "fold_0" / "done.json").stat().st_mtime_ns
    train_methods(small_cohort.features_dir, small_cohort.labels_csv, tmp_path, methods=["abmil-20x"],
                  refit_all=True, **FAST)
    assert _json(run / "config.json")["config_hash"] == config_hash
    assert (run / "folds" / "fold_0" / "done.json").stat().st_mtime_ns == fold_stamp  # folds resumed
    assert (run / "final" / "model.pt").is_file() and (run / "final" / "done.json").is_file()
    # other settings, replaced: the old final model goes with the old folds
    train_methods(small_cohort.features_dir, small_cohort.labels_csv, tmp_path, methods=["abmil-20x"],
                  overwrite=True, **{**FAST, "epochs": 2})
    assert not (run / "final").exists()


def test_config_records_the_feature_provenance(refit: Path) -> None:
    config = _json(refit / "label" / "abmil-20x" / "config.json")
    attrs = config["feature_attrs"]
    assert attrs["encoder"] == "synthetic.rare" and attrs["weights_hash"] == "synthetic"
    assert attrs["embed_dim"] == 8 and attrs["mpp_level0"] == pytest.approx(0.25)
    assert set(attrs) <= {"encoder", "embed_dim", "pooling", "weights_source", "weights_hash", "precision",
                          "transform", "encoder_native_mpp", "region_spec", "tissue_params", "resample", "reader",
                          "mpp_level0"}
    assert "region_spec" in attrs and "weights_source" not in attrs  # only the attrs the files have
