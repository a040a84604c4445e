"""The realistic layout: about N regions per slide at a random offset, composition knobs, mpp mix,
and ``region_labels.csv`` matching what the generator drew."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixmag.synth import make_synthetic_cohort
from mixmag.synth.cohort import grid_for
from mixmag.synth.layout import ATYPICAL, NORMAL, Composition, knobs_from_difficulty, plan_slide
from mixmag.synth.painter import render_slide


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("realistic")
    return make_synthetic_cohort(out, n_slides=6, n_unlabeled=1, seed=5, regions=8, informative_fraction=0.25,
                                 mpp=[0.25, 0.5], n_levels=2, workers=1, progress=False)


def test_region_labels_match_what_was_drawn(cohort) -> None:
    labels = pd.read_csv(cohort.region_labels_csv)
    doc = json.loads(cohort.cohort_json.read_text())
    entries = {e["slide_id"]: e for e in doc["slides"] + doc["unlabeled"]}
    assert set(labels["slide_id"]) == set(entries)
    for slide_id, rows in labels.groupby("slide_id"):
        entry = entries[slide_id]
        cells = entry["regions"]
        assert len(rows) == len(cells) == 4  # regions=8 -> a 3x3 tiled grid around 2x2 cells
        for row, cell in zip(rows.itertuples(), cells, strict=True):
            assert (row.x0, row.y0) == (cell["x_px"], cell["y_px"])
            assert row.x1 - row.x0 == row.y1 - row.y0 == cell["size_px"] == round(448 / entry["mpp"])
            assert row.ring == int(cell["architecture"] == "ring")
            assert row.atypical == int(cell["nuclei"] == "atypical")
            assert row.informative == int(row.ring and row.atypical) == int(cell["informative"])
            assert row.x0 >= 0 and row.x1 <= entry["width_px"] and row.y1 <= entry["height_px"]
        assert entry["label"] == int(rows["informative"].any())
        assert rows["ring"].sum() == rows["atypical"].sum()  # no single property tells the label


def test_offsets_and_resolutions_vary_per_slide(cohort) -> None:
    doc = json.loads(cohort.cohort_json.read_text())
    origins = {tuple(e["origin_px"]) for e in doc["slides"]}
    assert len(origins) == len(doc["slides"])  # a random offset per slide
    assert {e["mpp"] for e in doc["slides"]} == {0.25, 0.5}
    for e in doc["slides"]:
        cell_px = 448 / e["mpp"]
        assert all(0 <= v < cell_px for v in e["origin_px"])
        assert e["width_px"] == e["height_px"] == round(3 * cell_px)


def test_grid_for_counts_tiled_regions() -> None:
    assert grid_for(8) == (2, 2) and grid_for(32) == (5, 5) and grid_for(128) == (10, 11)
    with pytest.raises(ValueError, match="regions >= 6"):
        grid_for(3)


def test_composition_sets_informative_share_and_matches_counts() -> None:
    knobs = knobs_from_difficulty(0.3)
    comp = Composition(informative_fraction=0.125)
    stats = {0: [], 1: []}
    for label in (0, 1):
        for s in np.random.SeedSequence(label).spawn(60):
            plan = plan_slide(np.random.default_rng(s), label=label, width_px=6 * 896, height_px=6 * 896, mpp=0.5,
                              region_um=448.0, knobs=knobs, composition=comp, origin_px=(300, 41))
            d = plan.to_dict()
            assert d["n_ring"] == d["n_atypical"]
            assert (d["n_informative"] >= 1) == bool(label)
            stats[label].append(d["n_ring"])
    # 25 cells, k ~ 0.125 * 25 * U(0.5, 1.5) informative, as many distractor pairs
    assert 2.0 < np.mean(stats[1]) < 10.0
    assert abs(np.mean(stats[0]) - np.mean(stats[1])) < 1.0  # same ring count distribution per label
    with pytest.raises(ValueError, match="informative_fraction"):
        Composition(informative_fraction=0.7)


def test_structures_sit_in_their_offset_cells() -> None:
    plan = plan_slide(np.random.default_rng(3), label=1, width_px=3 * 896, height_px=3 * 896, mpp=0.5,
                      region_um=448.0, knobs=knobs_from_difficulty(0.5), origin_px=(517, 203))
    assert len(plan.regions) == 4
    for r in plan.regions:
        assert (r.x_px - 517) % 896 == 0 and (r.y_px - 203) % 896 == 0
        x0, y0 = r.x_px * 0.5, r.y_px * 0.5
        n = r.nests_um
        assert np.all(n[:, 0] - n[:, 2] >= x0) and np.all(n[:, 0] + n[:, 2] <= x0 + 448)
        assert np.all(n[:, 1] - n[:, 2] >= y0) and np.all(n[:, 1] + n[:, 2] <= y0 + 448)


def test_atypia_survives_at_quarter_micron_per_pixel() -> None:
    """At 0.25 µm/px the grain is painted on 0.5-µm cells: visible after the 2x downsample to 20x."""
    plan_seed, paint_seed = np.random.SeedSequence(2).spawn(2)
    plan = plan_slide(np.random.default_rng(plan_seed), label=0, width_px=2 * 1792, height_px=1792, mpp=0.25,
                      region_um=448.0, knobs=knobs_from_difficulty(0.3))
    atyp, norm = copy.deepcopy(plan), copy.deepcopy(plan)
    for r in atyp.regions:
        r.nuclei = ATYPICAL
    for r in norm.regions:
        r.nuclei = NORMAL
    a, b = render_slide(atyp, paint_seed), render_slide(norm, paint_seed)
    mask = a.kind == 2

    def down(img: np.ndarray, f: int) -> np.ndarray:
        h, w = img.shape[0] // f * f, img.shape[1] // f * f
        return img[:h, :w].astype(np.float64).reshape(h // f, f, w // f, f, -1).mean(axis=(1, 3))

    m20 = down(mask[..., None].astype(float), 2)[..., 0] > 0.99
    diff20 = np.abs(down(a.rgb, 2) - down(b.rgb, 2)).mean(-1)[m20].mean()
    m5 = down(mask[..., None].astype(float), 8)[..., 0] > 0.99
    diff5 = np.abs(down(a.rgb, 8) - down(b.rgb, 8)).mean(-1)[m5].mean()
    assert diff20 > 15 and diff5 < 2.0


def test_realistic_cohort_validation_messages(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs `regions`"):
        make_synthetic_cohort(tmp_path / "a", n_slides=1, mpp=[0.25, 0.5], progress=False)
    with pytest.raises(ValueError, match="regions >= 6"):
        make_synthetic_cohort(tmp_path / "b", n_slides=1, regions=4, progress=False)
