"""Attention heatmaps from stored outputs: no slide pixels are re-read except the thumbnail.

Three views, each a function taking numpy arrays and returning a matplotlib Figure:

* :func:`attention_overlay` -- the slide thumbnail with one coloured square per region
  (per-region attention of a trained AB-MIL model), a colour bar, the region grid, and the top-k
  regions outlined and numbered.
* :func:`region_token_view` -- inside one region: the share of attention (or attribution) that
  went to each magnification, and the per-token scores drawn on the nested 1 + 2x2 + 4x4 grids
  (over the tiles when given).
* :func:`top_regions_figure` -- the top-k regions as image crops at 5x, 10x and 20x side by side.

Coordinates are level-0 pixels (x, y) of each region's top-left corner, as in the region index;
arrays are indexed [row=y, col=x]. :func:`write_slide_heatmaps` writes all three PNGs of a slide.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.collections import PatchCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from mixmag.errors import MixmagValueError
from mixmag.geometry import RegionSpec, magnification_label
from mixmag.io.regions import RegionIndex
from mixmag.report.figures import DEFAULT_DPI, new_figure, save_png
from mixmag.slides import open_slide
from mixmag.tiling.extract import RegionTileReader

logger = logging.getLogger(__name__)

SCALES = ("minmax", "rank", "raw")


def scale_scores(scores: np.ndarray, scale: str = "minmax") -> tuple[np.ndarray, str]:
    """Map scores to [0, 1] for display; returns (values, colour-bar label).

    ``minmax`` stretches the slide's range, ``rank`` uses percentile ranks (robust to one
    dominant region), ``raw`` divides by the maximum (keeps ratios).
    """
    s = np.asarray(scores, dtype=np.float64)
    if scale not in SCALES:
        raise MixmagValueError(f"unknown scale {scale!r}; use one of {', '.join(SCALES)}")
    if s.size == 0:
        return s, "attention"
    if scale == "rank":
        order = s.argsort(kind="stable").argsort(kind="stable")
        return order / max(len(s) - 1, 1), "attention (percentile rank)"
    if scale == "raw":
        top = s.max()
        return (s / top if top > 0 else s), "attention / max"
    lo, hi = s.min(), s.max()
    return ((s - lo) / (hi - lo) if hi > lo else np.full_like(s, 0.5)), "attention (min-max scaled)"


def top_k_regions(attention: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest-attention regions, highest first (ties: lower index first)."""
    a = np.asarray(attention, dtype=np.float64)
    order = np.lexsort((np.arange(len(a)), -a))
    return order[: max(0, min(k, len(a)))]


def attention_overlay(
    thumbnail: np.ndarray,
    *,
    level0_size: tuple[int, int],
    coords: np.ndarray,
    region_size_level0: float,
    attention: np.ndarray,
    scale: str = "minmax",
    cmap: str = "inferno",
    alpha: float = 0.6,
    show_grid: bool = True,
    top_k: int = 0,
    title: str | None = None,
    width_in: float = 8.0,
) -> Figure:
    """Slide thumbnail with per-region attention.

    Args:
        thumbnail: uint8 (h, w, 3) thumbnail of the whole slide.
        level0_size: (width, height) of level 0 in pixels (maps coords onto the thumbnail).
        coords: (R, 2) level-0 (x, y) top-left corners of the regions.
        region_size_level0: Region side in level-0 pixels (896 at 0.5 µm/px for 448 µm).
        attention: (R,) attention per region (any non-negative score).
        scale: Colour scaling, see :func:`scale_scores`.
        cmap: Matplotlib colormap name.
        alpha: Opacity of the coloured squares.
        show_grid: Outline every region.
        top_k: Outline and number the ``top_k`` highest regions (as in :func:`top_regions_figure`).
        title: Figure title.
        width_in: Figure width in inches; the height follows the thumbnail's aspect ratio.

    Returns:
        The figure (``width_in`` x computed height inches).
    """
    thumb = np.asarray(thumbnail)
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    att = np.asarray(attention, dtype=np.float64).reshape(-1)
    if len(att) != len(coords):
        raise MixmagValueError(f"attention has {len(att)} values but there are {len(coords)} regions")
    h, w = thumb.shape[:2]
    sx, sy = w / level0_size[0], h / level0_size[1]
    values, label = scale_scores(att, scale)
    value_map = np.full((h, w), np.nan)
    boxes = []
    for (x, y), v in zip(coords, values, strict=True):
        x0, y0 = int(round(x * sx)), int(round(y * sy))
        x1, y1 = int(round((x + region_size_level0) * sx)), int(round((y + region_size_level0) * sy))
        value_map[max(y0, 0): max(y1, 0), max(x0, 0): max(x1, 0)] = v
        boxes.append((x0, y0, x1 - x0, y1 - y0))

    img_w = 0.86  # fraction of the width for the image; the colour bar sits to its right
    top = 0.9 if title else 0.98
    height_in = width_in * img_w * h / w / (top - 0.02)
    fig = new_figure(width_in, height_in)
    ax = fig.add_axes((0.01, 0.02, img_w, top - 0.02))
    ax.imshow(thumb, extent=(0, w, h, 0), interpolation="antialiased")
    norm = Normalize(0.0, 1.0)
    mappable = ax.imshow(np.ma.masked_invalid(value_map), cmap=cmap, norm=norm, alpha=alpha,
                         extent=(0, w, h, 0), interpolation="nearest")
    if show_grid and boxes:
        ax.add_collection(PatchCollection([Rectangle((bx, by), bw, bh) for bx, by, bw, bh in boxes],
                                          facecolor="none", edgecolor="white", linewidth=0.4, alpha=0.5))
    for rank, i in enumerate(top_k_regions(att, top_k), start=1):
        bx, by, bw, bh = boxes[i]
        ax.add_patch(Rectangle((bx, by), bw, bh, facecolor="none", edgecolor="#00e5ff", linewidth=1.5))
        ax.text(bx + 2, by + 2, str(rank), color="#00e5ff", fontsize=9, fontweight="bold", va="top")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    cax = fig.add_axes((img_w + 0.03, 0.1, 0.022, 0.75))
    fig.colorbar(mappable, cax=cax, label=label)
    if title:
        fig.suptitle(title, y=0.985, fontsize=10)
    return fig


