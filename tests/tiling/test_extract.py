"""Pixel extraction: one read per region at the right level, exact mpp, nested magnifications."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from mixmag.geometry import RegionSpec
from mixmag.io.regions import RegionIndex
from mixmag.slides import open_slide, resolve_mpp
from mixmag.slides.tissue import detect_tissue
from mixmag.tiling.extract import RegionTileReader, cut_tiles, plan_region_read
from mixmag.tiling.grid import build_region_index

SPEC = RegionSpec()
SlideFactory = Callable[..., Path]


def area_downsample(img: np.ndarray, factor: int) -> np.ndarray:
    """Independent exact box average (float), to check the tiler's coarser magnifications."""
    h, w, c = img.shape
    return img.reshape(h // factor, factor, w // factor, factor, c).astype(np.float64).mean(axis=(1, 3))


def _index(reader, mpp: float | None = None, min_tissue: float = 0.25) -> RegionIndex:  # noqa: ANN001
    mpp = resolve_mpp(reader, mpp).mpp
    tissue = detect_tissue(reader.thumbnail(1024), reader.dimensions, mpp)
    return build_region_index(tissue, mpp, SPEC, min_tissue=min_tissue, valid_min_tissue=0.1)


def test_cut_tiles_token_order_and_area_downsampling() -> None:
    rng = np.random.default_rng(0)
    mosaic = rng.integers(0, 256, (896, 896, 3), dtype=np.uint8)
    tiles = cut_tiles(mosaic, SPEC)
    assert tiles.shape == (21, 224, 224, 3) and tiles.dtype == np.uint8
    for k in range(16):  # 20x tiles are the mosaic's 4x4 blocks, row-major
        r, c = divmod(k, 4)
        np.testing.assert_array_equal(tiles[5 + k], mosaic[r * 224:(r + 1) * 224, c * 224:(c + 1) * 224])
    ten = area_downsample(mosaic, 2)
    for k in range(4):
        r, c = divmod(k, 2)
        assert np.abs(tiles[1 + k] - ten[r * 224:(r + 1) * 224, c * 224:(c + 1) * 224]).max() <= 0.5 + 1e-9
    assert np.abs(tiles[0] - area_downsample(mosaic, 4)).max() <= 0.5 + 1e-9
    with pytest.raises(ValueError, match="896"):
        cut_tiles(mosaic[:800], SPEC)


@pytest.mark.parametrize("name", ["CMU-1-Small-Region_pyramid.tiff", "CMU-1-Small-Region.svs"])
def test_tiles_match_an_independent_openslide_read(shared_wsi: Path, name: str) -> None:
    path = shared_wsi / name
    reference = openslide.OpenSlide(str(path))
    with open_slide(path) as reader:
        index = _index(reader)
        tiles = RegionTileReader(reader, index)
        plan = tiles.plan
        assert plan.level == 0 and not plan.exact  # 0.499 µm/px: level 0, resampled to 0.5
        assert plan.region_size_level0 == pytest.approx(448 / 0.499)
        for mpp, achieved in plan.achieved_mpps.items():
            assert achieved == pytest.approx(mpp, rel=1e-9)
        size = plan.region_size_level0
        for region in range(index.n_regions):
            x0, y0 = (int(v) for v in index.coords[region])
            t = tiles.read_region_tiles(region)
            assert t.shape == (21, 224, 224, 3)
            mosaic = np.concatenate([np.concatenate(list(t[5 + 4 * r: 9 + 4 * r]), axis=1) for r in range(4)], axis=0)
            raw = reference.read_region((x0, y0), 0, (int(np.ceil(size)) + 1,) * 2).convert("RGB")
            box = (0.0, 0.0, size, size)
            same_filter = np.asarray(raw.resize((896, 896), Image.Resampling.BOX, box=box)).astype(int)
            assert np.abs(same_filter - mosaic).max() <= 1
            lanczos = np.asarray(raw.resize((896, 896), Image.Resampling.LANCZOS, box=box)).astype(int)
            shifted_raw = reference.read_region((x0 + 3, y0 + 3), 0, (int(np.ceil(size)) + 1,) * 2).convert("RGB")
            shifted = np.asarray(shifted_raw.resize((896, 896), Image.Resampling.LANCZOS, box=box)).astype(int)
            err, err_shifted = np.abs(lanczos - mosaic).mean(), np.abs(shifted - mosaic).mean()
            assert err < 8 and err < 0.5 * err_shifted  # interpolation differences only, not geometry
            # 10x and 5x are the 2x / 4x area downsamples of the same 20x pixels
            ten = area_downsample(mosaic, 2)
            assert np.abs(t[1] - ten[:224, :224]).max() <= 0.5 + 1e-9
            assert np.abs(t[4] - ten[224:, 224:]).max() <= 0.5 + 1e-9
            assert np.abs(t[0] - area_downsample(mosaic, 4)).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_ndpi_reads_level_one_at_exact_mpps(shared_wsi: Path, backend: str) -> None:
    with open_slide(shared_wsi / "test3-DAPI-2-387.ndpi", backend) as reader:
        index = _index(reader)
        plan = plan_region_read(reader, index.mpp_level0, SPEC)
        # 0.228 µm/px (40x): level 1 (0.456 µm/px) is the coarsest level not coarser than 0.5
        assert plan.level == 1 and plan.downsample == 2.0
        assert plan.level_mpp == pytest.approx(0.45635, rel=1e-4)
        assert plan.region_size_level0 == pytest.approx(448 / 0.2281750559) == pytest.approx(1963.4, abs=0.1)
        assert index.region_size_level0 == pytest.approx(1963.4, abs=0.1)
        assert {m: round(a, 9) for m, a in plan.achieved_mpps.items()} == {2.0: 2.0, 1.0: 1.0, 0.5: 0.5}
        assert index.n_regions >= 2
        tiles = RegionTileReader(reader, index).read_region_tiles(0)
        # the same region from level 0, area-resampled independently, agrees with the level-1 tiles
        x0, y0 = (int(v) for v in index.coords[0])
        raw = reader.read_region((x0, y0), 0, (1965, 1965))
        ref = np.asarray(Image.fromarray(raw).resize((896, 896), Image.Resampling.BOX, box=(0, 0, 1963.4, 1963.4)))
        assert np.abs(tiles[5].astype(int) - ref[:224, :224]).mean() < 6
        assert np.abs(tiles[0].astype(int) - area_downsample(ref, 4)).mean() < 3


def test_exact_path_reads_level_pixels_unchanged(synthetic_slide: SlideFactory) -> None:
    path = synthetic_slide("exact", size=(2048, 2048), mpp=0.25, levels=2)  # level 1 = 0.5 µm/px exactly
    with open_slide(path) as reader:
        index = _index(reader)
        tiles = RegionTileReader(reader, index)
        assert tiles.plan.exact and tiles.plan.level == 1 and tiles.plan.read_size_px == 896
        x0, y0 = (int(v) for v in index.coords[0])
        direct = reader.read_region((x0, y0), 1, (896, 896))
        np.testing.assert_array_equal(tiles.read_region_mosaic(0), direct)


def test_coarse_slide_is_upsampled_and_says_so(shared_wsi: Path) -> None:
    with open_slide(shared_wsi / "tcga-cr-7395-01a-01-ts1.svs") as reader:
        plan = plan_region_read(reader, 2.0, SPEC)  # the TCGA file really is ~2 µm/px
        assert plan.level == 0 and plan.upsampled and plan.level_mpp == 2.0
        index = _index(reader, mpp=0.5)
        assert not plan_region_read(reader, 0.5, SPEC).upsampled
        assert RegionTileReader(reader, index).read_region_tiles(0).shape == (21, 224, 224, 3)


def test_cut_tiles_fills_a_given_buffer() -> None:
    mosaic = np.random.default_rng(1).integers(0, 256, (896, 896, 3), dtype=np.uint8)
    batch = np.zeros((2, 21, 224, 224, 3), np.uint8)
    result = cut_tiles(mosaic, SPEC, out=batch[1])
    assert np.shares_memory(result, batch) and (batch[0] == 0).all()
    np.testing.assert_array_equal(batch[1], cut_tiles(mosaic, SPEC))
    with pytest.raises(ValueError, match="out must be"):
        cut_tiles(mosaic, SPEC, out=np.zeros((20, 224, 224, 3), np.uint8))
