"""Fixtures for the embedding tests: hand-made region indexes and a fake tile source.

The fake source makes the engine testable without any slide reader: pixels are a deterministic
function of (slide id, region), so a test can recompute exactly what the engine embedded. The
helpers reach the tests through the ``kit`` fixture (the suite runs with --import-mode=importlib).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mixmag.geometry import RegionSpec
from mixmag.io.regions import RegionIndex, write_region_index

SPEC = RegionSpec()


def make_index(slide_id: str, n_regions: int, *, slide_path: str | None = None, slide_hash: str = "q1:test",
               seed: int = 0) -> RegionIndex:
    """A RegionIndex of ``n_regions`` regions on a 4-wide grid at 0.5 µm/px (896-px regions)."""
    rng = np.random.default_rng(seed)
    t = SPEC.n_tokens
    coords = np.array([((i % 4) * 896, (i // 4) * 896) for i in range(n_regions)], dtype=np.int64).reshape(-1, 2)
    tissue = rng.uniform(0, 1, size=(n_regions, t)).astype(np.float32)
    tissue[:, 0] = 0.9  # regions are kept because their 5x tile has tissue
    attrs = {"slide_id": slide_id, "slide_path": slide_path or f"/synthetic/{slide_id}.tiff",
             "slide_hash": slide_hash, "reader": "fake", "level0_width": 4 * 896,
             "level0_height": max(1, (n_regions + 3) // 4) * 896, "mpp_source": "test"}
    return RegionIndex(coords=coords, tile_valid=tissue >= 0.1, tissue_fraction=tissue, spec=SPEC,
                       mpp_level0=0.5, attrs=attrs)


def write_regions(folder: Path, slides: dict[str, int], **kwargs: object) -> Path:
    """Write one region index per slide into ``folder/regions``; returns ``folder``."""
    for i, (slide_id, n) in enumerate(slides.items()):
        write_region_index(folder / "regions" / f"{slide_id}.h5", make_index(slide_id, n, seed=i, **kwargs))
    return folder


def fake_region_tiles(slide_id: str, region: int) -> np.ndarray:
    """uint8 (21, 224, 224, 3) pixels of a region: noise seeded by (slide, region); 'flat*' slides are grey."""
    if slide_id.startswith("flat"):
        return np.full((SPEC.n_tokens, 224, 224, 3), 128, dtype=np.uint8)
    rng = np.random.default_rng([zlib.crc32(slide_id.encode()), region])
    return rng.integers(0, 256, size=(SPEC.n_tokens, 224, 224, 3), dtype=np.uint8)


class FakeTiles:
    """TileSource over :func:`fake_region_tiles`.

    Slides whose path contains 'unreadable' fail to open; 'corrupt*' slides fail on region 5.
    """

    def __init__(self, index: RegionIndex) -> None:
        if "unreadable" in str(index.attrs.get("slide_path")):
            raise OSError(f"cannot decode {index.attrs['slide_path']}: not a TIFF file")
        self.slide_id = index.slide_id

    def read_region_tiles(self, region: int) -> np.ndarray:
        if self.slide_id.startswith("corrupt") and region == 5:
            raise OSError("JPEG decode error in tile 17 (truncated data)")
        return fake_region_tiles(self.slide_id, region)

    def close(self) -> None:
        pass


@pytest.fixture
def kit() -> SimpleNamespace:
    """The helpers above, plus ``run``: embed_slides keyword arguments for fast CPU runs on fake tiles."""
    run = dict(encoder="tiny.d16", batch_size=16, precision="fp32", device="cpu", workers=0, progress=False,
               open_tiles=FakeTiles)
    return SimpleNamespace(make_index=make_index, write_regions=write_regions, fake_region_tiles=fake_region_tiles,
                           FakeTiles=FakeTiles, run=run)
