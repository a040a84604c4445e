"""Embedding throughput: (a) model only on pre-decoded tiles vs (b) end to end, slide -> feature file.

For each encoder, with the same batch size:

(a) model-only tiles/s on tiles already decoded and normalised in memory, in three configurations:
    fp32 contiguous, fp32 channels-last, and reduced precision + channels-last (bf16 autocast on
    CPU, fp16 on GPU), each with the cosine similarity of its embeddings to fp32 on real tiles;
(b) end-to-end tiles/s of ``embed_slides`` (region decode in DataLoader workers + model + HDF5
    writes) with ``precision="auto"``, run in a child process so its peak RSS is measured alone.

The ratio (b)/(a) is measured two ways:

* bracketed: (b) against the (a) configuration that ``auto`` selected, measured just before and
  just after that (b); ``--rounds N`` repeats it and reports the median;
* paired (decoding inline, the CPU default): one more (b) run in which every real batch is followed
  by a model-only pass over a pre-decoded batch of real tiles of the same size, in the same
  process. (a) = probe tiles / probe time, (b) = tiles / (wall time - probe time). The two
  alternate every second or so, so the ratio is immune to this machine's throughput drift (the
  same model-only pass varies 34-68 tiles/s within one minute here), which the bracketed ratio is
  not. With worker processes a decoder could run during the probes, so the paired run is skipped.

Peak RSS comes from the unprobed (b) run. Tiles come from a synthetic pyramidal WSI (streamed to
disk, any size) or ``--slide``.

Shared CPUs (instead of (a)/(b); :mod:`mixmag.utils.cpus`):

* ``--contention K``: for each thread policy (``--policies``; ``MIXMAG_THREAD_POLICY`` of the child,
  plus ``one`` = ``MIXMAG_THREADS=1`` for reference) the same (b) run idle and next to K
  single-threaded busy-loop processes, alternately (``--rounds``). Prints tiles/s idle and busy,
  busy/idle, and each policy's throughput relative to ``all`` (idle and busy), so the best
  policy under contention and its idle cost can be read off one table. The busy loops stop when
  the run ends, on Ctrl-C/SIGTERM/errors, with the benchmark process (Linux), and after
  ``--busy-timeout`` seconds whatever happens.
* ``--affinity-one``: (b) in a child pinned to one core (``sched_setaffinity``), started with
  ``--threads`` torch threads (mixmag must lower them to 1), against an unpinned explicit
  one-thread run; also the pinned run forced to ``--threads`` threads (``MIXMAG_THREADS``: the old
  behaviour). Prints the ratios.

Examples::

    python benchmarks/embed.py --quick
    python benchmarks/embed.py --encoders efficientnet-lite0-imagenet vit-small-random --threads 2
    python benchmarks/embed.py --device cuda --encoders virchow2 --batch-size 256 --workers 8 --gpu-util
    python benchmarks/embed.py --encoders efficientnet-lite0-imagenet --contention 1 --rounds 3
    python benchmarks/embed.py --encoders efficientnet-lite0-imagenet --affinity-one --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch


def _prepare_slide(args: argparse.Namespace, work: Path) -> Path:
    """Tile a slide (synthetic unless --slide) and return the tiling folder (not timed)."""
    from mixmag.synth.tiff import write_synthetic_wsi
    from mixmag.tiling.tile import tile_slides

    slide = Path(args.slide) if args.slide else work / "bench_slide.tiff"
    if not args.slide:
        w, h = args.slide_px or ((4480, 3584) if args.quick else (11200, 8960))
        write_synthetic_wsi(slide, (w, h), mpp=0.5, n_levels=4, seed=0)
    tiles = work / "tiles"
    summary = tile_slides([slide], tiles, progress=False, mpp_override=args.mpp)
    if summary.results[0].status.value != "ok":
        raise SystemExit(f"tiling failed: {summary.results[0].error}")
    return tiles


def _real_tiles(tiles_dir: Path, n: int) -> torch.Tensor:
    """``n`` tiles (all magnifications, token order) of the tiled slide, cycled if it has fewer; uint8."""
    from mixmag.io.regions import read_region_index
    from mixmag.slides import open_slide
    from mixmag.tiling.extract import RegionTileReader

    path = next((tiles_dir / "regions").glob("*.h5"))
    index = read_region_index(path)
    out = []
    with open_slide(index.attrs["slide_path"], reader=index.attrs.get("reader")) as reader:
        rt = RegionTileReader(reader, index, resample=str(index.attrs.get("resample", "box")))
        for r in range(index.n_regions):
            out.append(rt.read_region_tiles(r))
            if sum(len(t) for t in out) >= n:
                break
    tiles = np.concatenate(out)
    return torch.from_numpy(np.resize(tiles, (n, *tiles.shape[1:])))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_only(key: str, tiles: torch.Tensor, args: argparse.Namespace, random_weights: bool,
               only: str | None = None) -> dict[str, dict[str, float]]:
    """(a): tiles/s and cosine vs fp32 for fp32-contiguous, fp32-channels-last, reduced+channels-last."""
    from mixmag.encoders import build_encoder

    device = torch.device(args.device)
    low = torch.float16 if device.type == "cuda" else torch.bfloat16
    enc = build_encoder(key, random_weights=random_weights, device=device, precision="fp32")
    x_all = enc.transform(tiles.to(device))
    configs = {
        "fp32": (torch.contiguous_format, None),
        "fp32+channels_last": (torch.channels_last, None),
        f"{'fp16' if low == torch.float16 else 'bf16'}+channels_last": (torch.channels_last, low),
    }
    results: dict[str, dict[str, float]] = {}
    reference: torch.Tensor | None = None
    bs = args.batch_size
    if only is not None:  # re-measure one configuration (after (b), to bracket machine drift)
        configs = {"fp32": configs["fp32"], only: configs[only]}
    for name, (fmt, dtype) in configs.items():
        enc.to(memory_format=fmt)
        x = x_all.contiguous(memory_format=fmt)
        enc.autocast_dtype = dtype
        # as the engine does once the precision is settled (bit-identical; always the last config here)
        enc.cast_weights_for_autocast()

        def run(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                        enabled=dtype is not None):
                # the engine's own path: batches of `bs`, sliced to `cpu_max_batch` on a CPU
                return torch.cat([enc.forward_bounded(x[i:i + bs]).float() for i in range(0, len(x), bs)])

        run(x[: 2 * bs], dtype)  # warm-up (oneDNN primitive creation, cuDNN autotune)
        _sync(device)
        t0 = time.perf_counter()
        out = run(x, dtype)
        _sync(device)
        seconds = time.perf_counter() - t0
        if reference is None:
            reference = out
        cos = torch.nn.functional.cosine_similarity(out, reference, dim=-1)
        results[name] = {"tiles_per_s": len(x) / seconds, "cos_min": float(cos.min()), "cos_mean": float(cos.mean())}
        print(f"  (a) {name:22s} {len(x) / seconds:8.1f} tiles/s   cosine vs fp32 min {float(cos.min()):.5f} "
              f"mean {float(cos.mean()):.5f}",
              flush=True)
    return results


def _proc_field_mb(pid: int, name: str, file: str = "status") -> float:
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(name + ":"):
            return float(line.split()[1]) / 1024
    return 0.0


def _descendants(root: int) -> list[int]:
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                kids = [int(c) for c in (task / "children").read_text().split()]
                out += kids
                stack += kids
        except OSError:
            continue
    return out


def _memory_sampler(stop: threading.Event, peak: dict[str, float]) -> None:
    """Peak PSS of the process tree (shared pages counted once) and peak RSS of the worker processes.

    RSS of the model process is VmHWM, read at the end (``ru_maxrss`` would include the RSS this
    process inherited from its parent at fork).
    """
    me = os.getpid()
    tick = 0
    while not stop.is_set():
        kids = _descendants(me)
        try:
            # smaps_rollup walks every mapping under the target's mmap lock (~4 ms for a torch
            # process, stalling its page faults), and any sampling steals time from the two model
            # threads on a 2-core machine: worker VmHWM (a cheap high-water mark) 4x a second,
            # PSS every 5 s (the tree's PSS is flat after start-up)
            if tick % 20 == 0:
                pss = sum(_proc_field_mb(p, "Pss", "smaps_rollup") for p in [me, *kids])
                peak["pss"] = max(peak["pss"], pss)
            worker = max((_proc_field_mb(p, "VmHWM") for p in kids), default=0.0)
            peak["worker_rss"] = max(peak["worker_rss"], worker)
        except OSError:  # a worker exited between listing and reading: try again next time
            pass
        tick += 1
        stop.wait(0.25)


def _gpu_sampler(stop: threading.Event, samples: list[tuple[float, float]]) -> None:
    proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                             "-lms", "200"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if stop.is_set():
            break
        util, mem = (float(v) for v in line.strip().split(",")[:2])
        samples.append((util, mem))
    proc.terminate()


class PairedProbe:
    """Follows every full batch of a real run with a timed model-only pass on pre-decoded tiles.

    Installed on the encoder instance of the (b) process: ``probe_seconds``/``probe_tiles`` give
    (a) measured in alternation with (b), and are subtracted from (b)'s wall time.
    """

    def __init__(self, enc, tiles: torch.Tensor, batch_size: int) -> None:
        self.enc, self.batch_size = enc, batch_size
        # pre-decoded and pre-normalised: the probe pays only the model, exactly like (a)
        self.x = enc.transform(tiles[:batch_size].to(enc.device)).contiguous(memory_format=torch.channels_last)
        self.seconds, self.tiles = 0.0, 0
        self._real_encode = enc.encode
        enc.encode = self._encode

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        out = self._real_encode(x)
        if x.shape[0] == self.batch_size:  # full batches only (not the precision check's 16 tiles)
            _sync(self.enc.device)
            t0 = time.perf_counter()
            self._real_encode(self.x)  # float input: no transform, same precision as the run
            _sync(self.enc.device)
            self.seconds += time.perf_counter() - t0
            self.tiles += self.batch_size
        return out


def end_to_end_child(args: argparse.Namespace) -> None:
    """(b), in a fresh process: embed the tiled slide; print JSON with tiles/s and peak RSS."""
    from mixmag.embed import embed_slides
    from mixmag.encoders import build_encoder

    torch.set_num_threads(args.threads)
    enc = build_encoder(args.child_encoder, random_weights=args.random_weights, device=args.device,
                        precision="auto")
    probe = PairedProbe(enc, _real_tiles(Path(args.probe_tiles_dir), args.batch_size), args.batch_size) \
        if args.probe_tiles_dir else None
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_gpu_sampler, args=(stop, samples), daemon=True) if args.gpu_util else None
    if sampler:
        sampler.start()
    peak = {"pss": 0.0, "worker_rss": 0.0}
    threading.Thread(target=_memory_sampler, args=(stop, peak), daemon=True).start()
    t0 = time.perf_counter()
    summary = embed_slides(args.tiles_dir, args.out_dir, encoder=enc, batch_size=args.batch_size, precision="auto",
                           workers=args.workers, overwrite=True, progress=False)
    seconds = time.perf_counter() - t0
    stop.set()
    if probe is not None:  # paired run: (b) without the probes' time, (a) from the probes
        seconds -= probe.seconds
    result = {"tiles": summary.n_tiles, "seconds": seconds, "tiles_per_s": summary.n_tiles / seconds,
              "precision": summary.precision, "peak_rss_main_mb": _proc_field_mb(os.getpid(), "VmHWM"),
              "peak_rss_worker_mb": peak["worker_rss"], "peak_pss_total_mb": peak["pss"],
              "errors": summary.errors, "threads": summary.threads}
    if probe is not None:
        result.update(probe_tiles=probe.tiles, probe_seconds=probe.seconds,
                      probe_tiles_per_s=probe.tiles / probe.seconds if probe.seconds else 0.0)
    if samples:
        util = [u for u, _ in samples]
        result.update(gpu_util_mean=float(np.mean(util)), gpu_util_median=float(np.median(util)),
                      gpu_mem_max_mb=max(m for _, m in samples))
    print("RESULT " + json.dumps(result), flush=True)


def _end_to_end(key: str, tiles_dir: Path, work: Path, args: argparse.Namespace, random_weights: bool,
                probe_tiles_dir: Path | None = None, env: dict[str, str] | None = None,
                pin_cpu: int | None = None) -> dict:
    """One (b) measurement in a fresh child process (paired with probes if ``probe_tiles_dir``).

    ``env``: the child's environment (default: this one); ``pin_cpu``: run it on that core only.
    """
    cmd = [sys.executable, __file__, "--child-encoder", key, "--tiles-dir", str(tiles_dir),
           "--out-dir", str(work / f"feats_{key}"), "--batch-size", str(args.batch_size),
           "--device", args.device, "--workers", str(args.workers), "--threads", str(args.threads)]
    cmd += ["--random-weights"] * random_weights + ["--gpu-util"] * args.gpu_util
    if probe_tiles_dir is not None:
        cmd += ["--probe-tiles-dir", str(probe_tiles_dir)]
    pin = (lambda: os.sched_setaffinity(0, {pin_cpu})) if pin_cpu is not None else None
    bounded = args.contention or args.affinity_one  # next to busy loops: never outlive them
    child = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=pin,
                           timeout=args.busy_timeout if bounded else None)
    line = [ln for ln in child.stdout.splitlines() if ln.startswith("RESULT ")]
    if child.returncode or not line:
        raise SystemExit(f"end-to-end child failed:\n{child.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT "):])


# A single-threaded busy loop: dies with its parent (Linux), and after argv[1] seconds in any case.
_BUSY_LOOP = """
import ctypes, signal, sys, time
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for _ in range(100_000):
        pass
