"""Regenerate docs/concepts/img/synthetic-cohort.png (python docs/concepts/img/make_synthetic_cohort_figure.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle

from mixmag.report.figures import new_figure, save_png
from mixmag.synth.layout import ATYPICAL, NORMAL, RING, knobs_from_difficulty, plan_slide
from mixmag.synth.painter import render_slide

OUT = Path(__file__).with_name("synthetic-cohort.png")


def box(img: np.ndarray, f: int) -> np.ndarray:
    h, w = img.shape[0] // f * f, img.shape[1] // f * f
    return img[:h, :w].reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3)).round().astype(np.uint8)


def main() -> None:
    plan_seed, paint_seed = np.random.SeedSequence(2026).spawn(2)
    plan = plan_slide(np.random.default_rng(plan_seed), label=1, width_px=2688, height_px=1792, mpp=0.5,
                      region_um=448.0, knobs=knobs_from_difficulty(0.3))
    rgb = render_slide(plan, paint_seed).rgb
    # the same slide with every unit's nuclei normal: only the chromatin grain changes
    normal = copy.deepcopy(plan)
    for r in normal.regions:
        r.nuclei = NORMAL
    rgb_normal = render_slide(normal, paint_seed).rgb

    ring = next(r for r in plan.regions if r.architecture == RING and r.nuclei == ATYPICAL)
    other = next((r for r in plan.regions if r.architecture != RING), plan.regions[0])

    def region(img: np.ndarray, r) -> np.ndarray:  # noqa: ANN001
        return img[r.y_px: r.y_px + 896, r.x_px: r.x_px + 896]

    # a 20x tile on the ring wall: the 224-px window around the first nest
    nx, ny = (ring.nests_um[0, :2] / 0.5).astype(int)
    x0 = int(np.clip(nx - 112, ring.x_px, ring.x_px + 672))
    y0 = int(np.clip(ny - 112, ring.y_px, ring.y_px + 672))
    tile_a = rgb[y0: y0 + 224, x0: x0 + 224]
    tile_n = rgb_normal[y0: y0 + 224, x0: x0 + 224]
    ox, oy = (other.nests_um[0, :2] / 0.5).astype(int)
    ox = int(np.clip(ox - 112, other.x_px, other.x_px + 672))
    oy = int(np.clip(oy - 112, other.y_px, other.y_px + 672))
    tile_o = rgb[oy: oy + 224, ox: ox + 224]

    fig = new_figure(12.0, 7.0)
    ax = fig.add_axes((0.01, 0.43, 0.47, 0.52))
    ax.imshow(box(rgb, 4))
    for r in plan.regions:
        s = 224
        x, y = r.x_px // 4, r.y_px // 4
        ax.add_patch(Rectangle((x, y), s, s, fill=False, edgecolor="white", linewidth=1.2))
        colour = "#ffd400" if r.informative else "white"
        ax.text(x + 6, y + 16, f"{r.architecture}\n{r.nuclei} nuclei", color=colour, fontsize=7.5,
                fontweight="bold" if r.informative else "normal", va="top",
                bbox={"facecolor": "black", "alpha": 0.45, "pad": 1.5, "linewidth": 0})
    ax.set_title("a  positive slide (2 µm/px) and its 448-µm region grid", fontsize=9, loc="left")
    ax.set_axis_off()

    panels = [
        (region(rgb, ring), "b  ring region at 5x: rosette of nests\n    around a lumen", 4),
        (region(rgb, other), "c  scattered region at 5x: the same nests\n    as broken-ring arcs", 4),
        (tile_o, "d  20x tile of an arc\n    (normal nuclei)", 1),
        (tile_a, "e  20x tile of the ring wall:\n    atypical granular chromatin", 1),
        (tile_n, "f  the same tile with normal nuclei", 1),
        (region(rgb, ring)[y0 - ring.y_px - 112: y0 - ring.y_px + 336, x0 - ring.x_px - 112: x0 - ring.x_px + 336],
         "g  (e) at 5x (4x4 box average)", 4),
        (region(rgb_normal, ring)[y0 - ring.y_px - 112: y0 - ring.y_px + 336, x0 - ring.x_px - 112: x0 - ring.x_px + 336],
         "h  (f) at 5x: the same picture", 4),
    ]
    slots = [(0.50, 0.43, 0.24, 0.47), (0.755, 0.43, 0.24, 0.47)]
    slots += [(0.01 + i * 0.198, 0.02, 0.18, 0.33) for i in range(5)]
    for (img, title, f), slot in zip(panels, slots, strict=True):
        a = fig.add_axes(slot)
        shown = box(img, f) if f > 1 else img
        a.imshow(shown, interpolation="nearest" if f > 1 else "antialiased")
        a.set_title(title, fontsize=8, loc="left")
        a.set_axis_off()
    save_png(fig, OUT, dpi=90)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
