"""Synthetic-slide factory for the tiling tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mixmag.synth.tiff import draw_tissue_layout, write_pyramidal_tiff

SlideFactory = Callable[..., Path]


@pytest.fixture
def synthetic_slide(tmp_path: Path) -> SlideFactory:
    """``make(name, size=(w, h), mpp=0.5, blobs=[...], levels=3)`` -> path of a pyramidal TIFF.

    Default blobs cover the centre of the slide; ``blobs=[]`` gives a slide without tissue.
    """

    def make(
        name: str = "synthetic",
        size: tuple[int, int] = (2400, 1800),
        mpp: float | None = 0.5,
        blobs: list[tuple[float, float, float, float]] | None = None,
        levels: int = 3,
        folder: Path | None = None,
        seed: int = 0,
    ) -> Path:
        w, h = size
        if blobs is None:
            blobs = [(0.45 * w, 0.5 * h, 0.3 * w, 0.35 * h), (0.8 * w, 0.35 * h, 0.12 * w, 0.15 * h)]
        rgb, _ = draw_tissue_layout(size, blobs, seed=seed)
        out = (folder or tmp_path) / f"{name}.tiff"
        out.parent.mkdir(parents=True, exist_ok=True)
        return write_pyramidal_tiff(out, rgb, mpp=mpp, n_levels=levels, tile_px=256, compression="jpeg")

    return make

