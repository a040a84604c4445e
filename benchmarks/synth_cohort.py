"""Speed of the synthetic cohort generator: per-slide stages and a whole cohort.

Usage: python benchmarks/synth_cohort.py [--quick] [--slides N] [--workers W] [--size 2688x1792]

Prints seconds per slide for planning, painting and TIFF writing (median of a few slides), then
the wall time of ``make_synthetic_cohort`` for N slides with W worker processes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mixmag.synth import make_synthetic_cohort
from mixmag.synth.layout import knobs_from_difficulty, plan_slide
from mixmag.synth.painter import render_slide
from mixmag.synth.tiff import write_pyramidal_tiff


def per_slide(n: int, size: tuple[int, int], folder: Path) -> dict[str, float]:
    times: dict[str, list[float]] = {"plan": [], "paint": [], "write": []}
    for i, seed in enumerate(np.random.SeedSequence(0).spawn(n)):
        plan_seed, paint_seed = seed.spawn(2)
        t0 = time.perf_counter()
        plan = plan_slide(np.random.default_rng(plan_seed), label=i % 2, width_px=size[0], height_px=size[1],
                          mpp=0.5, region_um=448.0, knobs=knobs_from_difficulty(0.5))
        t1 = time.perf_counter()
        rgb = render_slide(plan, paint_seed).rgb
        t2 = time.perf_counter()
        write_pyramidal_tiff(folder / f"s{i}.tiff", rgb, mpp=0.5, n_levels=3)
        t3 = time.perf_counter()
        times["plan"].append(t1 - t0)
        times["paint"].append(t2 - t1)
        times["write"].append(t3 - t2)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 slides per-stage, 6-slide cohort")
    parser.add_argument("--slides", type=int, default=40, help="cohort size for the end-to-end timing")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--size", default="2688x1792")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    n_stage, n_cohort = (3, 6) if args.quick else (5, args.slides)
    with tempfile.TemporaryDirectory() as tmp:
        stages = per_slide(n_stage, size, Path(tmp))
        mpx = size[0] * size[1] / 1e6
        print(f"per slide ({size[0]}x{size[1]} = {mpx:.1f} Mpx, median of {n_stage}): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items())
              + f"; total {sum(stages.values()):.2f} s ({sum(stages.values()) / mpx:.2f} s/Mpx)")
        t0 = time.perf_counter()
        make_synthetic_cohort(Path(tmp) / "cohort", n_slides=n_cohort, slide_px=size, workers=args.workers,
                              progress=False)
        wall = time.perf_counter() - t0
        print(f"cohort of {n_cohort} slides with {args.workers} worker(s): {wall:.1f} s wall "
              f"({wall / n_cohort:.2f} s/slide)")


if __name__ == "__main__":
    main()
