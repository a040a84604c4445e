"""Embedding throughput of the ray backend against the local backend on this machine, and memory.

One run, on the same slides, the same model and the same cores:

* ``local``: ``embed_slides`` in a child process (the model's threads on every usable core,
  decoding inline), as ``mixmag embed`` runs;
* ``ray``: ``embed_slides(backend="ray")`` in a child process, against a one-node Ray cluster
  started here with ``ray start --head --num-cpus C`` (C = the usable cores): C actors of one
  CPU each (``--cpus-per-worker``), every one holding the model and embedding whole slides.

The two alternate (local, ray, then ray, local, ...) for ``--rounds`` rounds, so a drift of this
machine's speed hits both; tiles/s is end to end (``EmbedSummary.n_tiles / seconds``: model
build, Ray actors' start-up and every slide, not the interpreter start). Reported: tiles/s of each
run, the median ratio ray/local (target >= 0.9), peak RSS of the local process and of each Ray
worker (actor), the resident memory of Ray's own processes on the node (GCS, raylet, agents), the
load average before and after, and the largest difference between the two backends' features
(0 = bit-identical; on a CPU the last bits depend on the model's thread count, so they are equal
when each Ray worker runs as many threads as the local process: ``--cpus-per-worker C``).

Slides are synthetic pyramidal TIFFs (``mixmag.synth``), tiled once (not timed). The cluster's
processes carry a marker variable and are SIGKILLed by pid at the end (never ``ray stop``, which
would stop every Ray process of this user).

Usage::

    python benchmarks/ray_backend.py                      # 6 slides of 6720 x 5376 px, 2 rounds
    python benchmarks/ray_backend.py --slides 8 --rounds 3 --encoder tiny.vit-d32 --random-weights
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mixmag.cluster.local import LocalRayCluster
from mixmag.utils.proctree import process_name, rss_mb

REPO = Path(__file__).resolve().parents[1]

# the child: one embed_slides call, its figures as JSON on the last stdout line
CHILD = r"""
import json, resource, sys, time
from mixmag.embed import embed_slides
a = json.loads(sys.argv[1])
s = embed_slides(a["tiles"], a["out"], progress=False, **a["options"])
print(json.dumps({"n_tiles": s.n_tiles, "seconds": s.seconds, "ok": len(s.ok), "errors": len(s.errors),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "workers": [w.__dict__ for w in s.workers]}))
"""


def _name(pid: int) -> str:
    comm = process_name(pid)
    if comm.startswith("python"):  # Ray's Python services: name them by their script
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        script = next((a.decode() for a in args if a.endswith(b".py")), comm)
        return Path(script).stem
    return comm


def service_memory(cluster: LocalRayCluster, exclude: set[int]) -> dict[str, float]:
    """RSS (MiB) of the cluster's own processes (not the workers in ``exclude``), by name."""
    out: dict[str, float] = {}
    for pid in cluster.processes():
        if pid in exclude:
            continue
        with contextlib.suppress(OSError):
            name = _name(pid)
            # comm is cut at 15 characters: ray::DashboardA(gent), ray::RuntimeEnv(Agent)
            if name.startswith("ray::") and not name.startswith(("ray::Dashboard", "ray::RuntimeEnv")):
                continue  # an idle Ray worker process, not a service
            out[name] = out.get(name, 0.0) + rss_mb(pid)
    return out


def _prepare(work: Path, n: int, size: tuple[int, int]) -> Path:
    from mixmag.io.manifest import Status
    from mixmag.synth.tiff import write_synthetic_wsi
    from mixmag.tiling.tile import tile_slides

    slides = work / "slides"
    slides.mkdir(parents=True)
    for i in range(n):
        write_synthetic_wsi(slides / f"bench{i:02d}.tiff", size, mpp=0.5, n_levels=4, seed=i)
    summary = tile_slides([slides], work / "tiles", progress=False)
    if summary.count(Status.OK) != n:
        raise SystemExit(f"tiling failed: {[(r.slide_id, r.error) for r in summary.results]}")
    return work / "tiles"


