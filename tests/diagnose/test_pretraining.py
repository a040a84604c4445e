"""Pretraining diagnostics: per-pattern, per-magnification reconstruction error against both baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from mixmag.diagnose.pretraining import (
    PRETRAINING_COLUMNS,
    _masks,
    find_metrics_log,
    pretraining_diagnostics,
)
from mixmag.geometry import RegionSpec
from mixmag.io.features import FeatureFile
from mixmag.region.checkpoints import save_region_checkpoint
from mixmag.region.diagnostics import evaluate_reconstruction, load_pretrainer
from mixmag.region.model import build_region_encoder


@pytest.fixture(scope="module")
def table(mem_run: Path, cohort: Any) -> pd.DataFrame:
    return pretraining_diagnostics(mem_run, cohort.features_dir, name="mem", n_regions=96, seed=1, batch_size=40)


def test_every_pattern_and_magnification_has_finite_errors(table: pd.DataFrame) -> None:
    assert list(table.columns) == list(PRETRAINING_COLUMNS)
    got = set(zip(table["pattern"], table["magnification"], strict=True))
    assert got == {("random", "5x"), ("random", "10x"), ("random", "20x"), ("random", "all"),
                   ("mask-5x", "5x"), ("mask-10x", "10x"), ("mask-20x", "20x")}
    values = table[["mse_model", "mse_zero", "mse_region_mean", "ratio_zero", "ratio_region_mean"]].to_numpy()
    assert np.isfinite(values).all() and (values > 0).all()
    assert (table["checkpoint"] == "mem").all() and (table["n_tokens"] > 0).all()
    random = table[table["pattern"] == "random"].set_index("magnification")
    assert random.loc["all", "n_tokens"] == random.drop("all")["n_tokens"].sum()
    # standardised with the cohort statistics: predicting the mean costs about 1 per dimension
    assert 0.7 < random.loc["all", "mse_zero"] < 1.3


def test_whole_magnification_masks_cover_every_valid_token_of_one_magnification(cohort: Any, mem_run: Path) -> None:
    spec = RegionSpec()
    mag_index = spec.layout().mag_index
    _, valid = FeatureFile(cohort.features_dir / "S00.h5").read(slice(0, 30))
    valid[0] = False
    valid[0, 5:] = True  # region 0: only 20x tiles, so masking 20x leaves no context
    for m in range(3):
        mask = _masks(valid, mag_index, m, ratio=0.5, seed=0, offset=0)
        np.testing.assert_array_equal(mask[1:], valid[1:] & (mag_index == m)[None, :])
    assert not _masks(valid, mag_index, 2, ratio=0.5, seed=0, offset=0)[0].any()
    random = _masks(valid, mag_index, None, ratio=0.5, seed=0, offset=0)
    assert not (random & ~valid).any() and (random.sum(1) == np.floor(0.5 * valid.sum(1) + 0.5)).all()


def test_random_pattern_agrees_with_region_evaluate_reconstruction(table: pd.DataFrame, mem_run: Path,
                                                                   cohort: Any) -> None:
    # same sample, masks and checkpoint: the existing region diagnostic gives the same overall numbers
    ref = evaluate_reconstruction(mem_run, cohort.features_dir, n_regions=96, seed=1)
    row = table[(table["pattern"] == "random") & (table["magnification"] == "all")].iloc[0]
    assert row["n_tokens"] == ref["n_tokens"]
    assert row["mse_model"] == pytest.approx(ref["mse"], rel=1e-4)
    assert row["mse_zero"] == pytest.approx(ref["baseline_mse"], rel=1e-4)


def test_region_mean_baseline_is_the_mean_of_visible_targets(mem_run: Path) -> None:
    from mixmag.diagnose.pretraining import _errors

    model, _ = load_pretrainer(mem_run)
    target = torch.randn(1, 21, 8)  # tile dim of the cohort
    valid = torch.zeros(1, 21, dtype=torch.bool)
    valid[0, [0, 1, 5, 6]] = True
    mask = torch.zeros_like(valid)
    mask[0, 6] = True
    _, zero, region_mean = _errors(model, target, target, valid, mask)
    expected = (target[0, [0, 1, 5]].mean(0) - target[0, 6]).pow(2).mean()
    assert float(region_mean[0, 6]) == pytest.approx(float(expected), rel=1e-5)
    assert float(zero[0, 6]) == pytest.approx(float(target[0, 6].pow(2).mean()), rel=1e-5)


def test_checkpoint_without_decoder_is_refused(tmp_path: Path, cohort: Any) -> None:
    enc = build_region_encoder(tile_dim=8, spec=RegionSpec(), preset="tiny")
    ckpt = save_region_checkpoint(tmp_path / "rand", model=enc, step=0, config={}, target_mean=None,
                                  target_std=None, spec=RegionSpec(), objective="random")
    with pytest.raises(ValueError, match="no MEM decoder"):
        pretraining_diagnostics(ckpt, cohort.features_dir, n_regions=8)


def test_metrics_log_is_found_from_run_or_checkpoint_folder(mem_run: Path, tmp_path: Path) -> None:
    assert find_metrics_log(mem_run) == mem_run / "metrics.jsonl"
    assert find_metrics_log(mem_run / "final") == mem_run / "metrics.jsonl"
    assert find_metrics_log(tmp_path) is None
