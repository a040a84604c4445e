"""Region grid: exact spacing without drift, fully inside the slide, tissue rules per token."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mixmag.geometry import RegionSpec
from mixmag.slides import open_slide, resolve_mpp
from mixmag.slides.tissue import TissueMask, detect_tissue
from mixmag.tiling.grid import build_region_index, grid_coords, grid_positions, token_boxes_level0


def test_grid_positions_do_not_drift_and_stay_inside() -> None:
    size = 448 / 0.2281750559  # NDPI region: 1963.4 level-0 px
    starts = grid_positions(400_000, size)
    exact = np.arange(len(starts)) * size
    assert len(starts) == 203 and np.abs(starts - exact).max() <= 0.5  # no accumulated rounding
    assert (starts + size <= 400_000).all()
    assert len(grid_positions(1963, size)) == 0  # narrower than one region: nothing fits


def test_grid_is_centred_on_tissue_and_shifted_inside() -> None:
    starts = grid_positions(10_000, 1000.0, extent=(2_100, 4_900))  # 2.8 regions of tissue -> 3
    assert list(starts) == [2000, 3000, 4000]
    starts = grid_positions(10_000, 1000.0, extent=(9_500, 10_000))  # tissue at the edge
    assert list(starts) == [9000]
    starts = grid_positions(2_500, 1000.0, extent=(0, 2_500))  # more tissue than fits
    assert list(starts) == [250, 1250]
    coords = grid_coords((10_000, 5_000), 1000.0, (2_100, 1_000, 4_900, 1_900))
    assert coords.shape == (3, 2) and (coords[:, 1] == 950).all()  # 900 px of tissue, centred


def test_region_index_keeps_regions_with_tissue_and_flags_tokens() -> None:
    mask = np.zeros((100, 200), bool)
    mask[10:60, 20:120] = True  # tissue: level-0 x 200..1200, y 100..600 (10 level-0 px per mask px)
    tissue = TissueMask(mask=mask, level0_size=(2000, 1000), mpp=1.0, background="bright", threshold=0.1)
    spec = RegionSpec(region_um=448, tile_px=224, mpps=(2.0, 1.0, 0.5))
    mpp0 = 448 / 250.0  # region side exactly 250 level-0 px
    index = build_region_index(tissue, mpp0, spec, min_tissue=0.25, valid_min_tissue=0.1)
    assert index.tissue_fraction.shape == (index.n_regions, 21) and index.tile_valid.shape == (index.n_regions, 21)
    whole = tissue.box_fractions(np.concatenate([index.coords, index.coords + 250], axis=1).astype(float))
    assert (whole >= 0.25).all()
    np.testing.assert_allclose(index.tissue_fraction[:, 0], whole, atol=1e-6)  # 5x tile = the region
    np.testing.assert_array_equal(index.tile_valid, index.tissue_fraction >= 0.1)
    # every grid region with enough tissue was kept
    all_coords = grid_coords((2000, 1000), 250.0, (200, 100, 1200, 600))
    all_frac = tissue.box_fractions(np.concatenate([all_coords, all_coords + 250], axis=1).astype(float))
    assert index.n_regions == int((all_frac >= 0.25).sum()) == 8
    # token boxes nest: the 16 20x tiles partition the region
    boxes = token_boxes_level0(index.coords[:1], spec, mpp0)[0]
    for axis in (0, 1):
        assert boxes[5:, 2 + axis].max() - boxes[5:, axis].min() == pytest.approx(250)
        assert boxes[5:, axis].min() == index.coords[0, axis]
    assert np.prod(boxes[5:, 2:] - boxes[5:, :2], axis=1).sum() == pytest.approx(250 * 250)


@pytest.mark.parametrize("name", ["CMU-1-Small-Region_pyramid.tiff", "CMU-1-Small-Region.svs"])
def test_grid_covers_tissue_on_real_slide(shared_wsi: Path, name: str) -> None:
    with open_slide(shared_wsi / name) as s:
        mpp = resolve_mpp(s).mpp
        tissue = detect_tissue(s.thumbnail(1024), s.dimensions, mpp)
    spec = RegionSpec()
    index = build_region_index(tissue, mpp, spec, min_tissue=0.25, valid_min_tissue=0.1)
    assert index.n_regions >= 4 and index.tissue_fraction.shape[1] == 21 == spec.n_tokens
    size = spec.region_size_level0(mpp)
    w, h = s.dimensions
    assert (index.coords >= 0).all() and (index.coords[:, 0] + size <= w).all() and (index.coords[:, 1] + size <= h).all()
    # tissue covered by kept regions, relative to tissue inside the area any full-region grid can reach
    covered = np.zeros_like(tissue.mask)
    sx, sy = tissue.scale
    for x, y in index.coords:
        covered[int(y * sy): int((y + size) * sy), int(x * sx): int((x + size) * sx)] = True
    share = (covered & tissue.mask).sum() / tissue.mask.sum()
    assert share > 0.7, share
    assert index.tile_valid.mean() > 0.7
