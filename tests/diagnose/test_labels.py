"""Region labels: box coverage is exact, both CSV layouts are recognised, bad files fail clearly."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mixmag.diagnose.labels import (
    box_coverage,
    label_regions,
    label_table_from_frame,
    read_label_table,
)
from mixmag.geometry import RegionSpec
from mixmag.io.features import FeatureFile
from mixmag.io.regions import RegionIndex


def _index(coords: list[tuple[int, int]], mpp: float = 0.25, slide_id: str = "a") -> RegionIndex:
    n = len(coords)
    return RegionIndex(coords=np.array(coords), tile_valid=np.ones((n, 21), bool), tissue_fraction=np.ones((n, 21)),
                       spec=RegionSpec(), mpp_level0=mpp, attrs={"slide_id": slide_id})


def test_box_coverage_is_exact_on_hand_made_boxes() -> None:
    side = 1792.0  # 448 µm at 0.25 µm/px
    coords = np.array([[0, 0], [1792, 0], [0, 1792], [5000, 5000]])
    boxes = np.array([
        [0, 0, 896, 1792],          # left half of region 0
        [1792 + 448, 448, 1792 + 1344, 1344],  # centred quarter of region 1
        [-100, 1792 + 896, 5000, 1792 + 2000],  # lower half of region 2 (and beyond it)
    ])
    np.testing.assert_allclose(box_coverage(boxes, coords, side), [0.5, 0.25, 0.5, 0.0])
    # boxes that (against the contract) overlap still give at most full coverage
    assert box_coverage(np.array([[0, 0, 1792, 1792]] * 2), coords[:1], side)[0] == 1.0


def test_boxes_label_regions_with_min_overlap() -> None:
    table = label_table_from_frame(pd.DataFrame({
        "slide_id": ["a", "a", "b"], "x0": [0, 1792, 0], "y0": [0, 0, 0], "x1": [896, 3584, 10], "y1": [1792, 1792, 10],
        "ring": [1, 0, 1], "atypical": [0, 1, 0]}))
    assert table.kind == "boxes" and table.properties == ("ring", "atypical")
    labels = label_regions(table, _index([(0, 0), (1792, 0), (3584, 0)]))
    assert labels is not None and labels.labelled.all()
    np.testing.assert_allclose(labels.coverage, [[0.5, 0.0], [0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(labels.holds, [[True, False], [False, True], [False, False]])
    strict = label_regions(table, _index([(0, 0)]), min_overlap=0.75)
    assert strict is not None and not strict.holds.any()
    assert label_regions(table, _index([(0, 0)], slide_id="unknown")) is None


def test_region_rows_layout_aligns_with_feature_order(caplog: pytest.LogCaptureFixture) -> None:
    table = label_table_from_frame(pd.DataFrame({"slide_id": ["a", "a", "a"], "x": [3584, 0, 99], "y": [0, 0, 99],
                                                 "ring": [1, 0, 1]}))
    assert table.kind == "regions"
    with caplog.at_level(logging.WARNING, logger="mixmag"):
        labels = label_regions(table, _index([(0, 0), (1792, 0), (3584, 0)]))
    assert labels is not None
    np.testing.assert_array_equal(labels.labelled, [True, False, True])  # (1792, 0) has no row
    np.testing.assert_array_equal(labels.holds[:, 0], [False, False, True])
    assert "1 labelled regions match no region" in caplog.text  # (99, 99) is no region corner


def test_bad_tables_fail_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slide_id"):
        label_table_from_frame(pd.DataFrame({"x0": [0], "y0": [0], "x1": [1], "y1": [1], "ring": [1]}))
    with pytest.raises(ValueError, match="box columns"):
        label_table_from_frame(pd.DataFrame({"slide_id": ["a"], "ring": [1]}))
    with pytest.raises(ValueError, match="no 0/1 property column"):
        label_table_from_frame(pd.DataFrame({"slide_id": ["a"], "x": [0], "y": [0], "ring": [2], "note": ["x"]}))
    with pytest.raises(ValueError, match="ring do not"):
        label_table_from_frame(pd.DataFrame({"slide_id": ["a"], "x": [0], "y": [0], "ring": [2]}), properties=["ring"])
    with pytest.raises(ValueError, match="no property column rng"):
        label_table_from_frame(pd.DataFrame({"slide_id": ["a"], "x": [0], "y": [0], "ring": [1]}), properties=["rng"])
    with pytest.raises(ValueError, match="x1 <= x0"):
        label_table_from_frame(pd.DataFrame({"slide_id": ["a"], "x0": [5], "y0": [0], "x1": [1], "y1": [1],
                                             "ring": [1]}))
    with pytest.raises(ValueError, match="no 0/1 property column"):
        label_table_from_frame(pd.DataFrame({"slide_id": ["a"], "x": [0], "y": [0]}))
    with pytest.raises(FileNotFoundError):
        read_label_table(tmp_path / "missing.csv")
    (tmp_path / "l.tsv").write_text("slide_id\tx\ty\tring\na\t0\t0\t1\n")
    assert read_label_table(tmp_path / "l.tsv").properties == ("ring",)  # TSV sniffed


def test_cohort_boxes_reproduce_the_planted_truth(cohort: Any) -> None:
    table = read_label_table(cohort.boxes_csv)
    for sid, truth in cohort.truth.items():
        labels = label_regions(table, FeatureFile(cohort.features_dir / f"{sid}.h5").index)
        assert labels is not None
        for k, prop in enumerate(table.properties):
            np.testing.assert_array_equal(labels.holds[:, k], truth[prop])


def test_id_and_text_columns_are_not_properties(caplog: pytest.LogCaptureFixture) -> None:
    # the layout of `mixmag synth`'s region_labels.csv: ids and descriptive text beside the 0/1 columns
    df = pd.DataFrame({"slide_id": ["a", "a"], "patient_id": ["P1", "P1"], "x0": [0, 1792], "y0": [0, 0],
                       "x1": [1792, 3584], "y1": [1792, 1792], "architecture": ["ring", "solid"],
                       "nuclei": ["atypical", "normal"], "ring": [1, 0], "atypical": [1, 0], "informative": [1, 1]})
    with caplog.at_level(logging.INFO, logger="mixmag"):
        table = label_table_from_frame(df)
    assert table.properties == ("ring", "atypical", "informative")
    assert "patient_id, architecture, nuclei" in caplog.text
    assert label_table_from_frame(df, properties=["atypical"]).properties == ("atypical",)
