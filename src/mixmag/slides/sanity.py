"""Input sanity checks: a slide compared with what the pipeline assumes, 8-bit bright-field RGB.

Readers, tissue detection and every tile encoder assume 8-bit RGB bright-field pixels (H&E, IHC).
Other slides do not fail on their own, they give silently wrong results; measured on generated
TIFFs (tests/slides/test_input_sanity.py):

* 16-bit samples: OpenSlide keeps the high byte of each sample, tiffslide refuses to read them.
  Full-range 16-bit data then happens to look right, but 12-bit data stored in 16 bits (most
  cameras) becomes values 4-15: detected as a *dark* slide with 74 % "tissue" and tiled as such.
  16-bit greyscale PNGs become all white. So any sample depth other than 8 bits is an **error**:
  the conversion to 8 bits (window, gamma) is the user's choice.
* several single-channel planes (multiplex fluorescence, ``C``/``Q`` axes): OpenSlide reads the
  first plane only, as grey. **Error**.
* one 8-bit channel (greyscale): copied into R, G and B. Bright-field detection thresholds
  saturation, which grey pixels do not have, so it finds no tissue. **Warning**.
* several RGB planes (z-stack, time): the first is tiled. **Warning**.
* a dark background (fluorescence): tissue is detected as signal on black, but encoders
  trained on H&E see images unlike anything they learned. **Warning**.
* almost no tissue (< :data:`LOW_TISSUE_FRACTION` of the slide): usually a blank, out-of-focus or
  wrongly thresholded slide. **Warning** (the slide is ``empty`` when no region passes).

Warnings are one line each, carry a short code, and are recorded by the tiler in the manifest's
``warnings`` column and the region index's ``input_warnings`` attribute.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from mixmag.slides.base import SlideError
from mixmag.slides.tissue import TissueMask, TissueParams

logger = logging.getLogger(__name__)

LOW_TISSUE_FRACTION = 0.01
"""Below this share of the slide, detected tissue is reported as "almost nothing"."""

# Files that tifffile can describe (OpenSlide/tiffslide formats built on TIFF) and plain images.
_TIFF_SUFFIXES = frozenset({".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".qptiff", ".btf"})
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
# PIL modes of plain images: (bits per sample, channels)
_PIL_MODES: dict[str, tuple[int, int]] = {
    "1": (1, 1), "L": (8, 1), "LA": (8, 2), "P": (8, 3), "PA": (8, 4), "RGB": (8, 3), "RGBA": (8, 4),
    "RGBX": (8, 3), "CMYK": (8, 4), "YCbCr": (8, 3), "LAB": (8, 3), "HSV": (8, 3), "I": (32, 1), "F": (32, 1),
    "I;16": (16, 1), "I;16L": (16, 1), "I;16B": (16, 1), "I;16N": (16, 1),
}


@dataclass(frozen=True)
class PixelFormat:
    """How the level-0 pixels of a slide are stored in the file.

    Attributes:
        bits: Bits per sample (8 for ordinary slides).
        samples: Samples per pixel (3 RGB/YCbCr, 4 RGBA/CMYK, 1 grey or one fluorescence channel).
        planes: Images in the first series beside y/x/samples (channels, z, time as separate pages).
        photometric: Colour interpretation: the TIFF ``Photometric`` name or the PIL mode.
        planes_axes: tifffile axes letters of those planes ("" when 1).
    """

    bits: int
    samples: int
    planes: int = 1
    photometric: str = ""
    planes_axes: str = ""

    def describe(self) -> str:
        """E.g. ``16-bit, 3 samples (RGB)`` or ``8-bit, 1 sample (MINISBLACK), 4 planes (Q)``."""
        text = f"{self.bits}-bit, {self.samples} sample{'s' if self.samples != 1 else ''}"
        if self.photometric:
            text += f" ({self.photometric})"
        if self.planes > 1:
            text += f", {self.planes} planes ({self.planes_axes})"
        return text


@dataclass(frozen=True)
class InputWarning:
    """One thing about a slide that makes results doubtful; ``message`` says what was found and what to do.

    Attributes:
        code: Short stable key (``greyscale``, ``dark-background``, ``low-tissue``, ``extra-planes``).
        message: One line, without the slide name (callers add it).
    """

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def probe_pixel_format(path: str | os.PathLike[str]) -> PixelFormat | None:
    """Read the sample depth and channel layout of a slide's level 0 from its file header.

    Only headers are read (milliseconds). TIFF-based slides are described by tifffile, whichever
    backend reads their pixels, plain images by PIL.

    Returns:
        The format, or None when the file type carries no such header here (MIRAX, DICOM ...) or
        it cannot be parsed (the reader reports unreadable files itself).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    try:
        if suffix in _TIFF_SUFFIXES:
            return _probe_tiff(p)
        if suffix in _IMAGE_SUFFIXES:
            return _probe_image(p)
    except Exception as exc:  # noqa: BLE001 - a header this probe cannot parse: no opinion, the reader decides
        logger.debug("%s: pixel format not probed (%s: %s)", p.name, type(exc).__name__, exc)
    return None


