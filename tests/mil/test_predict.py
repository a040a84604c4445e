"""``mixmag predict`` on feature folders: external AUROC direction, provenance checks, unlabelled and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixmag.errors import MixmagError
from mixmag.geometry import RegionSpec
from mixmag.mil.deploy import find_trained_runs
from mixmag.mil.experiment import train_methods
from mixmag.pipeline.predict import predict_cohort
from mixmag.synth.mil_features import SyntheticCohort, write_synthetic_cohort

TRAIN = {"methods": ["abmil-20x"], "epochs": 12, "patience": 12, "hidden_dim": 32, "attention_dim": 16, "lr": 1e-3,
         "device": "cpu", "folds": 2, "bootstrap": 0, "refit_all": True}


def _cohort(root: Path, seed: int, **kw: object) -> SyntheticCohort:
    return write_synthetic_cohort(root, task="rare", n_patients=kw.pop("n_patients", 24), regions=(3, 4),
                                  tile_dim=16, seed=seed, concept_seed=7, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    cohort = _cohort(root / "train", seed=0, n_patients=40)
    train_methods(cohort.features_dir, cohort.labels_csv, root / "mil", progress=False, **TRAIN)
    return root / "mil"


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCohort:
    return _cohort(tmp_path_factory.mktemp("external"), seed=1)


def test_external_cohort_of_the_same_biology_is_predicted(trained: Path, external: SyntheticCohort,
                                                          tmp_path: Path) -> None:
    result = predict_cohort(trained, [external.features_dir], tmp_path / "out", labels=external.labels_csv,
                            n_boot=50, progress=False)
    preds = result.predictions
    assert len(preds) == 24 and set(preds["model"]) == {"final"}
    assert {"prob", "prob_fold0", "prob_fold1", "prob_ensemble"} <= set(preds.columns)
    np.testing.assert_allclose(preds["prob_ensemble"], (preds["prob_fold0"] + preds["prob_fold1"]) / 2, rtol=1e-6)
    row = result.metrics.iloc[0]
    assert row["auroc"] > 0.8, row  # the planted rare tile transfers to the second "hospital"
    assert row["ci_lo"] <= row["auroc"] <= row["ci_hi"]
    out = tmp_path / "out"
    for name in ("predictions.csv", "metrics.csv", "metrics.json", "problems.csv", "report.html",
                 "label/abmil-20x/roc.png", "label/abmil-20x/calibration.png"):
        assert (out / name).is_file(), name
    assert "External validation" in (out / "report.html").read_text(encoding="utf-8")
    # labels flipped: the same scores now rank the other way
    flipped = pd.read_csv(external.labels_csv).assign(label=lambda d: 1 - d["label"])
    flipped.to_csv(tmp_path / "flipped.csv", index=False)
    again = predict_cohort(trained, [external.features_dir], tmp_path / "flip", labels=tmp_path / "flipped.csv",
                           n_boot=0, progress=False, write_report=False)
    assert again.metrics.iloc[0]["auroc"] == pytest.approx(1 - row["auroc"])
    pd.testing.assert_series_equal(again.predictions["prob"], preds["prob"])


def test_unlabelled_slides_get_scores_and_one_model_can_be_chosen(trained: Path, external: SyntheticCohort,
                                                                  tmp_path: Path) -> None:
    model = trained / "label" / "abmil-20x" / "folds" / "fold_1" / "model.pt"
    result = predict_cohort(model, [external.features_dir], tmp_path / "o", progress=False, write_report=False)
    preds = result.predictions
    assert len(preds) == 24 and result.metrics.empty
    assert set(preds["model"]) == {"ensemble"} and "prob_fold1" in preds and "prob_fold0" not in preds
    assert (preds["label"].fillna("") == "").all() and preds["prob"].between(0, 1).all()
    assert (preds["patient_id"] == preds["bag_id"]).all()  # no labels table: every slide its own patient


def test_other_encoder_or_geometry_is_one_clear_error(trained: Path, tmp_path: Path) -> None:
    other = _cohort(tmp_path / "enc", seed=2, n_patients=4, encoder="another-encoder")
    with pytest.raises(MixmagError, match="encoder: training 'synthetic.rare', new 'another-encoder'"):
        predict_cohort(trained, [other.features_dir], tmp_path / "o1", progress=False)
    coarse = _cohort(tmp_path / "geo", seed=2, n_patients=4, spec=RegionSpec(region_um=448, mpps=(1.0, 0.5)))
    with pytest.raises(MixmagError, match="region geometry"):
        predict_cohort(trained, [coarse.features_dir], tmp_path / "o2", progress=False)


def test_bad_rows_and_corrupt_files_are_recorded_and_the_rest_scored(trained: Path, external: SyntheticCohort,
                                                                     tmp_path: Path) -> None:
    features = tmp_path / "features"
    shutil.copytree(external.features_dir, features)
    broken = sorted(features.glob("*.h5"))[0]
    broken.write_bytes(broken.read_bytes()[:300])  # truncated copy
    labels = pd.read_csv(external.labels_csv)
    labels = pd.concat([labels, pd.DataFrame([{"patient_id": "PX", "slide_id": "not-embedded", "label": 1}])])
    labels.to_csv(tmp_path / "labels.csv", index=False)
    result = predict_cohort(trained, [features], tmp_path / "o", labels=tmp_path / "labels.csv", n_boot=0,
                            progress=False, write_report=False)
    problems = result.problems.set_index("slide_id")
    assert {broken.stem, "not-embedded"} <= set(problems.index)
    assert len(result.predictions) == 23 and broken.stem not in set(result.predictions["bag_id"])
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,slide_id,label\nP001,P001-S0,7\n", encoding="utf-8")
    with pytest.raises(MixmagError, match=r"label value\(s\) \['7'\] were not among the training classes"):
        predict_cohort(trained, [features], tmp_path / "o2", labels=bad, progress=False)


def test_run_discovery_filters_and_lists_what_exists(trained: Path) -> None:
    (run,) = find_trained_runs(trained)
    assert run.method == "abmil-20x" and run.final_model is not None and sorted(run.fold_models) == [0, 1]
    assert run.feature_attrs["encoder"] == "synthetic.rare"
    with pytest.raises(MixmagError, match="available: label/abmil-20x"):
        find_trained_runs(trained, methods=["mix-mem"])
    with pytest.raises(MixmagError, match="does not exist"):
        find_trained_runs(trained / "nothing")
