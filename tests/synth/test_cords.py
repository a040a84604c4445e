"""The *cords* structure and multi-region cells: a 5x property that survives the region grid's offset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mixmag.cli.app import build_app
from mixmag.synth import make_synthetic_cohort
from mixmag.synth.cohort import grid_for
from mixmag.synth.layout import CORDS, SCATTERED, STRUCTURES, knobs_from_difficulty


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("cords")
    return make_synthetic_cohort(out, n_slides=4, n_unlabeled=0, seed=2, regions=15, structure="cords",
                                 cell_regions=2, informative_fraction=0.5, n_levels=2, progress=False)


def test_region_labels_name_the_cords_and_cover_two_by_two_regions(cohort) -> None:
    labels = pd.read_csv(cohort.region_labels_csv)
    assert "cords" in labels.columns and "ring" not in labels.columns
    doc = json.loads(cohort.cohort_json.read_text())
    assert "'cords' AND nuclei 'atypical'" in doc["label_rule"]
    entries = {e["slide_id"]: e for e in doc["slides"]}
    for slide_id, rows in labels.groupby("slide_id"):
        entry = entries[slide_id]
        assert len(rows) == 2  # regions=15 with 2x2-region cells: a 1 x 2 cell grid
        assert set(rows["x1"] - rows["x0"]) == set(rows["y1"] - rows["y0"]) == {2 * 896}
        assert set(rows["architecture"]) <= {CORDS, SCATTERED}
        assert all(rows["cords"] == (rows["architecture"] == CORDS).astype(int))
        assert entry["label"] == int(rows["informative"].any())
        assert rows["cords"].sum() == rows["atypical"].sum()  # no single property tells the label
        # one region of margin: the offset is random modulo the tiler's region period
        assert all(0 <= v < 896 for v in entry["origin_px"])
        assert (entry["width_px"], entry["height_px"]) == (5 * 896, 3 * 896)


def test_grid_for_multi_region_cells() -> None:
    assert grid_for(32, 2) == (2, 3) and grid_for(128, 2) == (5, 6)  # 5 x 7 and 11 x 13 regions
    assert grid_for(32, 1) == grid_for(32)
    with pytest.raises(ValueError, match="fewer than 2 structure cells of 2x2"):
        grid_for(8, 2)


def test_scattered_cells_reuse_the_runs_of_the_cords() -> None:
    """Flipping a cell between cords and scattered moves whole runs of nests, nothing else."""
    from mixmag.synth.layout import _plan_cords_unit

    for seed in range(4):
        knobs = knobs_from_difficulty(0.3)
        out = {}
        for arch in (CORDS, SCATTERED):
            _, _, lumen, nests = _plan_cords_unit(np.random.default_rng(seed), (0.0, 0.0), 896.0, arch, knobs)
            out[arch] = nests
            assert lumen[2] == 0.0
            assert np.all(nests[:, :2] - nests[:, 2:] >= 8.0) and np.all(nests[:, :2] + nests[:, 2:] <= 888.0)
        cords, scattered = out[CORDS], out[SCATTERED]
        assert len(cords) == len(scattered) > 60
        np.testing.assert_allclose(cords[:, 2], scattered[:, 2])  # same nests, same order
        step_c = np.hypot(*np.diff(cords[:, :2], axis=0).T)
        step_s = np.hypot(*np.diff(scattered[:, :2], axis=0).T)
        same = np.isclose(step_c, step_s, atol=1e-6)
        assert same.mean() > 0.55  # neighbours inside a run keep their distance (runs of 3-4)
        # in the cords every run continues its row: consecutive nests ~ one spacing apart
        assert np.median(step_c) < 50.0


def test_cords_rows_are_parallel_and_scattered_runs_are_not() -> None:
    """The 5x property: nests of a cords cell lie on parallel rows (one direction dominates)."""
    from mixmag.synth.layout import _plan_cords_unit

    def coherence(nests: np.ndarray) -> float:
        # orientation of each nest's nearest neighbour, doubled-angle resultant length (0 = isotropic)
        d = np.hypot(nests[:, None, 0] - nests[None, :, 0], nests[:, None, 1] - nests[None, :, 1])
        np.fill_diagonal(d, np.inf)
        j = d.argmin(axis=1)
        angle = np.arctan2(nests[j, 1] - nests[:, 1], nests[j, 0] - nests[:, 0])
        return float(np.abs(np.exp(2j * angle).mean()))

    knobs = knobs_from_difficulty(0.3)
    c = [coherence(_plan_cords_unit(np.random.default_rng(s), (0, 0), 896.0, CORDS, knobs)[3]) for s in range(6)]
    s = [coherence(_plan_cords_unit(np.random.default_rng(s), (0, 0), 896.0, SCATTERED, knobs)[3]) for s in range(6)]
    assert min(c) > 0.7 and max(s) < 0.5


def test_structure_validation(tmp_path: Path) -> None:
    assert set(STRUCTURES) == {"rosette", "cords"}
    with pytest.raises(ValueError, match="unknown structure 'tubes'"):
        make_synthetic_cohort(tmp_path / "a", n_slides=1, regions=8, structure="tubes", progress=False)
    with pytest.raises(ValueError, match="needs the realistic layout"):
        make_synthetic_cohort(tmp_path / "b", n_slides=1, structure="cords", progress=False)
    with pytest.raises(ValueError, match="cell_regions needs the realistic layout"):
        make_synthetic_cohort(tmp_path / "c", n_slides=1, cell_regions=2, progress=False)


def test_cli_synth_cords(tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["synth", str(tmp_path / "c"), "--n-slides", "2", "--regions", "15",
                                      "--structure", "cords", "--cell-regions", "2", "--levels", "1",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    params = json.loads((tmp_path / "c" / "cohort.json").read_text())["params"]
    assert (params["structure"], params["cell_regions"]) == ("cords", 2)