def _run(tiles: Path, out: Path, options: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    arg = json.dumps({"tiles": str(tiles), "out": str(out), "options": options})
    res = subprocess.run([sys.executable, "-c", CHILD, arg], env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"embedding run failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _feature_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between the features of two folders (0.0: bit-identical)."""
    import numpy as np

    from mixmag.io.features import FeatureFile

    names = sorted(p.name for p in a.glob("*.h5"))
    if not names or names != sorted(p.name for p in b.glob("*.h5")):
        raise SystemExit(f"{a} and {b} hold different slides")
    worst = 0.0
    for name in names:
        with FeatureFile(a / name) as fa, FeatureFile(b / name) as fb:
            diff = np.abs(fa.read()[0].astype(np.float64) - fb.read()[0].astype(np.float64))
            worst = max(worst, float(diff.max()))
    return worst


def main() -> None:
    """Run the comparison and print its figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slides", type=int, default=6, help="synthetic slides")
    p.add_argument("--slide-px", type=int, nargs=2, default=(6720, 5376), metavar=("W", "H"))
    p.add_argument("--encoder", default="efficientnet-lite0-imagenet")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="local/ray pairs, alternating order")
    p.add_argument("--cpus", type=int, default=None, help="cores of both backends (default: the usable cores)")
    p.add_argument("--cpus-per-worker", type=int, default=1,
                   help="CPUs (= compute threads) of each Ray worker; cpus / this many workers")
    args = p.parse_args()

    from mixmag.utils.cpus import usable_cpus

    cpus = args.cpus or usable_cpus().cores
    # both backends size their threads from the cores, not from a thread variable of this shell
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MIXMAG_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO / "src"), env.get("PYTHONPATH")) if x)
    model = {"encoder": args.encoder, "random_weights": args.random_weights, "batch_size": args.batch_size,
             "precision": "fp32", "device": "cpu"}
    work = Path(tempfile.mkdtemp(prefix="mixmag-ray-bench-"))
    load_before = os.getloadavg()
    cluster = None
    try:
        tiles = _prepare(work, args.slides, tuple(args.slide_px))
        cluster = LocalRayCluster(n_workers=0, num_cpus=cpus, env=env, start_timeout=300)
        runs: list[tuple[str, dict[str, Any]]] = []
        for r in range(args.rounds):
            order = ["local", "ray"] if r % 2 == 0 else ["ray", "local"]
            for backend in order:
                options = dict(model, threads=cpus) if backend == "local" else dict(
                    model, backend="ray", ray_address=cluster.address, ray_cpus_per_worker=args.cpus_per_worker)
                result = _run(tiles, work / f"{backend}{r}", options, cluster.env if backend == "ray" else env)
                result["tiles_per_s"] = result["n_tiles"] / result["seconds"]
                runs.append((backend, result))
                print(f"round {r} {backend:5s}: {result['n_tiles']} tiles in {result['seconds']:.1f} s = "
                      f"{result['tiles_per_s']:.1f} tiles/s", flush=True)
        workers = {w["pid"] for _, res in runs for w in res["workers"]}
        services = service_memory(cluster, workers)
        difference = _feature_difference(work / "local0", work / "ray0")
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    local = [res["tiles_per_s"] for b, res in runs if b == "local"]
    ray = [res["tiles_per_s"] for b, res in runs if b == "ray"]
    pairs = [runs[i + 1][1]["tiles_per_s"] / runs[i][1]["tiles_per_s"] if runs[i][0] == "local"
             else runs[i][1]["tiles_per_s"] / runs[i + 1][1]["tiles_per_s"] for i in range(0, len(runs), 2)]
    n_tiles = runs[0][1]["n_tiles"]
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {cpus} used by each backend; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"work: {args.slides} slides of {args.slide_px[0]} x {args.slide_px[1]} px, {n_tiles} tiles, "
          f"{args.encoder}, fp32, batch {args.batch_size}")
    print(f"local: {cpus} threads in one process; ray: {cpus // args.cpus_per_worker} actor(s) x "
          f"{args.cpus_per_worker} CPU on a one-node cluster")
    print("| backend | tiles/s per round | median tiles/s | peak RSS per process (MiB) |")
    print("|---|---|---|---|")
    local_rss = [res["peak_rss_mb"] for b, res in runs if b == "local"]
    ray_rss = [w["peak_rss_mb"] for b, res in runs if b == "ray" for w in res["workers"]]
    driver_rss = [res["peak_rss_mb"] for b, res in runs if b == "ray"]
    print(f"| local | {', '.join(f'{x:.1f}' for x in local)} | {statistics.median(local):.1f} | "
          f"{max(local_rss):.0f} (the one process) |")
    print(f"| ray | {', '.join(f'{x:.1f}' for x in ray)} | {statistics.median(ray):.1f} | "
          f"{min(ray_rss):.0f}-{max(ray_rss):.0f} per worker; driver {max(driver_rss):.0f} |")
    print(f"ratio ray/local: {statistics.median(ray) / statistics.median(local):.3f} (medians); per round "
          f"{', '.join(f'{x:.3f}' for x in pairs)}")
    print("Ray's own processes on the node (RSS MiB, after the runs): "
          + ", ".join(f"{k} {v:.0f}" for k, v in sorted(services.items())) + f"; total {sum(services.values()):.0f}")
    print(f"features of the two backends (round 0): largest absolute difference {difference:g}"
          + (" (bit-identical)" if difference == 0 else
             f" (the model ran {cpus} threads locally and {args.cpus_per_worker} per Ray worker: a CPU "
             f"model's last bits depend on its thread count; --cpus-per-worker {cpus} gives the same)"))


if __name__ == "__main__":
    main()
