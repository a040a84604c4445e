"""train_methods end to end on a small synthetic cohort: run-folder contents, identical splits,
resume, provenance, skipped methods, fold models that reproduce their predictions."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from mixmag.mil.artifacts import predict_bag, read_attention
from mixmag.mil.experiment import train_methods
from mixmag.synth.mil_features import SyntheticCohort

FAST = {"folds": 2, "epochs": 2, "patience": 2, "lr": 1e-3, "hidden_dim": 8, "attention_dim": 4, "bootstrap": 50,
        "region_preset": "tiny", "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def trained(small_cohort: SyntheticCohort, tmp_path_factory: pytest.TempPathFactory,
            tiny_checkpoint: Callable[..., Path]) -> tuple[Path, object, Path]:
    out = tmp_path_factory.mktemp("run")
    ckpt = tiny_checkpoint(out.parent / f"{out.name}_mem", tile_dim=8)
    summary = train_methods(small_cohort.features_dir, small_cohort.labels_csv, out,
                            methods=["abmil-20x", "mix-random", "mix-mem-cls", "mix-cmem"],
                            checkpoints={"mem": ckpt}, **FAST)
    return out, summary, ckpt


def test_summary_runs_and_skipped_methods(trained: tuple[Path, object, Path]) -> None:
    out, summary, _ = trained
    assert [(r.target, r.method) for r in summary.runs] == [("label", "abmil-20x"), ("label", "mix-random"),
                                                             ("label", "mix-mem-cls")]
    assert [(s.method, s.reason) for s in summary.skipped] == [("mix-cmem", "no cmem checkpoint given "
                                                                "(pass --cmem-checkpoint)")]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["skipped"][0]["method"] == "mix-cmem" and len(on_disk["runs"]) == 3


def test_run_folder_layout_and_metrics(trained: tuple[Path, object, Path], small_cohort: SyntheticCohort) -> None:
    out, _, _ = trained
    run = out / "label" / "abmil-20x"
    for name in ("config.json", "env.json", "splits.csv", "predictions.csv", "metrics.json", "roc.png",
                 "learning_curves.csv", "folds/fold_0/model.pt", "folds/fold_1/history.csv",
                 "folds/fold_0/learning_curve.png", "folds/fold_1/done.json"):
        assert (run / name).is_file(), name
    preds = pd.read_csv(run / "predictions.csv", dtype={"patient_id": str})
    assert list(preds.columns) == ["bag_id", "patient_id", "slide_ids", "fold", "label", "label_name", "prob"]
    assert sorted(preds["patient_id"]) == sorted(small_cohort.labels["patient_id"])  # each patient once
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["fold_auroc"]) == {"0", "1"} and metrics["n_bags"] == 16
    assert metrics["mean_auroc"] == pytest.approx(np.mean(list(metrics["fold_auroc"].values())))
    assert metrics["ci_lo"] <= metrics["pooled_auroc"] <= metrics["ci_hi"]
    config = json.loads((run / "config.json").read_text())
    assert config["method_spec"]["magnification"] == "20x" and config["labels"]["sha256"]


def test_identical_splits_for_every_method(trained: tuple[Path, object, Path]) -> None:
    out, _, _ = trained
    ref = (out / "label" / "splits.csv").read_text()
    for method in ("abmil-20x", "mix-random", "mix-mem-cls"):
        assert (out / "label" / method / "splits.csv").read_text() == ref
        folds = pd.read_csv(out / "label" / method / "predictions.csv", dtype={"patient_id": str})
        split = pd.read_csv(out / "label" / "splits.csv", dtype={"patient_id": str})
        test = split[split["role"] == "test"].set_index("patient_id")["fold"]
        assert (folds.set_index("patient_id")["fold"] == test.loc[folds["patient_id"]]).all()


def test_encoder_provenance(trained: tuple[Path, object, Path]) -> None:
    out, _, ckpt = trained
    cls_cfg = json.loads((out / "label" / "mix-mem-cls" / "config.json").read_text())
    assert cls_cfg["encoder"]["checkpoint"] == str(ckpt) and cls_cfg["encoder"]["checkpoint_hash"]
    rnd = json.loads((out / "label" / "mix-random" / "config.json").read_text())["encoder"]
    # fresh init, but with the architecture of the given (mem) checkpoint
    assert rnd["checkpoint"] is None and rnd["architecture"]["width"] == 32


def test_attention_files(trained: tuple[Path, object, Path], small_cohort: SyntheticCohort) -> None:
    out, _, _ = trained
    for method, mpps in (("abmil-20x", {0.5}), ("mix-random", {2.0, 1.0, 0.5})):
        files = sorted((out / "label" / method / "attention").glob("*.h5"))
        assert len(files) == 16
        att = read_attention(files[0])
        (slide, d), = att.items()
        assert d["attention"].sum() == pytest.approx(1.0, abs=1e-5)
        assert d["region_attention"].sum() == pytest.approx(1.0, abs=1e-5)
        assert d["coords"].shape == (len(d["region_attention"]), 2)
        assert set(np.round(d["instance_mpp"], 3)) == mpps
        with h5py.File(files[0]) as f:
            assert f.attrs["method"] == method
    cls = read_attention(next((out / "label" / "mix-mem-cls" / "attention").glob("*.h5")))
    d = next(iter(cls.values()))
    assert (d["instance_token"] == -1).all() and np.isnan(d["instance_mpp"]).all()


def test_fold_model_reproduces_its_out_of_fold_prediction(trained: tuple[Path, object, Path],
                                                          small_cohort: SyntheticCohort) -> None:
    out, _, _ = trained
    for method in ("abmil-20x", "mix-mem-cls"):
        preds = pd.read_csv(out / "label" / method / "predictions.csv", dtype={"slide_ids": str})
        row = preds.iloc[0]
        model = out / "label" / method / "folds" / f"fold_{row['fold']}" / "model.pt"
        expl = predict_bag(model, small_cohort.features_dir / f"{row['slide_ids']}.h5", device="cpu")
        assert expl.prob[1] == pytest.approx(row["prob"], abs=1e-5)
        assert expl.slides[0].attention.sum() == pytest.approx(1.0, abs=1e-5)


def test_resume_skips_finished_folds_and_refuses_other_settings(trained: tuple[Path, object, Path],
                                                                small_cohort: SyntheticCohort,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    out, _, _ = trained
    done = out / "label" / "abmil-20x" / "folds" / "fold_0" / "done.json"
    stamp = done.stat().st_mtime_ns
    before = (out / "label" / "abmil-20x" / "predictions.csv").read_text()
    with caplog.at_level(logging.INFO, logger="mixmag"):
        train_methods(small_cohort.features_dir, small_cohort.labels_csv, out, methods=["abmil-20x"], **FAST)
    assert "already done" in caplog.text and done.stat().st_mtime_ns == stamp
    assert (out / "label" / "abmil-20x" / "predictions.csv").read_text() == before
    with pytest.raises(ValueError, match="other settings"):
        train_methods(small_cohort.features_dir, small_cohort.labels_csv, out, methods=["abmil-20x"],
                      **{**FAST, "epochs": 3})


def test_reused_split_file_gives_the_same_folds(trained: tuple[Path, object, Path], small_cohort: SyntheticCohort,
                                                tmp_path: Path) -> None:
    out, _, _ = trained
    split_file = out / "label" / "splits.csv"
    train_methods(small_cohort.features_dir, small_cohort.labels_csv, tmp_path, methods=["abmil-5x"],
                  splits=split_file, **{**FAST, "seed": 123})
    assert (tmp_path / "label" / "splits.csv").read_text() == split_file.read_text()


def test_bad_inputs_fail_before_training(small_cohort: SyntheticCohort, tmp_path: Path) -> None:
    # an unknown method is a bad setting (the settings model checks it, with close matches)
    with pytest.raises(ValueError, match="Did you mean: abmil-20x"):
        train_methods(small_cohort.features_dir, small_cohort.labels_csv, tmp_path, methods=["abmil-20"], **FAST)
    labels = small_cohort.labels.copy()
    labels.loc[len(labels)] = ["P999", "GHOST", 1]
    labels.to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(ValueError, match="GHOST"):
        train_methods(small_cohort.features_dir, tmp_path / "labels.csv", tmp_path / "o", methods=["abmil-5x"], **FAST)
    summary = train_methods(small_cohort.features_dir, tmp_path / "labels.csv", tmp_path / "o", methods=["abmil-5x"],
                            allow_missing_slides=True, **FAST)
    assert summary.runs[0].n_bags == 16
    excluded = pd.read_csv(tmp_path / "o" / "label" / "excluded.csv")
    assert excluded.to_dict("records") == [{"target": "label", "patient_id": "P999", "slide_id": "GHOST",
                                            "reason": "no feature file"}]


def test_rare_class_reduces_folds_with_a_logged_warning(small_cohort: SyntheticCohort, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    labels = small_cohort.labels.copy()
    labels["label"] = 0
    labels.loc[:2, "label"] = 1  # three positive patients, five folds requested
    labels.to_csv(tmp_path / "labels.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="mixmag"):
        train_methods(small_cohort.features_dir, tmp_path / "labels.csv", tmp_path / "o", methods=["abmil-5x"],
                      **{**FAST, "folds": 5})
    assert "using 3 folds" in caplog.text
    metrics = json.loads((tmp_path / "o" / "label" / "abmil-5x" / "metrics.json").read_text())
    assert len(metrics["fold_auroc"]) == 3


@pytest.fixture(scope="module")
def two_slide_cohort(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCohort:
    from mixmag.synth.mil_features import write_synthetic_cohort

    return write_synthetic_cohort(tmp_path_factory.mktemp("two"), task="rare", n_patients=12, slides_per_patient=2,
                                  regions=(2, 3), tile_dim=8, seed=1)


def test_patient_bags_pool_slides_and_slide_bags_keep_patients_together(two_slide_cohort: SyntheticCohort,
                                                                         tmp_path: Path) -> None:
    c = two_slide_cohort
    train_methods(c.features_dir, c.labels_csv, tmp_path / "p", methods=["abmil-20x"], **FAST)
    preds = pd.read_csv(tmp_path / "p" / "label" / "abmil-20x" / "predictions.csv", dtype={"patient_id": str})
    assert len(preds) == 12 and preds["slide_ids"].str.count(";").eq(1).all()
    att = read_attention(tmp_path / "p" / "label" / "abmil-20x" / "attention" / f"{preds['bag_id'][0]}.h5")
    assert len(att) == 2 and sum(d["attention"].sum() for d in att.values()) == pytest.approx(1.0, abs=1e-5)
    train_methods(c.features_dir, c.labels_csv, tmp_path / "s", methods=["abmil-20x"], bag_level="slide", **FAST)
    slides = pd.read_csv(tmp_path / "s" / "label" / "abmil-20x" / "predictions.csv", dtype={"patient_id": str})
    assert len(slides) == 24
    assert (slides.groupby("patient_id")["fold"].nunique() == 1).all(), "a patient's slides share their test fold"


def test_multiclass_target(small_cohort: SyntheticCohort, tmp_path: Path) -> None:
    labels = small_cohort.labels.copy()
    labels["grade"] = ["G1", "G2", "G3", "G2"] * 4
    labels.drop(columns="label").to_csv(tmp_path / "labels.csv", index=False)
    train_methods(small_cohort.features_dir, tmp_path / "labels.csv", tmp_path / "o", methods=["abmil-10x"], **FAST)
    run = tmp_path / "o" / "grade" / "abmil-10x"
    preds = pd.read_csv(run / "predictions.csv")
    assert {"prob_0", "prob_1", "prob_2"} <= set(preds.columns) and "prob" not in preds.columns
    np.testing.assert_allclose(preds[["prob_0", "prob_1", "prob_2"]].sum(axis=1), 1, rtol=1e-5)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == ["G1", "G2", "G3"] and 0 <= metrics["pooled_auroc"] <= 1


def test_the_first_trained_fold_times_the_methods_other_folds(small_cohort: SyntheticCohort, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import mixmag.mil.experiment as experiment

    monkeypatch.setattr(experiment, "MIN_LOGGED_FOLD_SECONDS", 0.0)  # log even this tiny run's estimate
    settings = {**FAST, "folds": 3}
    with caplog.at_level(logging.INFO, logger="mixmag"):
        train_methods(small_cohort.features_dir, small_cohort.labels_csv, tmp_path, methods=["abmil-20x"],
                      **settings)
    lines = [r.getMessage() for r in caplog.records if "more fold(s)" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("label/abmil-20x: 2 more fold(s): about ")
    assert "s/fold x 2 folds) (early stopping can end folds sooner" in lines[0]
    assert [r for r in caplog.records if "fold 0: best epoch" in r.getMessage()][0].getMessage().endswith(" s")
    # resumed with one fold left: that fold is the first trained, nothing is left to estimate
    import shutil

    shutil.rmtree(tmp_path / "label" / "abmil-20x" / "folds" / "fold_2")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mixmag"):
        train_methods(small_cohort.features_dir, small_cohort.labels_csv, tmp_path, methods=["abmil-20x"],
                      **settings)
    assert not [r for r in caplog.records if "more fold(s)" in r.getMessage()]
    assert "fold 2: best epoch" in caplog.text
