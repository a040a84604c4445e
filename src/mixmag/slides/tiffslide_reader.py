"""tiffslide backend (fallback): pure-Python TIFF reading via tifffile + zarr.

Opens what OpenSlide refuses: stripped (untiled) TIFFs, OME-TIFF and other TIFF variants without
a vendor driver. Level counts can differ from OpenSlide (NDPI: 4 levels here, 7 in OpenSlide);
pixels agree at levels whose downsample is a whole number.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from mixmag.slides._common import WindowedPyramidReader, parse_float
from mixmag.slides.base import (
    READERS,
    LevelInfo,
    ReaderMeta,
    SlideError,
    SlideProperties,
)
from mixmag.slides.mpp import mpp_from_resolution

if TYPE_CHECKING:
    import tifffile


@READERS.register(
    "tiffslide",
    ReaderMeta(
        extensions=(".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".qptiff", ".btf"),
        priority=20,
        package="tiffslide",
        description="tiffslide (tifffile/zarr): stripped TIFF, OME-TIFF and TIFFs OpenSlide refuses",
    ),
)
class TiffSlideReader(WindowedPyramidReader):
    """Slide reader backed by tiffslide.

    Args:
        path: TIFF-based slide file.
    """

    name = "tiffslide"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        import tiffslide

        with warnings.catch_warnings():
            # tiffslide warns on every NDPI that its vendor parsing is partial; mpp/objective parse fine
            warnings.filterwarnings("ignore", message=".*only partially implemented.*", category=UserWarning)
            self._slide = tiffslide.TiffSlide(str(self.path))
            try:
                self._levels = [
                    LevelInfo(width=int(w), height=int(h), downsample=float(d))
                    for (w, h), d in zip(self._slide.level_dimensions, self._slide.level_downsamples, strict=True)
                ]
                self._properties = self._parse_properties(dict(self._slide.properties))
            except BaseException:
                self._slide.close()
                raise

    @classmethod
    def is_available(cls) -> bool:
        """True when ``tiffslide`` is importable."""
        return importlib.util.find_spec("tiffslide") is not None

    def _parse_properties(self, raw: dict[str, Any]) -> SlideProperties:
        vendor = raw.get("tiffslide.vendor")
        mpp_x, mpp_y = parse_float(raw.get("tiffslide.mpp-x")), parse_float(raw.get("tiffslide.mpp-y"))
        # tiffslide fills tiffslide.mpp-* of vendor-less (generic) TIFFs from the resolution tags
        metadata_mpp = (mpp_x, mpp_y or mpp_x) if mpp_x is not None and vendor is not None else None
        x_res, y_res, unit = raw.get("tiff.XResolution"), raw.get("tiff.YResolution"), raw.get("tiff.ResolutionUnit")
        if x_res is None:  # vendor TIFFs (SVS) do not copy the tags into properties: read page 0
            tags = cast("tifffile.TiffPage", self._slide.ts_tifffile.pages[0]).tags  # page 0 is never a frame
            x_res, y_res, unit = (
                getattr(tags.get(name), "value", None) for name in ("XResolution", "YResolution", "ResolutionUnit")
            )
        return SlideProperties(
            vendor=vendor,
            objective_power=parse_float(raw.get("tiffslide.objective-power")),
            metadata_mpp=metadata_mpp,
            tiff_mpp=mpp_from_resolution(x_res, y_res, unit),
            raw=raw,
        )



    def _raw_read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        try:
            arr = self._slide.read_region((int(x), int(y)), level, (w, h), as_array=True)
        except Exception as exc:  # tifffile/zarr/imagecodecs raise many types on damaged data
            raise SlideError(
                f"{self.path.name}: tiffslide could not read level {level} at level-0 ({x}, {y}), "
                f"size {w}x{h}: {type(exc).__name__}: {exc}. The file is probably truncated or corrupt."
            ) from exc
        arr = np.asarray(arr)
        if arr.dtype != np.uint8 or not (arr.ndim == 2 or arr.shape[2] in (1, 3, 4)):
            raise SlideError(
                f"{self.path.name}: unsupported pixel layout {arr.dtype} {arr.shape}; mixmag reads 8-bit "
                "RGB/RGBA/grey slides (convert multi-channel fluorescence to RGB first)"
            )
        return arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr



    def close(self) -> None:
        """Close the underlying TIFF file."""
        self._slide.close()
