"""``mixmag predict`` from slide files: the new cohort is tiled and embedded like the training features.

A tiny study is trained on one generated cohort; a second cohort (another seed) is predicted from
its slide files and, separately, from features made with ``mixmag tile``/``mixmag embed`` with
the training settings: both routes must give the same scores.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mixmag.cli.app import build_app
from mixmag.errors import MixmagError
from mixmag.pipeline.predict import predict_cohort
from mixmag.synth.cohort import CohortInfo, make_synthetic_cohort


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict-study")
    cohort = make_synthetic_cohort(root / "cohort", n_slides=8, n_unlabeled=0, slide_px=(1792, 896), seed=3,
                                   progress=False)
    config = {
        "out": str(root / "run"),
        "slides": {"inputs": [str(cohort.out_dir / "slides")]},
        "tiling": {"thumbnail_px": 512},
        "embed": {"encoder": "tiny.d16", "random_weights": True, "batch_size": 16, "workers": 0},
        "region": {"preset": "tiny", "objectives": ["mem"], "steps": 2, "batch_size": 8, "checkpoint_every": 0,
                   "num_workers": 0},
        "mil": {"labels": str(cohort.labels_csv), "methods": ["abmil-20x", "mix-mem"], "epochs": 2, "patience": 2,
                "hidden_dim": 16, "attention_dim": 8, "region_preset": "tiny", "device": "cpu", "refit_all": True},
        "evaluate": {"folds": 2, "bootstrap": 10, "diagnostics": False},
        "report": {"heatmap_slides": 1, "top_k": 2},
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = CliRunner().invoke(build_app(), ["run", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return root / "run"


@pytest.fixture(scope="module")
def new_cohort(tmp_path_factory: pytest.TempPathFactory) -> CohortInfo:
    return make_synthetic_cohort(tmp_path_factory.mktemp("new") / "cohort", n_slides=4, n_unlabeled=0,
                                 slide_px=(1792, 896), seed=4, progress=False)


def test_slides_and_features_give_identical_scores(study: Path, new_cohort: CohortInfo,
                                                   tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    shutil.copytree(new_cohort.out_dir / "slides", slides)
    (slides / "broken.tiff").write_bytes(b"II*\x00" + bytes(range(256)) * 8)  # not a slide: recorded, skipped
    from_slides = predict_cohort(study, [slides], tmp_path / "a", labels=new_cohort.labels_csv, n_boot=10,
                                 progress=False)
    assert set(from_slides.predictions["method"]) == {"abmil-20x", "mix-mem"}
    assert set(from_slides.predictions["model"]) == {"final"}  # refit_all made one
    assert "broken" in set(from_slides.problems["slide_id"])
    assert len(from_slides.predictions) == 2 * 4
    assert (tmp_path / "a" / "features" / "tiny.d16").is_dir() and (tmp_path / "a" / "report.html").is_file()
    assert list((tmp_path / "a" / "heatmaps").glob("*_attention.png"))

    # the same slides through the stage commands with the training settings, then predicted as features
    runner = CliRunner()
    tiles, feats = tmp_path / "tiles", tmp_path / "features"
    res = runner.invoke(build_app(), ["tile", str(new_cohort.out_dir / "slides"), "--out", str(tiles),
                                      "--set", "tiling.thumbnail_px=512", "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(build_app(), ["embed", str(tiles), "--out", str(feats), "--encoder", "tiny.d16",
                                      "--random-weights", "--batch-size", "16", "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(build_app(), ["predict", str(study), str(feats), "--out", str(tmp_path / "b"),
                                      "--labels", str(new_cohort.labels_csv), "--bootstrap", "10", "--no-progress"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    from_features = pd.read_csv(tmp_path / "b" / "predictions.csv")
    a = from_slides.predictions.sort_values(["method", "bag_id"]).reset_index(drop=True)
    b = from_features.sort_values(["method", "bag_id"]).reset_index(drop=True)
    assert list(a["bag_id"]) == list(b["bag_id"])
    np.testing.assert_allclose(a["prob"].to_numpy(), b["prob"].to_numpy(), rtol=0, atol=1e-6)

    # unlabelled: every slide scored as its own patient, heatmaps drawn, no metrics
    unlabelled = predict_cohort(study, [feats], tmp_path / "c", methods=["mix-mem"], progress=False)
    assert unlabelled.metrics.empty and len(unlabelled.predictions) == 4
    assert (unlabelled.predictions["label"].fillna("") == "").all()
    assert list((tmp_path / "c" / "heatmaps").glob("label_mix-mem_*_attention.png"))


def test_features_of_another_region_geometry_are_refused(study: Path, new_cohort: CohortInfo,
                                                         tmp_path: Path) -> None:
    runner = CliRunner()
    tiles, feats = tmp_path / "tiles", tmp_path / "features"
    res = runner.invoke(build_app(), ["tile", str(new_cohort.out_dir / "slides"), "--out", str(tiles),
                                      "--region-um", "224", "--tile-px", "112", "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(build_app(), ["embed", str(tiles), "--out", str(feats), "--encoder", "tiny.d16",
                                      "--random-weights", "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    with pytest.raises(MixmagError, match="region geometry"):
        predict_cohort(study, [feats], tmp_path / "o", progress=False)
    res = runner.invoke(build_app(), ["predict", str(study), str(feats), "--out", str(tmp_path / "o2"),
                                      "--no-progress"])
    assert res.exit_code == 2 and "region geometry" in res.output and "Traceback" not in res.output
