"""The region-supervised slide ceiling: high where the planted property is visible, chance elsewhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from mixmag.cli import app as app_module
from mixmag.diagnose.api import run_diagnostics
from mixmag.diagnose.ceiling import CEILING_COLUMNS, read_slide_labels, run_ceiling, slide_scores
from mixmag.diagnose.dataset import ProbeData, collect_probe_data
from mixmag.diagnose.labels import read_label_table
from mixmag.diagnose.probes import probe_auroc


@pytest.fixture(scope="module")
def data(cohort: Any) -> ProbeData:
    return collect_probe_data(cohort.features_dir, read_label_table(cohort.boxes_csv),
                              feature_sets=["tiles-5x", "tiles-20x"])


@pytest.fixture(scope="module")
def ceiling(data: ProbeData) -> pd.DataFrame:
    return run_ceiling(data.features, data.holds, data.properties, data.slide_ids, seed=0)


def _row(df: pd.DataFrame, feature_set: str, prop: str) -> pd.Series:
    row = df[(df["feature_set"] == feature_set) & (df["property"] == prop)]
    assert len(row) == 1
    return row.iloc[0]


def test_ceiling_is_high_where_the_property_is_visible_and_chance_elsewhere(ceiling: pd.DataFrame,
                                                                             data: ProbeData) -> None:
    assert list(ceiling.columns) == list(CEILING_COLUMNS)
    assert set(ceiling["probe"]) == {"linear"}
    ring20, ring5 = _row(ceiling, "tiles-20x", "ring"), _row(ceiling, "tiles-5x", "ring")
    assert ring20["slide_auroc_max"] > 0.9 and ring20["slide_auroc_top3"] > 0.9
    assert ring20["region_auroc"] > 0.9 and ring20["note"] == ""
    # 4 vs 4 slides: chance has a wide spread (sd ~0.2), the planted signal is far outside it
    assert abs(ring5["slide_auroc_max"] - 0.5) <= 0.25 and abs(ring5["slide_auroc_top3"] - 0.5) <= 0.25
    assert (ring20["n_slides"], ring20["n_pos_slides"]) == (8, 4)  # ring is planted on the odd slides only
    # the same fits as the probes: region_auroc is their number
    k = data.properties.index("ring")
    assert ring20["region_auroc"] == pytest.approx(
        probe_auroc(data.features["tiles-20x"], data.holds[:, k], data.slide_ids, probe="linear", seed=0))


def test_property_on_every_slide_is_skipped_with_a_note(ceiling: pd.DataFrame) -> None:
    row = _row(ceiling, "tiles-5x", "atypical")  # planted on every slide: no negative slide
    assert np.isnan(row[["region_auroc", "slide_auroc_max", "slide_auroc_top3"]].astype(float)).all()
    assert row["note"] == "8 positive / 0 negative slides (need >= 4 of each)"
    assert (row["n_slides"], row["n_pos_slides"]) == (8, 8)


def test_too_few_slides_or_regions_skip() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat([f"s{i}" for i in range(7)], 20)
    holds = np.zeros((140, 2), bool)
    holds[:60:2, 0] = True  # 3 positive slides
    holds[[0, 20, 40, 60], 1] = True  # 4 positive slides but 4 positive regions
    df = run_ceiling({"f": rng.standard_normal((140, 3))}, holds, ["three", "sparse"], groups)
    assert df.loc[0, "note"] == "3 positive / 4 negative slides (need >= 4 of each)"
    assert df.loc[1, "note"] == "4 positive / 136 negative regions (need >= 5 of each)"
    assert df["slide_auroc_max"].isna().all() and list(df["n_pos_slides"]) == [3, 4]


def test_uninformative_features_give_chance_not_below() -> None:
    # constant features: every fold model predicts its training prevalence. Pooled raw probabilities
    # would put the positive slides below the negative ones (AUROC 0.375 here); the common reference
    # across folds gives every region the same score, hence exactly 0.5
    rng = np.random.default_rng(0)
    groups = np.repeat([f"s{i:02d}" for i in range(12)], 30)
    holds = ((rng.random(360) < 0.4) & np.repeat(np.arange(12) % 2 == 1, 30))[:, None]
    df = run_ceiling({"const": np.zeros((360, 4))}, holds, ["p"], groups)
    assert df.loc[0, "slide_auroc_max"] == 0.5 and df.loc[0, "slide_auroc_top3"] == 0.5


def test_slide_scores_pool_the_best_regions() -> None:
    pooled = slide_scores(np.array([0.1, 0.9, 0.5, 0.7, 0.2, 0.3]), np.array(["b", "b", "b", "b", "a", "a"]))
    assert list(pooled.index) == ["a", "b"]
    np.testing.assert_allclose(pooled["max"], [0.3, 0.9])
    np.testing.assert_allclose(pooled["top"], [0.25, 0.7])  # a has 2 regions: the mean of both
    assert list(pooled["n_regions"]) == [2, 4]


def test_slide_labels_from_a_table(cohort: Any, data: ProbeData, tmp_path: Path) -> None:
    labels = read_slide_labels(cohort.slide_labels_csv)
    assert labels == {f"S{s:02d}": s % 2 for s in range(8)}
    df = run_ceiling(data.features, data.holds, data.properties, data.slide_ids, slide_labels=labels)
    atypical = _row(df, "tiles-5x", "atypical")  # now scored against the slide label, which it does not carry
    assert atypical["note"] == "" and atypical["n_pos_slides"] == 4 and atypical["region_auroc"] > 0.9
    assert _row(df, "tiles-20x", "ring")["slide_auroc_max"] > 0.9
    part = run_ceiling(data.features, data.holds, data.properties, data.slide_ids,
                       slide_labels={k: v for k, v in labels.items() if k != "S00"})
    assert (part["n_slides"] == 7).all()
    with pytest.raises(ValueError, match="0 or 1"):
        run_ceiling(data.features, data.holds, data.properties, data.slide_ids, slide_labels={"S00": 2})
    text = tmp_path / "labels.csv"
    text.write_text("patient_id,slide_id,msi,grade\nP1,A,pos,1\nP2,B,neg,2\nP3,C,,3\n")
    assert read_slide_labels(text, "msi") == {"A": 1, "B": 0}  # the second class in sorted order is positive
    with pytest.raises(ValueError, match="several label columns"):
        read_slide_labels(text)
    with pytest.raises(ValueError, match="binary"):
        read_slide_labels(text, "grade")


def test_run_diagnostics_writes_the_ceiling(cohort: Any, tmp_path: Path) -> None:
    cli: typer.Typer = app_module.build_app()
    out = tmp_path / "diag"
    res = CliRunner().invoke(cli, ["diagnose", str(cohort.features_dir), "--out", str(out), "--region-labels",
                                   str(cohort.boxes_csv), "--probes", "linear", "--slide-labels",
                                   str(cohort.slide_labels_csv)])
    assert res.exit_code == 0, res.output
    assert "slide AUROC ceiling" in res.output
    table = pd.read_csv(out / "ceiling.csv")
    assert list(table.columns) == list(CEILING_COLUMNS) and (table["n_pos_slides"] == 4).all()
    meta = json.loads((out / "diagnostics.json").read_text())
    assert len(meta["ceiling"]) == len(table) and meta["inputs"]["slide_labels"] == str(cohort.slide_labels_csv)
    assert meta["settings"]["ceiling"] is True and "ceiling" in meta["files"]
    off = run_diagnostics(cohort.features_dir, out_dir=tmp_path / "off", region_labels=cohort.boxes_csv,
                          probes=["linear"], ceiling=False)
    assert off.ceiling is None and "ceiling" in off.skipped and not (tmp_path / "off" / "ceiling.csv").exists()
