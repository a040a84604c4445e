"""make_synthetic_cohort / `mixmag synth`: files, labels, ground truth, determinism, resume, readers."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mixmag.cli.app import build_app
from mixmag.synth import make_synthetic_cohort
from mixmag.synth.cohort import _jobs, _params

SMALL = (1792, 896)  # 2 full regions: the smallest slide the generator accepts


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith("manifest")}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    out = tmp_path_factory.mktemp("cohort")
    return make_synthetic_cohort(out, n_slides=4, n_unlabeled=1, seed=3, slide_px=SMALL,
                                 slides_per_patient=(1, 2), progress=False)


def test_files_labels_and_ground_truth(cohort) -> None:
    out = cohort.out_dir
    assert sorted(p.name for p in (out / "slides").glob("*.tiff")) == [f"slide_{i:04d}.tiff" for i in range(4)]
    assert [p.name for p in (out / "unlabeled").glob("*.tiff")] == ["unlabeled_0000.tiff"]
    with open(cohort.labels_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["patient_id", "slide_id", "label"]
    assert [r["slide_id"] for r in rows] == [s.slide_id for s in cohort.slides]
    by_patient: dict[str, set[str]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], set()).add(r["label"])
    assert all(len(v) == 1 for v in by_patient.values())  # a patient's slides share its label
    doc = json.loads(cohort.cohort_json.read_text())
    assert doc["params"]["seed"] == 3 and doc["region_grid"]["region_px_level0"] == 896
    for entry in doc["slides"] + doc["unlabeled"]:
        assert (out / entry["path"]).is_file()
        informative = [r for r in entry["regions"] if r["architecture"] == "ring" and r["nuclei"] == "atypical"]
        assert entry["label"] == int(bool(informative))
        assert entry["n_ring"] == entry["n_atypical"]


def test_prevalence_sets_number_of_positive_patients(tmp_path: Path) -> None:
    for prevalence, n_pos in ((0.5, 20), (0.3, 12), (0.0, 0), (1.0, 40)):
        params = _params(n_slides=40, prevalence=prevalence, difficulty=0.5, seed=0, slide_px=SMALL, mpp=0.5,
                         slides_per_patient=1, n_unlabeled=0, n_levels=3, region_um=448.0, jpeg_quality=90)
        labeled, _ = _jobs(tmp_path, params)
        assert sum(j.label for j in labeled) == n_pos


def test_readable_by_openslide_and_tiffslide_at_exact_mpp(cohort) -> None:
    import openslide
    import tiffslide

    path = cohort.slides[0].path
    with openslide.OpenSlide(str(path)) as s:
        assert s.dimensions == SMALL
        assert s.level_count == 2  # the third level would be smaller than one 256-px tile
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.5)
    with tiffslide.TiffSlide(str(path)) as t:
        assert float(t.properties["tiffslide.mpp-x"]) == pytest.approx(0.5)
        assert t.level_downsamples[:2] == (1.0, 2.0)
        region = np.asarray(t.read_region((0, 0), 0, (896, 896)).convert("RGB"))
        assert region.std() > 10  # real content, not a blank page


def test_same_seed_gives_identical_files_other_seed_differs(cohort, tmp_path: Path) -> None:
    # painted by two worker processes this time: the files must not depend on who painted them
    again = make_synthetic_cohort(tmp_path / "again", n_slides=4, n_unlabeled=1, seed=3, slide_px=SMALL,
                                  slides_per_patient=(1, 2), progress=False, workers=2)
    assert _digest(again.out_dir) == _digest(cohort.out_dir)
    other = make_synthetic_cohort(tmp_path / "other", n_slides=1, seed=4, slide_px=SMALL, progress=False)
    assert _digest(other.out_dir)["slides/slide_0000.tiff"] != _digest(cohort.out_dir)["slides/slide_0000.tiff"]


def test_reuse_resume_and_parameter_guard(tmp_path: Path) -> None:
    out = tmp_path / "c"
    first = make_synthetic_cohort(out, n_slides=2, seed=1, slide_px=SMALL, progress=False)
    assert not first.reused
    before = _digest(out)
    assert make_synthetic_cohort(out, n_slides=2, seed=1, slide_px=SMALL, progress=False).reused
    first.slides[1].path.unlink()  # as if the run died while writing this slide
    resumed = make_synthetic_cohort(out, n_slides=2, seed=1, slide_px=SMALL, progress=False)
    assert not resumed.reused and _digest(out) == before
    with pytest.raises(ValueError, match="other parameters"):
        make_synthetic_cohort(out, n_slides=3, seed=1, slide_px=SMALL, progress=False)
    smaller = make_synthetic_cohort(out, n_slides=1, seed=1, slide_px=SMALL, progress=False, overwrite=True)
    assert [p.name for p in (out / "slides").glob("*.tiff")] == ["slide_0000.tiff"]  # stale slide removed
    assert len(smaller.slides) == 1


def test_cli_synth(tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["synth", str(tmp_path / "s"), "-n", "2", "--size", "1792x896",
                                              "--seed", "5", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 slides" in result.output
    assert (tmp_path / "s" / "labels.csv").is_file()
    bad = CliRunner().invoke(build_app(), ["synth", str(tmp_path / "t"), "--size", "big"])
    assert bad.exit_code == 2 and "WIDTHxHEIGHT" in bad.output
