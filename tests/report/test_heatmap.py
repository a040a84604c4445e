"""Heatmap figures: sizes, colours where the attention is, per-magnification shares, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from mixmag.geometry import RegionSpec
from mixmag.report.figures import figure_pixels, save_png
from mixmag.report.heatmap import (
    attention_overlay,
    magnification_shares,
    region_token_view,
    scale_scores,
    token_mosaic,
    top_k_regions,
    top_regions_figure,
    write_slide_heatmaps,
)

SPEC = RegionSpec()
DPI = 100


def _pixel_at(fig, ax, xy: tuple[float, float], pixels: np.ndarray) -> np.ndarray:
    """Colour of the rendered figure at data coordinates ``xy`` of ``ax``."""
    x, y = ax.transData.transform(xy)
    return pixels[int(round(pixels.shape[0] - y)), int(round(x))].astype(float)


def _grid_case():
    thumb = np.full((200, 300, 3), 128, np.uint8)
    coords = np.array([(c * 1000, r * 1000) for r in range(2) for c in range(3)])
    attention = np.array([0.01, 0.1, 0.15, 0.2, 0.5, 0.04])
    return thumb, coords, attention


def test_overlay_size_and_colours_follow_attention(tmp_path: Path) -> None:
    thumb, coords, attention = _grid_case()
    fig = attention_overlay(thumb, level0_size=(3000, 2000), coords=coords, region_size_level0=1000,
                            attention=attention, alpha=1.0, show_grid=False, width_in=6.0)
    path = save_png(fig, tmp_path / "a.png", dpi=DPI)
    w_in, h_in = fig.get_size_inches()
    assert Image.open(path).size == (round(w_in * DPI), round(h_in * DPI))
    px = figure_pixels(fig, DPI)
    ax = fig.axes[0]
    cmap = colormaps["inferno"]
    top = np.array(cmap(1.0)[:3]) * 255
    bottom = np.array(cmap(0.0)[:3]) * 255
    # region 4 (row 1, col 1) has the most attention; region 0 the least (thumbnail px = level-0 / 10)
    assert np.abs(_pixel_at(fig, ax, (150, 150), px) - top).max() < 12
    assert np.abs(_pixel_at(fig, ax, (50, 50), px) - bottom).max() < 12
    # a region of middle attention has a middle colour, neither extreme
    mid = _pixel_at(fig, ax, (250, 50), px)
    assert np.abs(mid - top).max() > 30 and np.abs(mid - bottom).max() > 30


def test_overlay_rejects_mismatched_lengths() -> None:
    thumb, coords, attention = _grid_case()
    with pytest.raises(ValueError, match="6 regions"):
        attention_overlay(thumb, level0_size=(3000, 2000), coords=coords, region_size_level0=1000,
                          attention=attention[:5])


def test_scales_and_top_k() -> None:
    a = np.array([0.2, 0.5, 0.1, 0.5])
    assert list(top_k_regions(a, 3)) == [1, 3, 0]
    v, _ = scale_scores(a, "minmax")
    assert v.min() == 0 and v.max() == 1
    r, _ = scale_scores(a, "rank")
    assert r[2] == 0 and r.max() == 1
    with pytest.raises(ValueError, match="unknown scale"):
        scale_scores(a, "log")


def test_region_token_view_puts_the_peak_in_the_right_cell() -> None:
    scores = np.full(SPEC.n_tokens, 0.01)
    layout = SPEC.layout()
    peak = int(np.flatnonzero((layout.mag_index == 2) & (layout.grid_rc[:, 0] == 2) & (layout.grid_rc[:, 1] == 1))[0])
    scores[peak] = 1.0
    shares = magnification_shares(scores, SPEC)
    assert shares.sum() == pytest.approx(1.0) and shares.argmax() == 2
    fig = region_token_view(scores, spec=SPEC, title="t")
    px = figure_pixels(fig, DPI)
    ax20 = fig.axes[3]
    top = np.array(colormaps["inferno"](1.0)[:3]) * 255
    assert np.abs(_pixel_at(fig, ax20, (1.5, 2.5), px) - top).max() < 12  # column 1, row 2
    assert np.abs(_pixel_at(fig, ax20, (2.5, 1.5), px) - top).max() > 60
    with pytest.raises(ValueError, match="21 token scores"):
        region_token_view(scores[:5], spec=SPEC)


def _coloured_tiles(k: int) -> np.ndarray:
    """Each magnification's tiles one solid colour: 5x red, 10x green, 20x blue."""
    tiles = np.zeros((k, SPEC.n_tokens, 224, 224, 3), np.uint8)
    for m, s in enumerate(SPEC.token_slices().values()):
        tiles[:, s, :, :, m] = 200
    return tiles


def test_token_mosaic_layout() -> None:
    tiles = np.zeros((SPEC.n_tokens, 4, 4, 3), np.uint8)
    for t in range(SPEC.n_tokens):
        tiles[t] = t
    mosaic = token_mosaic(tiles, SPEC, 2)
    assert mosaic.shape == (16, 16, 3)
    assert mosaic[0, 4, 0] == 6 and mosaic[4, 0, 0] == 9  # 20x tokens 5..20 row-major


def test_top_regions_figure_shows_each_magnification() -> None:
    tiles = _coloured_tiles(2)
    fig = top_regions_figure(tiles, spec=SPEC, scores=[0.4, 0.2], labels=["(0, 0)", "(896, 0)"])
    px = figure_pixels(fig, DPI)
    for m, colour in enumerate(([200, 0, 0], [0, 200, 0], [0, 0, 200])):
        ax = fig.axes[m]  # first row, magnification m
        x0, x1 = ax.get_xlim()
        y1, y0 = ax.get_ylim()
        assert np.abs(_pixel_at(fig, ax, ((x0 + x1) / 2, (y0 + y1) / 2), px) - colour).max() < 8
    with pytest.raises(ValueError, match="k, T, px, px, 3"):
        top_regions_figure(tiles[0], spec=SPEC)


def test_write_slide_heatmaps(tmp_path: Path) -> None:
    thumb, coords, attention = _grid_case()
    tokens = np.random.default_rng(0).random((len(coords), SPEC.n_tokens))
    written = write_slide_heatmaps(tmp_path, slide_id="s1", thumbnail=thumb, level0_size=(3000, 2000),
                                   coords=coords, region_size_level0=1000, attention=attention, spec=SPEC,
                                   token_scores=tokens, top_tiles=_coloured_tiles(2), top_k=2)
    assert set(written) == {"attention", "region", "top"}
    for path in written.values():
        assert path.is_file() and Image.open(path).format == "PNG"
