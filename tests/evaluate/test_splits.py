"""Patient-level stratified splits: disjoint, stratified, reproducible, reusable; fallbacks logged."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixmag.evaluate.splits import (
    fold_roles,
    make_splits,
    read_splits,
    restrict_splits,
    validate_splits,
    write_splits,
)


def _labels(n_pos: int, n_neg: int) -> pd.Series:
    ids = [f"P{i:03d}" for i in range(n_pos + n_neg)]
    return pd.Series([1] * n_pos + [0] * n_neg, index=ids)


def test_splits_are_patient_disjoint_and_every_patient_is_tested_once() -> None:
    labels = _labels(20, 30)
    splits = make_splits(labels, folds=5, val_frac=0.2, seed=0)
    assert sorted(splits["fold"].unique()) == [0, 1, 2, 3, 4]
    for fold in range(5):
        roles = fold_roles(splits, fold)
        sets = {r: set(v) for r, v in roles.items()}
        assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
        assert sets["train"] | sets["val"] | sets["test"] == set(labels.index)
        assert sets["val"], "every fold has validation patients for early stopping"
    tests = splits[splits["role"] == "test"]["patient_id"]
    assert tests.is_unique and set(tests) == set(labels.index)


def test_splits_are_stratified() -> None:
    labels = _labels(20, 30)
    splits = make_splits(labels, folds=5, seed=1)
    for fold in range(5):
        test = fold_roles(splits, fold)["test"]
        assert labels[test].sum() == 4  # 20 positives / 5 folds, exactly
        val = fold_roles(splits, fold)["val"]
        assert 0 < labels[val].sum() < len(val)  # both classes in every validation set


def test_same_seed_same_splits_and_file_roundtrip(tmp_path: Path) -> None:
    labels = _labels(12, 18)
    a = make_splits(labels, folds=3, seed=7)
    pd.testing.assert_frame_equal(a, make_splits(labels, folds=3, seed=7))
    assert not a.equals(make_splits(labels, folds=3, seed=8))
    write_splits(a, tmp_path / "splits.csv")
    pd.testing.assert_frame_equal(read_splits(tmp_path / "splits.csv"), a)


def test_rare_class_reduces_folds_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mixmag"):
        splits = make_splits(_labels(3, 20), folds=5, seed=0)
    assert splits["fold"].nunique() == 3
    assert "fewer than the 5 folds" in caplog.text
    for fold in range(3):  # every test fold still holds a positive
        assert any(p in fold_roles(splits, fold)["test"] for p in ["P000", "P001", "P002"])


def test_impossible_splits_raise() -> None:
    with pytest.raises(ValueError, match="only 1 patient"):
        make_splits(_labels(1, 20), folds=5)
    with pytest.raises(ValueError, match="every patient has label"):
        make_splits(_labels(0, 20), folds=5)


def test_validate_and_restrict_splits_errors() -> None:
    good = make_splits(_labels(6, 6), folds=3, seed=0)
    bad = good.copy()
    bad.loc[0, "role"] = "holdout"
    with pytest.raises(ValueError, match="unknown role"):
        validate_splits(bad)
    twice = good.copy()
    twice.loc[twice["role"] == "train", "role"] = "test"
    with pytest.raises(ValueError, match="not test in exactly one fold"):
        validate_splits(twice)
    with pytest.raises(ValueError, match="have no split"):
        restrict_splits(good, [*good["patient_id"].unique(), "NEW"])
    sub = restrict_splits(good, good["patient_id"].unique()[:4])
    assert set(sub["patient_id"]) == set(good["patient_id"].unique()[:4])


def test_multi_target_split_file(tmp_path: Path) -> None:
    a = make_splits(_labels(6, 6), folds=2, seed=0).assign(target="msi")
    b = make_splits(_labels(6, 6), folds=3, seed=0).assign(target="kras")
    pd.concat([a, b]).to_csv(tmp_path / "s.csv", index=False)
    assert read_splits(tmp_path / "s.csv", target="kras")["fold"].nunique() == 3
    with pytest.raises(ValueError, match="several targets"):
        read_splits(tmp_path / "s.csv")
    assert np.array_equal(read_splits(tmp_path / "s.csv", target="msi")["fold"], a["fold"])
