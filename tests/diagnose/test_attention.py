"""Attention diagnostics on hand-written attention files (exact numbers) and on a tiny `mixmag train` run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mixmag.diagnose.attention import (
    ATTENTION_COLUMNS,
    attention_diagnostics,
    find_mil_runs,
    summarize_attention,
)
from mixmag.diagnose.labels import read_label_table
from mixmag.io.features import FeatureFile
from mixmag.mil.artifacts import BagExplanation, SlideAttention, write_attention


def _write_bag(run: Path, cohort: Any, slide_id: str, attention: np.ndarray, *, per_region: np.ndarray,
               label: int) -> None:
    """One bag of one slide; region r has ``per_region[r]`` instances sharing ``attention[r]``."""
    coords = FeatureFile(cohort.features_dir / f"{slide_id}.h5").index.coords
    region = np.repeat(np.arange(len(coords)), per_region)
    att = (attention / per_region)[region]
    token = np.concatenate([np.arange(n) + 5 for n in per_region])  # some 20x slots
    expl = BagExplanation(np.array([0.3, 0.7]), ["0", "1"], [SlideAttention(
        slide_id, coords, np.bincount(region, att, len(coords)).astype(np.float32), region, token,
        np.full(len(region), 0.5, np.float32), att.astype(np.float32))])
    write_attention(run / "attention" / f"{slide_id}.h5", expl,
                    {"bag_id": slide_id, "patient_id": slide_id, "method": "hand", "target": "label",
                     "fold": 0, "label": label})


def test_exact_share_uniform_share_and_rank_auroc(cohort: Any, tmp_path: Path) -> None:
    run = tmp_path / "label" / "hand"
    ring = cohort.truth["S01"]["ring"]
    n = len(ring)
    counts = np.where(np.arange(n) % 2 == 0, 2, 1)  # uneven instance counts: uniform share != region share
    att = np.where(ring, 0.8 / ring.sum(), 0.2 / (~ring).sum())
    _write_bag(run, cohort, "S01", att, per_region=counts, label=1)
    _write_bag(run, cohort, "S00", np.full(n, 1.0 / n), per_region=np.ones(n, int), label=0)  # no ring: uniform
    df = attention_diagnostics(tmp_path, cohort.features_dir, read_label_table(cohort.boxes_csv))
    assert list(df.columns) == list(ATTENTION_COLUMNS)
    pos = df[(df["bag_id"] == "S01") & (df["property"] == "ring")].iloc[0]
    assert pos["positive"] and pos["prob_pos"] == pytest.approx(0.7)
    assert pos["attention_share"] == pytest.approx(0.8, rel=1e-5)
    assert pos["uniform_share"] == pytest.approx(counts[ring].sum() / counts.sum())
    assert pos["rank_auroc"] == 1.0 and (pos["n_regions"], pos["n_holding"]) == (n, ring.sum())
    neg = df[(df["bag_id"] == "S00") & (df["property"] == "ring")].iloc[0]
    assert not neg["positive"] and neg["n_holding"] == 0 and np.isnan(neg["rank_auroc"])
    atyp = df[(df["bag_id"] == "S00") & (df["property"] == "atypical")].iloc[0]
    assert atyp["rank_auroc"] == 0.5 and atyp["share_ratio"] == pytest.approx(1.0)  # uniform attention
    summary = summarize_attention(df).set_index(["property", "bags"])
    assert summary.loc[("ring", "positive"), "n_bags"] == 1
    assert summary.loc[("ring", "positive"), "rank_auroc"] == 1.0
    assert summary.loc[("ring", "all"), "n_bags"] == 2 and summary.loc[("ring", "all"), "n_bags_auroc"] == 1


def test_tile_and_region_methods_of_a_trained_run(mil_runs: Path, cohort: Any) -> None:
    runs = find_mil_runs(mil_runs)
    assert [r.name for r in runs] == ["abmil-20x", "mix-mem-cls"]
    df = attention_diagnostics(mil_runs, cohort.features_dir, read_label_table(cohort.boxes_csv))
    assert set(df["method"]) == {"abmil-20x", "mix-mem-cls"} and df["bag_id"].nunique() == 8
    shares = df[["attention_share", "uniform_share"]].to_numpy()
    assert np.isfinite(shares).all() and ((shares >= 0) & (shares <= 1)).all()
    # uniform attention over instances = share of the slide's instances in ring regions: valid 20x
    # tiles for the tile method, one CLS per region for the region method
    table = read_label_table(cohort.boxes_csv)
    for sid in ("S01", "S03"):
        ring = cohort.truth[sid]["ring"]
        valid20 = FeatureFile(cohort.features_dir / f"{sid}.h5").index.tile_valid[:, 5:].sum(1)
        bag = df[(df["bag_id"] == f"P{sid[1:]}") & (df["property"] == "ring")].set_index("method")  # patient bags
        tile, cls = bag.loc["abmil-20x"], bag.loc["mix-mem-cls"]
        assert tile["positive"] and cls["positive"]
        assert tile["uniform_share"] == pytest.approx(valid20[ring].sum() / valid20.sum())
        assert cls["uniform_share"] == pytest.approx(ring.mean())
    assert table.properties == ("ring", "atypical")
    one = attention_diagnostics(runs[0], cohort.features_dir, table)  # a single run folder works too
    pd.testing.assert_frame_equal(one.reset_index(drop=True),
                                  df[df["method"] == "abmil-20x"].reset_index(drop=True))


def test_no_run_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="attention/"):
        find_mil_runs(tmp_path)