def _probe_tiff(path: Path) -> PixelFormat:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        page = series.levels[0].keyframe
        planes_axes = "".join(a for a in series.axes if a not in "YXS")
        shape = dict(zip(series.axes, series.shape, strict=True))
        planes = math.prod(shape[a] for a in planes_axes)
        photometric = getattr(page.photometric, "name", None) or _photometric_name(int(page.photometric))
        return PixelFormat(bits=int(page.bitspersample), samples=int(page.samplesperpixel), planes=planes,
                           photometric=photometric, planes_axes=planes_axes if planes > 1 else "")


def _photometric_name(value: int) -> str:
    import tifffile

    try:
        return tifffile.PHOTOMETRIC(value).name
    except ValueError:
        return str(value)


def _probe_image(path: Path) -> PixelFormat | None:
    from PIL import Image

    with Image.open(path) as img:  # header only
        bits, samples = _PIL_MODES.get(img.mode, (0, 0))
        if not bits:
            return None
        return PixelFormat(bits=bits, samples=samples, photometric=img.mode)


def check_pixel_format(fmt: PixelFormat | None, name: str) -> list[InputWarning]:
    """Refuse formats that would be tiled wrongly; return warnings for doubtful ones.

    Args:
        fmt: From :func:`probe_pixel_format` (None: nothing to check).
        name: Slide file name, for messages.

    Raises:
        SlideError: Samples are not 8-bit, or several single-channel planes (multiplex
            fluorescence); the message says how to convert the slide.
    """
    if fmt is None:
        return []
    if fmt.bits != 8:
        raise SlideError(
            f"{name}: {fmt.describe()}: mixmag tiles and embeds 8-bit RGB only, and OpenSlide would keep just the "
            f"high byte of each sample (12-bit data turns almost black, 16-bit grey PNGs white). Convert the slide to "
            f"8-bit RGB with the intensity window you want (e.g. QuPath or `vips scale`) and tile the converted file"
        )
    if fmt.planes > 1 and fmt.samples == 1:
        raise SlideError(
            f"{name}: {fmt.describe()}: a multi-channel (multiplex fluorescence) image; the readers would show only "
            f"its first channel as grey. Compose the channels into one 8-bit RGB image (e.g. QuPath: Export as RGB) "
            f"and tile that file"
        )
    warnings = []
    if fmt.planes > 1:
        warnings.append(InputWarning(
            "extra-planes", f"{fmt.describe()}: only the first plane (z/time/channel) is tiled; export the plane you "
                            "want as its own slide if that is not the right one"))
    if fmt.samples == 1 or fmt.photometric in ("MINISBLACK", "MINISWHITE", "L", "LA"):
        warnings.append(InputWarning(
            "greyscale", f"{fmt.describe()}: a greyscale image, copied into R, G and B; bright-field tissue detection "
                         "needs colour (it finds little or no tissue) and H&E-trained encoders expect colour; tile a "
                         "colour (RGB) scan of the slide instead"))
    return warnings


def check_tissue(tissue: TissueMask, params: TissueParams | None = None) -> list[InputWarning]:
    """Warnings about what tissue detection found: a fluorescence-like slide, almost no tissue.

    Args:
        tissue: The detected mask (:func:`~mixmag.slides.tissue.detect_tissue`).
        params: The settings it was detected with; a dark background is reported only when it was
            detected (``background="auto"``), not when the user asked for it.
    """
    params = params or TissueParams()
    warnings = []
    if tissue.background == "dark" and params.background == "auto":
        warnings.append(InputWarning(
            "dark-background", "dark background detected (fluorescence?): tissue is taken as bright signal on black, "
                               "and H&E-trained encoders give features not comparable with bright-field slides; keep "
                               "it out of H&E cohorts (if it is bright-field, check the QC picture)"))
    fraction = tissue.tissue_fraction_total
    if fraction < LOW_TISSUE_FRACTION:
        warnings.append(InputWarning(
            "low-tissue", f"tissue detection found almost nothing ({100 * fraction:.2f}% of the slide, "
                          f"{tissue.background} background); check the QC picture for a blank, faint or "
                          "out-of-focus slide or missed tissue"))
    return warnings
