"""Synthetic MIL cohorts (real feature files) and a tiny region-encoder checkpoint for the MIL tests."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mixmag.synth.mil_features import SyntheticCohort, write_synthetic_cohort


@pytest.fixture(autouse=True)
def _one_thread_and_visible_logs() -> None:
    # tests share two CPU cores with other jobs; tiny models do not profit from more threads
    torch.set_num_threads(1)
    # a CLI test may have run configure_logging(), which stops propagation to caplog's root handler
    logging.getLogger("mixmag").propagate = True


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCohort:
    """16 patients, 3-4 regions each, tile dim 8: enough to exercise the pipeline quickly."""
    return write_synthetic_cohort(tmp_path_factory.mktemp("small"), task="rare", n_patients=16,
                                  regions=(3, 4), tile_dim=8, seed=0)


@pytest.fixture(scope="session")
def rare_cohort(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCohort:
    """80 patients; positives hold 1-2 rare 20x tiles among ~75."""
    return write_synthetic_cohort(tmp_path_factory.mktemp("rare"), task="rare", n_patients=80,
                                  regions=(4, 6), tile_dim=16, seed=0)


def _save_tiny_checkpoint(path: Path, *, tile_dim: int, objective: str = "mem", seed: int = 0) -> Path:
    """A region-encoder checkpoint (tiny preset) written with the checkpoint API.

    Its weights are a seeded *initialisation*, not the result of pretraining: these tests check the
    MIL side (loading, fine-tuning, provenance); pretraining quality is the region package's business.
    """
    from mixmag.geometry import RegionSpec
    from mixmag.region.checkpoints import save_region_checkpoint
    from mixmag.region.model import build_region_encoder

    torch.manual_seed(seed)
    encoder = build_region_encoder(tile_dim=tile_dim, spec=RegionSpec(), preset="tiny")
    return save_region_checkpoint(path, model=encoder, step=0, config={"test": True}, target_mean=None,
                                  target_std=None, spec=RegionSpec(), objective=objective)


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Callable[..., Path]:
    """``tiny_checkpoint(path, tile_dim=..., objective="mem")`` writes a tiny-preset checkpoint."""
    return _save_tiny_checkpoint
