"""Shared fixtures: paths to the real sample slides and small synthetic data factories."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_WSI = REPO_ROOT.parent / "shared" / "data" / "wsi"
SHARED_TILES = REPO_ROOT.parent / "shared" / "data" / "tiles"

# Keep the suite predictable on the 2-core CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _mixmag_logs_reach_caplog() -> None:
    # a CLI test runs configure_logging(), which stops propagation of the "mixmag" logger to the
    # root handler that pytest's caplog listens on; every test starts with it propagating again
    logging.getLogger("mixmag").propagate = True


@pytest.fixture(scope="session")
def shared_wsi() -> Path:
    """Folder of the six real sample slides (../shared/data/wsi from the repo root)."""
    if not SHARED_WSI.is_dir():
        pytest.skip(f"real sample slides not found at {SHARED_WSI} (they live beside the clone in CI)")
    return SHARED_WSI


@pytest.fixture(scope="session")
def shared_tiles() -> Path:
    """Folder of real non-pyramidal H&E images (../shared/data/tiles)."""
    if not SHARED_TILES.is_dir():
        pytest.skip(f"real sample tiles not found at {SHARED_TILES}")
    return SHARED_TILES
