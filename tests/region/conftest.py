"""Shared synthetic feature cohorts for the region-encoder tests (written once per session)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mixmag.synth.region_features import write_synthetic_feature_cohort


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny models: threading only adds overhead, and CI machines have 2 cores
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def train_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 slides x 64 regions, D=16, 21-token layout."""
    folder = tmp_path_factory.mktemp("train_features")
    write_synthetic_feature_cohort(folder, n_slides=8, regions_per_slide=64, seed=0)
    return folder


@pytest.fixture(scope="session")
def heldout_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 unseen slides x 64 regions from the same generative model."""
    folder = tmp_path_factory.mktemp("heldout_features")
    write_synthetic_feature_cohort(folder, n_slides=2, regions_per_slide=64, seed=1, prefix="heldout")
    return folder


@pytest.fixture(scope="session")
def small_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 slides of 12-20 regions plus one empty slide: quick engine tests."""
    folder = tmp_path_factory.mktemp("small_features")
    write_synthetic_feature_cohort(folder, n_slides=4, regions_per_slide=(12, 20), empty_slides=1, seed=2)
    return folder