"""
#: Child environment of each thread option (``one``: an explicit single thread, for reference).
POLICY_OPTIONS = ("split", "all", "spare", "passive", "adapt", "one")


@contextlib.contextmanager
def busy_processes(k: int, timeout_s: float) -> Iterator[list[subprocess.Popen]]:
    """``k`` single-threaded busy-loop processes for the ``with`` block (stopped on any exit)."""
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(k):
            procs.append(subprocess.Popen([sys.executable, "-c", _BUSY_LOOP, str(timeout_s)]))
        time.sleep(0.5)  # let them start spinning before the measured run does
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def policy_env(option: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a child run with thread ``option`` (a :class:`ThreadPolicy` value or ``one``).

    ``passive`` also sets ``OMP_WAIT_POLICY=PASSIVE``: OpenMP reads it when torch loads, so it must
    be in the child's environment from the start.
    """
    env = {k: v for k, v in (base if base is not None else os.environ).items()
           if k not in ("MIXMAG_THREADS", "MIXMAG_THREAD_POLICY", "OMP_WAIT_POLICY")}
    if option == "one":
        return {**env, "MIXMAG_THREADS": "1"}
    env["MIXMAG_THREAD_POLICY"] = option
    if option == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so ``busy_processes`` stops its loops."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def contention(key: str, tiles_dir: Path, work: Path, args: argparse.Namespace, random_weights: bool) -> dict:
    """Each thread option idle and next to ``args.contention`` busy processes; prints the ratios."""
    runs: dict[str, dict[str, list[dict]]] = {o: {"idle": [], "busy": []} for o in args.policies}
    for i in range(args.rounds):
        for option in args.policies:
            env = policy_env(option)
            runs[option]["idle"].append(_end_to_end(key, tiles_dir, work, args, random_weights, env=env))
            with busy_processes(args.contention, args.busy_timeout):
                runs[option]["busy"].append(_end_to_end(key, tiles_dir, work, args, random_weights, env=env))
            idle, busy = runs[option]["idle"][-1], runs[option]["busy"][-1]
            print(f"  round {i + 1} {option:8s} idle {idle['tiles_per_s']:7.1f} tiles/s ({idle['threads']} threads)  "
                  f"busy {busy['tiles_per_s']:7.1f} tiles/s ({busy['threads']} threads at the end)", flush=True)
    tps = {o: {m: _median([r["tiles_per_s"] for r in runs[o][m]]) for m in ("idle", "busy")} for o in args.policies}
    ref = tps.get("all")
    print(f"  {key}, {args.contention} busy process(es), {args.threads} threads requested, median of "
          f"{args.rounds} round(s):", flush=True)
    print(f"  {'option':8s} {'idle t/s':>9s} {'busy t/s':>9s} {'busy/idle':>9s} {'idle/all':>9s} {'busy/all':>9s}")
    summary = {}
    for o in args.policies:
        idle, busy = tps[o]["idle"], tps[o]["busy"]
        vs = (idle / ref["idle"], busy / ref["busy"]) if ref else (float("nan"), float("nan"))
        print(f"  {o:8s} {idle:9.1f} {busy:9.1f} {busy / idle:9.2f} {vs[0]:9.2f} {vs[1]:9.2f}", flush=True)
        summary[o] = {"idle_tiles_per_s": idle, "busy_tiles_per_s": busy, "busy_over_idle": busy / idle,
                      "idle_over_all": vs[0], "busy_over_all": vs[1], "runs": runs[o]}
    return summary


