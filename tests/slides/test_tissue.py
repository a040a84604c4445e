"""Tissue detection against drawn layouts, exact box fractions, and GeoJSON export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mixmag.slides.geojson import tissue_geojson, write_tissue_geojson
from mixmag.slides.tissue import TissueMask, TissueParams, detect_tissue, ink_mask
from mixmag.synth.tiff import draw_tissue_layout

BLOBS = [(500.0, 450.0, 300.0, 330.0), (1250.0, 600.0, 220.0, 160.0), (1300.0, 1100.0, 120.0, 90.0)]
SIZE = (1600, 1300)
MPP = 2.0  # 1 px = 2 µm: the whole layout is 3.2 x 2.6 mm


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _at(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(mask).resize((shape[1], shape[0]), Image.Resampling.NEAREST))


def test_detects_drawn_blobs() -> None:
    rgb, truth = draw_tissue_layout(SIZE, BLOBS, seed=1)
    tissue = detect_tissue(rgb, SIZE, MPP)
    assert tissue.background == "bright"
    assert _iou(_at(tissue.mask, truth.shape), truth) > 0.95


def test_pen_ink_is_not_tissue() -> None:
    strokes = [(60, 1250, 1540, 1200, (25, 45, 190)), (1500, 80, 1550, 900, (30, 150, 60)), (80, 60, 900, 40, (20, 20, 25))]
    rgb, truth = draw_tissue_layout(SIZE, BLOBS, seed=2, ink_strokes=strokes)
    ink = ink_mask(rgb) & ~truth
    assert ink.sum() > 10_000  # the strokes are detected as ink...
    mask = _at(detect_tissue(rgb, SIZE, MPP).mask, truth.shape)
    assert (mask & ink).sum() < 0.05 * ink.sum()  # ...and kept out of the tissue mask
    no_filter = _at(detect_tissue(rgb, SIZE, MPP, TissueParams(exclude_ink=False)).mask, truth.shape)
    assert (no_filter & ink).sum() > 0.5 * ink.sum()  # the ink filter is what removes them


def test_blank_slide_has_no_tissue() -> None:
    rgb, _ = draw_tissue_layout(SIZE, [], seed=0)
    assert not detect_tissue(rgb, SIZE, MPP).mask.any()


def test_dark_background_fluorescence() -> None:
    rng = np.random.default_rng(0)
    rgb = np.zeros((800, 1000, 3), np.uint8)
    yy, xx = np.mgrid[:800, :1000]
    truth = ((xx - 500) / 350.0) ** 2 + ((yy - 400) / 280.0) ** 2 <= 1
    rgb[..., 2] = np.where(truth, 18, 2)  # dim autofluorescence inside tissue
    nuclei = truth & (rng.random(truth.shape) < 0.03)
    rgb[nuclei, 2] = 230
    tissue = detect_tissue(rgb, (1000, 800), 1.0)
    assert tissue.background == "dark"
    assert _iou(_at(tissue.mask, truth.shape), truth) > 0.9


def test_box_fractions_are_exact_for_fractional_boxes() -> None:
    mask = np.zeros((10, 20), bool)
    mask[:, :10] = True  # left half is tissue
    tissue = TissueMask(mask=mask, level0_size=(2000, 1000), mpp=1.0, background="bright", threshold=0.1)
    boxes = np.array([[0, 0, 1000, 1000], [950, 0, 1050, 100], [925, 0, 1025, 100], [1000, 0, 2000, 1000],
                      [990, 10, 990, 20]], float)
    np.testing.assert_allclose(tissue.box_fractions(boxes), [1.0, 0.5, 0.75, 0.0, 0.0], atol=1e-6)
    # random boxes vs brute force on a 10x upsampled mask
    rng = np.random.default_rng(0)
    mask = rng.random((40, 60)) < 0.4
    tissue = TissueMask(mask=mask, level0_size=(600, 400), mpp=1.0, background="bright", threshold=0.1)
    fine = np.kron(mask, np.ones((10, 10), bool))  # 1 fine px = 1 level-0 px
    xy = rng.integers(0, [500, 300], (50, 2))
    wh = rng.integers(1, 100, (50, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [600, 400])], axis=1).astype(float)
    brute = [fine[y0:y1, x0:x1].mean() for x0, y0, x1, y1 in boxes.astype(int)]
    np.testing.assert_allclose(tissue.box_fractions(boxes), brute, atol=1e-5)


def test_geojson_polygons_in_level0(tmp_path: Path) -> None:
    rgb, truth = draw_tissue_layout(SIZE, [(800, 650, 500, 400)], seed=3)
    rgb[550:750, 700:900] = (242, 241, 244)  # a 400 x 400 µm hole: larger than max_hole, stays open
    tissue = detect_tissue(rgb, SIZE, MPP)
    geo = tissue_geojson(tissue)
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 1
    feature = geo["features"][0]
    assert feature["properties"]["objectType"] == "annotation"
    assert feature["properties"]["classification"]["name"] == "Tissue"
    rings = feature["geometry"]["coordinates"]
    assert len(rings) == 2  # exterior + the hole
    outer = np.asarray(rings[0])
    assert outer[:, 0].min() == pytest.approx(300, abs=8) and outer[:, 0].max() == pytest.approx(1300, abs=8)
    assert outer[:, 1].min() == pytest.approx(250, abs=8) and outer[:, 1].max() == pytest.approx(1050, abs=8)
    sx, sy = tissue.scale
    mask_area_level0 = tissue.mask.sum() / (sx * sy)
    assert feature["properties"]["area_level0_px"] == pytest.approx(mask_area_level0, rel=0.02)
    path = write_tissue_geojson(tmp_path / "t.geojson", tissue)
    assert json.loads(path.read_text()) == json.loads(json.dumps(geo))


def test_real_slide_masks(shared_wsi: Path) -> None:
    from mixmag.slides import open_slide

    with open_slide(shared_wsi / "CMU-1-Small-Region.svs") as s:
        thumb = s.thumbnail(1024)
        tissue = detect_tissue(thumb, s.dimensions, 0.499)
    assert 0.25 < tissue.tissue_fraction_total < 0.5  # a strip of skin on white glass
    corner = tissue.mask[: tissue.mask.shape[0] // 10, : tissue.mask.shape[1] // 10]
    assert corner.mean() < 0.05  # the top-left corner is glass
    with open_slide(shared_wsi / "test3-DAPI-2-387.ndpi") as s:
        tissue = detect_tissue(s.thumbnail(1024), s.dimensions, 0.228)
    assert tissue.background == "dark" and tissue.tissue_fraction_total > 0.6


def test_detection_through_a_written_pyramid(tmp_path: Path) -> None:
    from mixmag.slides import open_slide, resolve_mpp
    from mixmag.synth.tiff import ellipse_mask, write_pyramidal_tiff

    rgb, _ = draw_tissue_layout(SIZE, BLOBS, seed=5)
    path = write_pyramidal_tiff(tmp_path / "layout.tiff", rgb, mpp=MPP, n_levels=3)
    with open_slide(path) as s:
        tissue = detect_tissue(s.thumbnail(800), s.dimensions, resolve_mpp(s).mpp)
    h, w = tissue.mask.shape
    truth = ellipse_mask((h, w), BLOBS, scale=SIZE[0] / w)  # the drawn blobs at the mask's resolution
    assert _iou(tissue.mask, truth) > 0.93
