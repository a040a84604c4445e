"""The single-tile ceiling: tile labels follow the boxes, a planted tile property is found, and an
absent one stays at chance."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from mixmag.diagnose.api import run_diagnostics
from mixmag.diagnose.labels import label_table_from_frame, read_label_table
from mixmag.diagnose.tiles import (
    _children,
    _tile_labels,
    collect_tile_data,
    run_tile_ceiling,
    single_tile_feature_set,
)
from mixmag.geometry import RegionSpec
from mixmag.io.regions import RegionIndex


def _index(mpp0: float = 0.25) -> RegionIndex:
    spec = RegionSpec()
    side = int(round(spec.region_size_level0(mpp0)))
    coords = np.array([[0, 0], [side, 0]])
    valid = np.ones((2, spec.n_tokens), bool)
    return RegionIndex(coords=coords, tile_valid=valid, tissue_fraction=valid.astype(np.float32), spec=spec,
                       mpp_level0=mpp0, attrs={"slide_id": "S", "level0_width": 2 * side, "level0_height": side})


def test_tile_labels_follow_the_boxes() -> None:
    index = _index()
    spec = index.spec
    tile20 = index.region_size_level0 / 4  # a 20x tile is a quarter of the region side
    # one box exactly over the top-left 20x tile of the second region
    x0 = index.coords[1, 0]
    table = label_table_from_frame(pd.DataFrame([{"slide_id": "S", "x0": x0, "y0": 0, "x1": x0 + tile20,
                                                  "y1": tile20, "lesion": 1}]))
    layout = spec.layout()
    fine = np.flatnonzero(np.isclose(layout.mpps, 0.5))
    mid = np.flatnonzero(np.isclose(layout.mpps, 1.0))
    holds = _tile_labels(table, index, "S", fine, 0.5)
    assert holds is not None and holds.shape == (2, 16, 1)
    assert holds[..., 0].sum() == 1 and holds[1, 0, 0]  # region 1, token (row 0, col 0)
    assert not _tile_labels(table, index, "S", mid, 0.5).any()  # covers a quarter of a 10x tile
    assert _tile_labels(table, index, "S", mid, 0.25)[1, 0, 0]
    assert _tile_labels(table, index, "OTHER", fine, 0.5) is None


def _row(df: pd.DataFrame, feature_set: str, prop: str) -> pd.Series:
    row = df[(df["feature_set"] == feature_set) & (df["property"] == prop)]
    assert len(row) == 1
    return row.iloc[0]


def test_single_tile_ceiling_finds_the_planted_tiles(cohort: Any) -> None:
    table = read_label_table(cohort.boxes_csv)
    slide_labels = dict(pd.read_csv(cohort.slide_labels_csv)[["slide_id", "label"]].itertuples(index=False))
    df = run_tile_ceiling(cohort.features_dir, table, mpps=[1.0, 0.5], slide_labels=slide_labels)
    assert set(df["feature_set"]) == {single_tile_feature_set(1.0), single_tile_feature_set(0.5),
                                      single_tile_feature_set(1.0, 0.5)} \
        == {"single-tiles-10x", "single-tiles-20x", "single-tiles-10x+20x"}
    ring20 = _row(df, "single-tiles-20x", "ring")
    assert ring20["region_auroc"] > 0.8 and ring20["slide_auroc_top3"] > 0.85  # planted on 20x tokens
    assert _row(df, "single-tiles-20x", "atypical")["region_auroc"] < 0.65  # planted on the 5x token only
    assert _row(df, "single-tiles-10x", "ring")["region_auroc"] < 0.65  # nothing on the 10x tokens
    assert _row(df, "single-tiles-10x+20x", "ring")["region_auroc"] > 0.8  # ... but on their 20x children


def test_children_are_the_finest_tiles_inside_a_tile() -> None:
    spec = RegionSpec()
    layout = spec.layout()
    kids = _children(spec, 1.0)
    assert len(kids) == 4 and all(len(k) == 4 for k in kids.values())
    top_left = min(kids, key=lambda t: tuple(layout.grid_rc[t]))
    assert {tuple(layout.grid_rc[k]) for k in kids[top_left]} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert np.isclose(layout.mpps[kids[top_left]], 0.5).all()
    assert len(_children(spec, 2.0)[0]) == 16


def test_subsample_is_one_rate_for_every_slide(cohort: Any) -> None:
    table = read_label_table(cohort.boxes_csv)
    x, holds, ids = collect_tile_data(cohort.features_dir, table, mpp=0.5, max_tiles=1000, seed=3)
    assert len(x) == len(holds) == len(ids) and 800 < len(x) < 1200
    per_slide = pd.Series(ids).value_counts()
    assert per_slide.min() > 0.6 * per_slide.max()  # never by label: negatives keep their tiles
    with pytest.raises(ValueError, match="no tiles at 0.3"):
        collect_tile_data(cohort.features_dir, table, mpp=0.3)


def test_run_diagnostics_adds_single_tile_rows(cohort: Any, tmp_path: Any) -> None:
    res = run_diagnostics(cohort.features_dir, out_dir=tmp_path / "d", region_labels=cohort.boxes_csv,
                          probes=("linear",), max_tiles=2000)
    assert res.ceiling is not None
    assert {"tiles-20x", "single-tiles-20x", "single-tiles-10x"} <= set(res.ceiling["feature_set"])
    assert (tmp_path / "d" / "ceiling.png").is_file()
    off = run_diagnostics(cohort.features_dir, out_dir=tmp_path / "e", region_labels=cohort.boxes_csv,
                          probes=("linear",), max_tiles=0)
    assert off.ceiling is not None and not off.ceiling["feature_set"].str.startswith("single-").any()