def token_mosaic(tiles: np.ndarray, spec: RegionSpec, mag_index: int) -> np.ndarray:
    """The n x n tiles of one magnification assembled into one (n*tp, n*tp, 3) image."""
    layout = spec.layout()
    sel = np.flatnonzero(layout.mag_index == mag_index)
    n = spec.tiles_per_side(spec.mpps[mag_index])
    tp = tiles.shape[1]
    out = np.zeros((n * tp, n * tp, tiles.shape[-1]), dtype=tiles.dtype)
    for t in sel:
        r, c = layout.grid_rc[t]
        out[r * tp: (r + 1) * tp, c * tp: (c + 1) * tp] = tiles[t]
    return out


def magnification_shares(token_scores: np.ndarray, spec: RegionSpec) -> np.ndarray:
    """(M,) share of the total |score| carried by each magnification's tokens (coarsest first)."""
    s = np.abs(np.asarray(token_scores, dtype=np.float64))
    mags = spec.layout().mag_index
    totals = np.array([s[mags == m].sum() for m in range(len(spec.mpps))])
    return totals / totals.sum() if totals.sum() > 0 else totals


def region_token_view(
    token_scores: np.ndarray,
    *,
    spec: RegionSpec,
    tiles: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    title: str | None = None,
    score_label: str = "attention",
    cmap: str | None = None,
    panel_in: float = 2.4,
) -> Figure:
    """Which magnification drove a region's score, and which tokens inside it.

    Args:
        token_scores: (T,) per-token attention or attribution in token order
            ([5x, 10x 2x2, 20x 4x4] for the default spec); signed scores use a diverging map.
        spec: Region geometry (token layout and magnification labels).
        tiles: Optional uint8 (T, tile_px, tile_px, 3) tiles, drawn under the scores.
        valid: Optional (T,) bool; invalid tokens (no tissue) are hatched.
        title: Figure title.
        score_label: Name of the score on the colour bar.
        cmap: Colormap; default ``inferno`` for non-negative scores, ``RdBu_r`` for signed.
        panel_in: Size of each grid panel in inches.
    """
    layout = spec.layout()
    scores = np.asarray(token_scores, dtype=np.float64).reshape(-1)
    if len(scores) != layout.n_tokens:
        raise MixmagValueError(f"expected {layout.n_tokens} token scores for this spec, got {len(scores)}")
    signed = bool((scores < 0).any())
    vmax = float(np.abs(scores).max()) or 1.0
    norm = Normalize(-vmax, vmax) if signed else Normalize(0.0, vmax)
    cmap = cmap or ("RdBu_r" if signed else "inferno")
    n_mag = len(spec.mpps)
    # Layout in inches: [bar chart][gap][panel][gap][panel]...[colour bar + label].
    bar_in, gap_in, cbar_in, head_in, foot_in = 1.9, 0.25, 0.9, (0.7 if title else 0.35), 0.35
    width = 0.75 + bar_in + 0.35 + n_mag * (panel_in + gap_in) + cbar_in
    height = panel_in + head_in + foot_in
    fx, fy = 1.0 / width, 1.0 / height

    fig = new_figure(width, height)
    bar = fig.add_axes((0.75 * fx, (foot_in + 0.1) * fy, bar_in * fx, (panel_in - 0.2) * fy))
    shares = magnification_shares(scores, spec)
    labels = [magnification_label(m) for m in spec.mpps]
    palette = ["#6a51a3", "#3182bd", "#31a354"]
    bar.bar(range(n_mag), shares * 100, color=[palette[i % 3] for i in range(n_mag)])
    bar.set_xticks(range(n_mag), labels)
    bar.set_ylabel(f"share of |{score_label}| (%)")
    bar.set_ylim(0, 105)
    for i, v in enumerate(shares):
        bar.text(i, v * 100 + 2, f"{v * 100:.0f}%", ha="center", fontsize=8)

    mappable = None
    x = 0.75 + bar_in + 0.35
    for m, mpp in enumerate(spec.mpps):
        n = spec.tiles_per_side(mpp)
        ax = fig.add_axes((x * fx, foot_in * fy, panel_in * fx, panel_in * fy))
        x += panel_in + gap_in
        sel = np.flatnonzero(layout.mag_index == m)
        grid = np.full((n, n), np.nan)
        for t in sel:
            grid[tuple(layout.grid_rc[t])] = scores[t]
        if tiles is not None:
            ax.imshow(token_mosaic(np.asarray(tiles), spec, m), extent=(0, n, n, 0), interpolation="antialiased")
        mappable = ax.imshow(grid, cmap=cmap, norm=norm, alpha=0.45 if tiles is not None else 1.0,
                             extent=(0, n, n, 0), interpolation="nearest")
        for k in range(n + 1):
            ax.axhline(k, color="white", linewidth=0.8)
            ax.axvline(k, color="white", linewidth=0.8)
        if valid is not None:
            for t in sel:
                if not valid[t]:
                    r, c = layout.grid_rc[t]
                    ax.add_patch(Rectangle((c, r), 1, 1, facecolor="none", edgecolor="grey", hatch="///"))
        ax.set_xlim(0, n)
        ax.set_ylim(n, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{labels[m]} ({mpp:g} µm/px): {n}x{n}", fontsize=9)
    if mappable is not None:
        cax = fig.add_axes(((x - gap_in + 0.12) * fx, foot_in * fy, 0.14 * fx, panel_in * fy))
        fig.colorbar(mappable, cax=cax, label=score_label)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.12 * fy)
    return fig


