"""Probes find a property planted in one magnification only from that magnification's features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mixmag.diagnose.dataset import collect_probe_data
from mixmag.diagnose.featuresets import FEATURE_SETS, available_feature_sets, magnification_mean
from mixmag.diagnose.labels import read_label_table
from mixmag.diagnose.probes import PROBE_COLUMNS, probe_auroc, run_probes
from mixmag.geometry import RegionSpec


@pytest.fixture(scope="module")
def probes(cohort: Any) -> pd.DataFrame:
    data = collect_probe_data(cohort.features_dir, read_label_table(cohort.boxes_csv))
    return run_probes(data.features, data.holds, data.properties, data.slide_ids, seed=0)


def _auc(df: pd.DataFrame, feature_set: str, prop: str, probe: str, col: str = "auroc") -> float:
    row = df[(df["feature_set"] == feature_set) & (df["property"] == prop) & (df["probe"] == probe)]
    assert len(row) == 1
    return float(row[col].iloc[0])


def test_magnification_means_read_the_spec() -> None:
    spec = RegionSpec(mpps=(2.0, 0.5))  # 5x + 20x only: 17 tokens
    x = np.zeros((2, spec.n_tokens, 3), np.float32)
    x[:, 0] = 1.0
    x[:, 1:] = np.arange(16, dtype=np.float32)[None, :, None]
    valid = np.ones((2, spec.n_tokens), bool)
    valid[1, 1:] = False  # region 1: no valid 20x tile
    out = magnification_mean(x, valid, spec, (5.0, 20.0))
    np.testing.assert_allclose(out[0], [1, 1, 1, 7.5, 7.5, 7.5])
    assert np.isnan(out[1, 3:]).all() and (out[1, :3] == 1).all()
    usable, skipped = available_feature_sets(spec, with_encoder=False)
    assert usable == ["tiles-5x", "tiles-20x", "tiles-5x+20x"]
    assert "10x" in skipped["tiles-10x"] and "checkpoint" in skipped["region-cls"]


def test_planted_property_is_found_only_at_its_magnification(probes: pd.DataFrame, cohort: Any) -> None:
    assert list(probes.columns) == list(PROBE_COLUMNS)
    assert set(probes["feature_set"]) == {"tiles-5x", "tiles-10x", "tiles-20x", "tiles-5x+20x"}
    for probe in ("linear", "mlp"):
        assert _auc(probes, "tiles-20x", "ring", probe) > 0.9
        assert _auc(probes, "tiles-5x+20x", "ring", probe) > 0.9
        assert abs(_auc(probes, "tiles-5x", "ring", probe) - 0.5) < 0.15
        assert _auc(probes, "tiles-5x", "atypical", probe) > 0.9
        assert abs(_auc(probes, "tiles-20x", "atypical", probe) - 0.5) < 0.15
    shuffled = probes["auroc_shuffled"].to_numpy(dtype=float)
    assert np.isfinite(shuffled).all() and (np.abs(shuffled - 0.5) < 0.15).all()
    ring = probes[probes["property"] == "ring"].iloc[0]
    n_ring = sum(int(t["ring"].sum()) for t in cohort.truth.values())
    assert (ring["n_pos"], ring["n_slides"], ring["n_regions"]) == (n_ring, 8, 480)


def test_properties_without_enough_examples_are_skipped_with_a_reason() -> None:
    rng = np.random.default_rng(0)
    x = {"f": rng.standard_normal((40, 3))}
    holds = np.zeros((40, 2), bool)
    holds[:3, 0] = True
    holds[::2, 1] = True
    df = run_probes(x, holds, ["rare", "even"], np.repeat(["s", "t"], 20), probes=["linear"])
    assert np.isnan(df.loc[0, "auroc"]) and "3 positives / 37 negatives" in df.loc[0, "note"]
    assert np.isfinite(df.loc[1, "auroc"]) and df.loc[1, "note"] == ""
    one = run_probes(x, holds, ["rare", "even"], np.repeat(["s"], 40), probes=["linear"])
    assert one["auroc"].isna().all() and "one slide" in one.loc[1, "note"]


def test_grouped_cv_keeps_slides_out_of_training() -> None:
    # the label is a slide constant and the features only identify the slide: a probe can score
    # only if a slide's regions are in training and test at once
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(10), 20)
    y = (groups % 2).astype(int)
    x = np.eye(10)[groups] + 0.01 * rng.standard_normal((200, 10))
    assert probe_auroc(x, y, np.arange(200), probe="linear") > 0.95  # region-level folds leak
    assert probe_auroc(x, y, groups, probe="linear") < 0.6


def test_encoder_feature_sets_are_named_by_role(cohort: Any, mem_run: Path) -> None:
    data = collect_probe_data(cohort.features_dir, read_label_table(cohort.boxes_csv), checkpoints={"mem": mem_run},
                              feature_sets=["tiles-20x", "region-cls", "region-tokens-mean"], max_regions=60)
    assert set(data.features) == {"tiles-20x", "region-cls.mem", "region-tokens-mean.mem"}
    assert data.n_regions == 60 and data.features["region-cls.mem"].shape == (60, 32)  # tiny preset: W = 32
    assert np.isfinite(data.features["region-tokens-mean.mem"]).all()
    assert data.holds.any(axis=1).sum() == 30  # up to half of a capped sample holds a property
    with pytest.raises(KeyError, match="tiles-20x"):
        collect_probe_data(cohort.features_dir, read_label_table(cohort.boxes_csv), feature_sets=["tiles-20"])
    assert "region-cls" in FEATURE_SETS
