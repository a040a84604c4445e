"""Regenerate docs/concepts/img/synth-cords.png (python docs/concepts/img/make_cords_figure.py).

One 2-cell slide of the *cords* structure with 2 x 2-region cells at 5x (2 µm/px): left cell
cords (parallel dashed rows of nests), right cell the same runs scattered; a 112-µm 20x tile
(inset boxes) sees one straight run in either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle

from mixmag.report.figures import new_figure, save_png
from mixmag.synth.layout import CORDS, SCATTERED, knobs_from_difficulty, plan_slide
from mixmag.synth.painter import render_slide

OUT = Path(__file__).with_name("synth-cords.png")


def main() -> None:
    plan = plan_slide(np.random.default_rng(1), label=1, width_px=4 * 896, height_px=2 * 896, mpp=0.5,
                      region_um=896.0, knobs=knobs_from_difficulty(0.3), structure="cords")
    for region, arch in zip(plan.regions, (CORDS, SCATTERED), strict=True):
        assert region.architecture == arch, "seed no longer gives one cords and one scattered cell"
    rgb = render_slide(plan, np.random.SeedSequence(3)).rgb
    f = 4  # 0.5 -> 2 µm/px (5x)
    h, w = rgb.shape[0] // f * f, rgb.shape[1] // f * f
    five = rgb[:h, :w].reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    fig = new_figure(9.0, 4.9)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(five)
    ax.axvline(five.shape[1] / 2, color="white", lw=2)
    for x0 in (120, 120 + five.shape[1] // 2):  # a 112-µm 20x tile = 56 px at 2 µm/px
        ax.add_patch(Rectangle((x0, 200), 56, 56, fill=False, ec="yellow", lw=1.5))
    ax.set_title("cords (left) vs the same runs scattered (right), 5x; yellow: one 20x tile", fontsize=10)
    ax.set_axis_off()
    save_png(fig, OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