def top_regions_figure(
    tiles: np.ndarray,
    *,
    spec: RegionSpec,
    scores: Sequence[float] | None = None,
    labels: Sequence[str] | None = None,
    token_scores: np.ndarray | None = None,
    title: str | None = None,
    panel_in: float = 2.3,
) -> Figure:
    """Top-k regions as crops at every magnification, side by side (one row per region).

    The first column is the whole region at the coarsest magnification. With ``token_scores``
    each further column shows that magnification's highest-scoring tile at its own resolution
    (outlined on the first column, titled with the magnification's share of the region's
    |score|); without them it shows the magnification's full n x n mosaic. At the default
    ``panel_in`` and 100 dpi a 224-px tile is drawn at about its native size.

    Args:
        tiles: uint8 (k, T, tile_px, tile_px, 3) tiles of the k regions in token order (read by the
            caller, e.g. with :func:`read_region_tiles`).
        spec: Region geometry.
        scores: (k,) region attention, printed on each row.
        labels: (k,) row labels, e.g. the level-0 coordinates.
        token_scores: Optional (k, T) per-token scores.
        title: Figure title.
        panel_in: Side of each image panel in inches.
    """
    tiles = np.asarray(tiles)
    if tiles.ndim != 5:
        raise ValueError(f"tiles must be (k, T, px, px, 3), got shape {tiles.shape}")
    layout = spec.layout()
    k, n_mag = tiles.shape[0], len(spec.mpps)
    label_in, head_in, row_in = 1.2, (0.55 if title else 0.2), panel_in + 0.35
    width, height = label_in + n_mag * (panel_in + 0.15), head_in + max(k, 1) * row_in
    fx, fy = 1.0 / width, 1.0 / height
    colours = ["#00e5ff", "#7CFC00", "#ffd400", "#ff4fd8"]
    fig = new_figure(width, height)
    for row in range(k):
        bottom = (max(k, 1) - 1 - row) * row_in + 0.1
        shares = magnification_shares(token_scores[row], spec) if token_scores is not None else None
        coarse_ax = None
        for m, mpp in enumerate(spec.mpps):
            ax = fig.add_axes(((label_in + m * (panel_in + 0.15)) * fx, bottom * fy, panel_in * fx, panel_in * fy))
            ax.set_xticks([])
            ax.set_yticks([])
            name = f"{magnification_label(mpp)} ({mpp:g} µm/px)"
            n = spec.tiles_per_side(mpp)
            if token_scores is None or n == 1:
                ax.imshow(token_mosaic(tiles[row], spec, m), interpolation="antialiased")
                detail = "" if n == 1 else f" {n}x{n}"
            else:
                sel = np.flatnonzero(layout.mag_index == m)
                best = int(sel[np.argmax(np.abs(np.asarray(token_scores[row])[sel]))])
                ax.imshow(tiles[row, best], interpolation="antialiased")
                r, c = layout.grid_rc[best]
                detail = f" top tile ({r},{c})"
                colour = colours[m % len(colours)]
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(2)
                if coarse_ax is not None:  # outline where that tile lies in the whole region
                    size = tiles.shape[2] / n
                    coarse_ax.add_patch(Rectangle((c * size, r * size), size, size, facecolor="none",
                                                  edgecolor=colour, linewidth=1.5))
            if m == 0:
                coarse_ax = ax
            share = f", {shares[m] * 100:.0f}%" if shares is not None else ""
            ax.set_title(f"{name}{detail}{share}", fontsize=7.5)
        text = f"#{row + 1}"
        if labels is not None:
            text += f"\n{labels[row]}"
        if scores is not None:
            text += f"\nattn {scores[row]:.3g}"
        fig.text(0.1 * fx, (bottom + panel_in / 2) * fy, text, fontsize=8, va="center")
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.1 * fy)
    return fig


