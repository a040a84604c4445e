"""Region-pretraining throughput: model step alone vs the streaming loader from disk, and peak RSS.

For each cohort size (default 200 and 400 synthetic per-slide feature files, cached on disk) a child
process measures, in one run:

* ``step-only``   regions/s of ``Trainer.step`` on batches already in memory (mean of a measurement
  before and one after the others, to damp drifting machine load);
* ``loader-only`` regions/s of the streaming DataLoader alone (reading + masking, no model);
* ``end-to-end``  regions/s of ``pretrain_region_encoder`` (loader + step), steady state after warmup,
  and the ratio end-to-end / step-only (target >= 0.9: the loader keeps the step fed);
* peak RSS of the process and of its data-loader workers, which must not grow with the cohort.

With ``--contention K`` every child runs twice, idle and next to K busy-loop processes (see
``benchmarks/embed.py``), for each thread policy of ``--policies`` (``MIXMAG_THREAD_POLICY``), and a
second table gives step-only and end-to-end busy/idle ratios.

Usage::

    python benchmarks/pretrain.py --quick            # ~1-2 min on a 2-core machine
    python benchmarks/pretrain.py --tile-dim 2560    # Virchow2-sized tile embeddings
    python benchmarks/pretrain.py --quick --files 200 --threads 2 --contention 1 --policies all spare passive
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cohort(cache: Path, n_files: int, regions: int, tile_dim: int) -> Path:
    from mixmag.synth.region_features import write_synthetic_feature_cohort

    folder = cache / f"cohort_{n_files}f_{regions}r_{tile_dim}d"
    done = folder / ".complete"
    if not done.exists():
        t0 = time.perf_counter()
        write_synthetic_feature_cohort(folder, n_slides=n_files, regions_per_slide=regions, tile_dim=tile_dim, seed=0)
        done.write_text("ok")
        print(f"  wrote {n_files} feature files to {folder} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return folder


def _child(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from mixmag.region.data import RegionStream, scan_feature_cohort
    from mixmag.region.distributed import DistContext
    from mixmag.region.pretrain import pretrain_region_encoder
    from mixmag.region.settings import PretrainSettings
    from mixmag.region.trainer import Trainer
    from mixmag.utils.cpus import apply_thread_budget
    from mixmag.utils.seed import seed_everything

    torch.set_num_threads(args.threads)
    threads = apply_thread_budget()  # the thread policy of MIXMAG_THREAD_POLICY, as the engine applies it
    folder = Path(args.child)
    total = args.warmup + args.steps
    settings = PretrainSettings(objective=args.objective, preset=args.preset, steps=total, batch_size=args.batch_size,
                                num_workers=args.workers, device="cpu", precision="fp32", checkpoint_every=0,
                                regions_per_slide=args.regions_per_slide)
    t0 = time.perf_counter()
    cohort = scan_feature_cohort(folder)
    scan_s = time.perf_counter() - t0
    stream_kw = {"batch_size": args.batch_size, "seed": 0, "n_views": 2 if args.objective == "cmem" else 1,
                 "mask_ratio": 0.5, "mag_mask_prob": 0.25, "token_drop_max": 0.5,
                 "regions_per_slide": args.regions_per_slide, "shuffle_buffer": 4096}

    # step-only: a few real batches held in memory, cycled
    batches = list(RegionStream(cohort, total_steps=8, **stream_kw))
    seed_everything(0)
    trainer = Trainer(tile_dim=cohort.tile_dim, spec=cohort.spec, settings=settings, ctx=DistContext())
    trainer.set_target_stats(np.zeros(cohort.tile_dim), np.ones(cohort.tile_dim))
    for i in range(args.warmup):
        trainer.step(batches[i % len(batches)])

    def step_only() -> float:
        t0 = time.perf_counter()
        for i in range(args.steps):
            trainer.step(batches[i % len(batches)])
        return args.steps * args.batch_size / (time.perf_counter() - t0)

    # measured before and after the other runs: machine load drifts (see the peer-baseline notes)
    step_before = step_only()

    # loader-only: the streaming DataLoader with the same workers, no model
    loader = DataLoader(RegionStream(cohort, total_steps=total, **stream_kw), batch_size=None,
                        num_workers=args.workers, prefetch_factor=4 if args.workers else None)
    it = iter(loader)
    for _ in range(args.warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        next(it)
    loader_only = args.steps * args.batch_size / (time.perf_counter() - t0)
    del it, loader

    # end-to-end through the public engine
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = pretrain_region_encoder(folder, tmp, settings=settings, progress=False)
        wall = time.perf_counter() - t0
        records = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    step_after = step_only()
    step_ref = (step_before + step_after) / 2
    steady = records[args.warmup:]
    e2e = sum(args.batch_size for _ in steady) / sum(args.batch_size / r["regions_per_s"] for r in steady)
    data_wait = sum(r["data_s"] for r in steady) / len(steady)
    return {
        "files": len(cohort.slides), "regions": cohort.n_regions, "tile_dim": cohort.tile_dim,
        "scan_s": round(scan_s, 2), "step_only": round(step_ref, 1), "step_only_before_after": [
            round(step_before, 1), round(step_after, 1)], "loader_only": round(loader_only, 1),
        "end_to_end": round(e2e, 1), "ratio": round(e2e / step_ref, 3), "mean_data_wait_s": round(data_wait, 4),
        "engine_wall_s": round(wall, 1), "threads": threads,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "worker_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small tiles/regions, few steps")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mixmag-bench-pretrain")
    p.add_argument("--files", type=int, nargs="+", default=[200, 400], help="cohort sizes (feature files)")
    p.add_argument("--regions", type=int, default=None, help="regions per file (default 64, quick 32)")
    p.add_argument("--tile-dim", type=int, default=None, help="tile embedding dim (default 256, quick 128)")
    p.add_argument("--preset", default="small")
    p.add_argument("--objective", default="mem", choices=["mem", "cmem"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 60, quick 25)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=1, help="data-loader worker processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    p.add_argument("--regions-per-slide", type=int, default=64)
    p.add_argument("--contention", type=int, default=0, metavar="K",
                   help="also run each child next to K busy-loop processes and print busy/idle ratios")
    p.add_argument("--policies", nargs="+", default=["all"], help="thread policies (MIXMAG_THREAD_POLICY) to run")
    p.add_argument("--busy-timeout", type=float, default=1800.0, help="hard limit (s) of each busy loop")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.regions = args.regions or (32 if args.quick else 64)
    args.tile_dim = args.tile_dim or (128 if args.quick else 256)
    args.steps = args.steps or (25 if args.quick else 60)
    if args.child:
        print(json.dumps(_child(args)))
        return
    # benchmarks/embed.py (this folder is on sys.path): the shared contention helpers
    from embed import busy_processes, policy_env

    rows, contended = [], []
    for n in args.files:
        folder = _cohort(args.cache, n, args.regions, args.tile_dim)
        cmd = [sys.executable, __file__, "--child", str(folder), *sys.argv[1:]]
        for policy in args.policies:
            env = policy_env(policy, dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            rows.append(dict(json.loads(out.stdout.strip().splitlines()[-1]), policy=policy))
            print(json.dumps(rows[-1]), file=sys.stderr)
            if args.contention:
                with busy_processes(args.contention, args.busy_timeout):
                    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True,
                                         timeout=args.busy_timeout)
                busy = json.loads(out.stdout.strip().splitlines()[-1])
                print(json.dumps(busy), file=sys.stderr)
                contended.append((rows[-1], busy))
    print(f"\nregion pretraining, preset {args.preset}, objective {args.objective}, batch {args.batch_size}, "
          f"{args.workers} loader worker(s), {args.threads} torch thread(s), D={args.tile_dim}, "
          f"{args.regions} regions/file")
    print("| files | step-only reg/s (before/after) | loader-only reg/s | end-to-end reg/s | e2e / step | "
          "peak RSS MiB (main / worker) | scan s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ba = "/".join(str(v) for v in r["step_only_before_after"])
        files = r["files"] if len(args.policies) == 1 else f"{r['files']} ({r['policy']})"
        print(f"| {files} | {r['step_only']} ({ba}) | {r['loader_only']} | {r['end_to_end']} | {r['ratio']} | "
              f"{r['peak_rss_mib']} / {r['worker_peak_rss_mib']} | {r['scan_s']} |")
    if contended:
        print(f"\nnext to {args.contention} busy-loop process(es): regions/s idle -> busy")
        print("| files | policy | threads | step-only idle / busy | busy/idle | end-to-end idle / busy | busy/idle |")
        print("|---|---|---|---|---|---|---|")
        for idle, busy in contended:
            print(f"| {idle['files']} | {idle['policy']} | {idle['threads']} | {idle['step_only']} / {busy['step_only']} "
                  f"| {busy['step_only'] / idle['step_only']:.2f} | {idle['end_to_end']} / {busy['end_to_end']} | "
                  f"{busy['end_to_end'] / idle['end_to_end']:.2f} |")


if __name__ == "__main__":
    main()