def affinity_one(key: str, tiles_dir: Path, work: Path, args: argparse.Namespace, random_weights: bool) -> dict:
    """(b) pinned to one core (mixmag must see 1 usable core) vs an explicit one-thread run."""
    cpu = min(os.sched_getaffinity(0))
    forced = {**policy_env("split"), "MIXMAG_THREADS": str(args.threads)}  # split: the default policy
    cases = {"pinned": (policy_env("split"), cpu), "one_thread": (policy_env("one"), None),
             f"pinned_forced_{args.threads}": (forced, cpu)}
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (env, pin) in cases.items():
            runs[name].append(_end_to_end(key, tiles_dir, work, args, random_weights, env=env, pin_cpu=pin))
    tps = {name: _median([r["tiles_per_s"] for r in rs]) for name, rs in runs.items()}
    threads = {name: rs[-1]["threads"] for name, rs in runs.items()}
    one = tps["one_thread"]
    for name in cases:
        print(f"  {name:18s} {tps[name]:7.1f} tiles/s ({threads[name]} threads)  / one_thread = {tps[name] / one:.2f}",
              flush=True)
    return {name: {"tiles_per_s": tps[name], "threads": threads[name], "over_one_thread": tps[name] / one,
                   "runs": runs[name]} for name in cases}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoders", nargs="+", default=["efficientnet-lite0-imagenet", "vit-small-random"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", default="auto", help="decode workers: auto, 0 (inline) or a number")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--model-tiles", type=int, default=256, help="tiles timed in (a)")
    p.add_argument("--slide", help="slide for (b) instead of a synthetic one")
    p.add_argument("--real-slide", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi"
                                               / "CMU-1-Small-Region_pyramid.tiff"),
                   help="real H&E slide whose tiles are used in (a) (timing and cosine)")
    p.add_argument("--slide-px", type=int, nargs=2, metavar=("W", "H"), help="synthetic slide size, level-0 px")
    p.add_argument("--mpp", type=float, default=None, help="level-0 µm/px override for --slide")
    p.add_argument("--random-weights", action="store_true", help="random weights for every encoder")
    p.add_argument("--gpu-util", action="store_true", help="sample nvidia-smi during (b)")
    p.add_argument("--quick", action="store_true", help="small slide, 96 tiles in (a)")
    p.add_argument("--rounds", type=int, default=1,
                   help="(b) runs per encoder, each compared with (a) measured just before and after it; "
                        "the median ratio is reported (use 3+ on a shared machine)")
    p.add_argument("--json", help="write all figures to this file")
    # internal: the (b) child process
    p.add_argument("--child-encoder", help=argparse.SUPPRESS)
    p.add_argument("--tiles-dir", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    p.add_argument("--probe-tiles-dir", help=argparse.SUPPRESS)
    p.add_argument("--no-paired", action="store_true", help="skip the paired (probed) run")
    p.add_argument("--contention", type=int, default=0, metavar="K",
                   help="compare thread options idle vs next to K busy-loop processes (instead of (a)/(b))")
    p.add_argument("--policies", nargs="+", default=list(POLICY_OPTIONS), choices=POLICY_OPTIONS,
                   help="thread options compared by --contention (MIXMAG_THREAD_POLICY; one = MIXMAG_THREADS=1)")
    p.add_argument("--affinity-one", action="store_true",
                   help="compare a run pinned to one core with an explicit one-thread run (instead of (a)/(b))")
    p.add_argument("--busy-timeout", type=float, default=1800.0,
                   help="hard limit (s) of each busy loop and each child run")
    args = p.parse_args()
    if args.child_encoder:
        end_to_end_child(args)
        return
    from mixmag.encoders import ENCODERS

    torch.set_num_threads(args.threads)
    n_model = 96 if args.quick else args.model_tiles
    report: dict[str, object] = {"device": args.device, "threads": args.threads, "batch_size": args.batch_size,
                                 "workers": args.workers, "torch": torch.__version__,
                                 "contention": args.contention, "policies": args.policies}
    with tempfile.TemporaryDirectory(prefix="mixmag_bench_") as tmp:
        work = Path(tmp)
        tiles_dir = _prepare_slide(args, work)
        if args.contention or args.affinity_one:
            _stop_on_sigterm()
            for key in args.encoders:
                random_weights = args.random_weights or ENCODERS.meta(key).default_weights == "random"
                print(f"{key} (batch {args.batch_size}, {args.threads} threads, {args.device}):", flush=True)
                entry: dict[str, object] = {}
                if args.contention:
                    entry["contention"] = contention(key, tiles_dir, work, args, random_weights)
                if args.affinity_one:
                    entry["affinity_one"] = affinity_one(key, tiles_dir, work, args, random_weights)
                report[key] = entry
            if args.json:
                Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
            return
        # (a) times and compares on real H&E tiles when the sample slide is available
        real = Path(args.real_slide)
        real_tiles_dir = tiles_dir
        if real.is_file():
            from mixmag.tiling.tile import tile_slides

            tile_slides([real], work / "real", progress=False)
            real_tiles_dir = work / "real"
        tiles = _real_tiles(real_tiles_dir, n_model)
        from mixmag.embed.engine import plan_decoding

        inline = plan_decoding(args.workers, torch.device(args.device)).workers == 0
        for key in args.encoders:
            random_weights = args.random_weights or ENCODERS.meta(key).default_weights == "random"
            print(f"{key} (batch {args.batch_size}, {args.threads} threads, {args.device}):", flush=True)
            a = model_only(key, tiles, args, random_weights)
            rounds = []
            a_prev: float | None = None
            for i in range(args.rounds):
                b = _end_to_end(key, tiles_dir, work, args, random_weights)
                # the pipeline always runs channels-last; compare with (a) at the precision auto chose,
                # measured just before and just after this (b): on a shared machine throughput drifts
                chosen = f"{b['precision']}+channels_last"
                if a_prev is None:
                    a_prev = a[chosen]["tiles_per_s"]
                print(f"  (a) again after (b) round {i + 1}, {chosen}:", flush=True)
                a_after = model_only(key, tiles, args, random_weights, only=chosen)[chosen]["tiles_per_s"]
                a_mean = (a_prev + a_after) / 2
                ratio = b["tiles_per_s"] / a_mean
                a_prev = a_after
                print(f"  (b) round {i + 1}: end-to-end {b['tiles_per_s']:8.1f} tiles/s ({b['tiles']} tiles, "
                      f"{b['precision']}); (b)/(a[{chosen}], mean of before/after {a_mean:.1f}) = {ratio:.2f}; "
                      f"peak RSS main {b['peak_rss_main_mb']:.0f} MB, worker {b['peak_rss_worker_mb']:.0f} MB; "
                      f"peak PSS of the process tree {b['peak_pss_total_mb']:.0f} MB", flush=True)
                if "gpu_util_mean" in b:
                    print(f"      GPU utilisation mean {b['gpu_util_mean']:.0f} %, median {b['gpu_util_median']:.0f} %, "
                          f"memory max {b['gpu_mem_max_mb']:.0f} MB", flush=True)
                rounds.append({"end_to_end": b, "model_only_around": a_mean, "ratio_b_over_a": ratio})
            ratios = [r["ratio_b_over_a"] for r in rounds]
            peak = max(r["end_to_end"]["peak_rss_main_mb"] for r in rounds)
            print(f"  {key}: (b)/(a) median {float(np.median(ratios)):.2f} over {len(ratios)} round(s) "
                  f"({', '.join(f'{r:.2f}' for r in ratios)}); peak RSS of the model process {peak:.0f} MB",
                  flush=True)
            report[key] = {"model_only": a, "rounds": rounds, "ratio_b_over_a_median": float(np.median(ratios)),
                           "peak_rss_main_mb": peak, "a_config": chosen}
            if inline and not args.no_paired:
                pr = _end_to_end(key, tiles_dir, work, args, random_weights, probe_tiles_dir=real_tiles_dir)
                paired = pr["tiles_per_s"] / pr["probe_tiles_per_s"]
                print(f"  {key}: paired run: (b) {pr['tiles_per_s']:.1f} tiles/s, (a) {pr['probe_tiles_per_s']:.1f} "
                      f"tiles/s in {pr['probe_tiles']} probe tiles between the batches; (b)/(a) = {paired:.3f}",
                      flush=True)
                report[key]["paired"] = {**pr, "ratio_b_over_a": paired}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