def read_region_tiles(slide_path: str | os.PathLike[str], index: RegionIndex, regions: Sequence[int] | np.ndarray,
                      reader: str | None = None) -> np.ndarray:
    """uint8 (k, T, tile_px, tile_px, 3) tiles of ``regions`` of a region index, read from the slide.

    The only pixel reading the heatmaps need besides the thumbnail (for the top-k crops).
    """
    with open_slide(slide_path, reader=reader) as slide:
        tile_reader = RegionTileReader(slide, index)
        return np.stack([tile_reader.read_region_tiles(int(r)) for r in regions])


def write_slide_heatmaps(
    out_dir: str | os.PathLike[str],
    *,
    slide_id: str,
    thumbnail: np.ndarray,
    level0_size: tuple[int, int],
    coords: np.ndarray,
    region_size_level0: float,
    attention: np.ndarray,
    spec: RegionSpec,
    token_scores: np.ndarray | None = None,
    top_tiles: np.ndarray | None = None,
    top_k: int = 4,
    valid: np.ndarray | None = None,
    dpi: int = DEFAULT_DPI,
) -> dict[str, Path]:
    """Write ``<slide_id>_attention.png``, ``_region.png`` and ``_top.png`` into ``out_dir``.

    Args:
        token_scores: (R, T) per-token scores; enables the within-region view of the top region.
        top_tiles: (k, T, px, px, 3) tiles of the ``top_k`` regions (in :func:`top_k_regions` order).
        valid: (R, T) token validity, hatched in the within-region view.
        Other arguments: see :func:`attention_overlay`.

    Returns:
        {"attention": path, "region": path, "top": path} for the figures that were written.
    """
    out = Path(out_dir)
    top = top_k_regions(attention, top_k)
    written = {"attention": save_png(attention_overlay(
        thumbnail, level0_size=level0_size, coords=coords, region_size_level0=region_size_level0,
        attention=attention, top_k=top_k, title=f"{slide_id}: region attention"),
        out / f"{slide_id}_attention.png", dpi)}
    if token_scores is not None and len(top):
        best = int(top[0])
        x, y = (int(v) for v in np.asarray(coords)[best])
        written["region"] = save_png(region_token_view(
            np.asarray(token_scores)[best], spec=spec, tiles=None if top_tiles is None else top_tiles[0],
            valid=None if valid is None else np.asarray(valid)[best],
            title=f"{slide_id}: top region at level-0 ({x}, {y})"), out / f"{slide_id}_region.png", dpi)
    if top_tiles is not None and len(top):
        labels = [f"({int(c[0])}, {int(c[1])})" for c in np.asarray(coords)[top]]
        ts = None if token_scores is None else np.asarray(token_scores)[top]
        written["top"] = save_png(top_regions_figure(
            top_tiles[: len(top)], spec=spec, scores=np.asarray(attention)[top], labels=labels, token_scores=ts,
            title=f"{slide_id}: top-{len(top)} regions"), out / f"{slide_id}_top.png", dpi)
    logger.info("wrote %d heatmap figures for %s", len(written), slide_id)
    return written
