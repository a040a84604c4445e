"""Pretraining engine of the region encoder (MEM / CMEM / random), single process or DDP.

Run folder written by rank 0::

    <out>/config.resolved.json   settings, cohort fingerprint, feature source
    <out>/env.json               versions, device, git sha
    <out>/manifest.csv           slides used / skipped (and why): a file that failed its checks is
                                 ``error`` with the reason; a slide found holding NaN/inf while
                                 training (its bad tokens were masked) is ``error`` at the end
    <out>/metrics.jsonl          one record per optimizer step (loss terms, lr, grad norm, regions/s)
    <out>/loss_curve.png         updated at every checkpoint and at the end
    <out>/checkpoints/step_NNNNNNN/   resumable checkpoints (see mixmag.region.checkpoints)
    <out>/final/                 the trained encoder (what `mixmag encode` and MIL load)

Resuming is exact: the data order and masks are functions of the seed and the global step (see
:mod:`mixmag.region.data`), and checkpoints carry optimizer, scheduler and RNG states, so a run
killed after a checkpoint and restarted produces the same next losses as if it had never stopped.
Launch under ``torchrun --nproc_per_node N`` for data parallelism: ``batch_size`` stays the global
batch and every loss is normalised over the global batch, so the trajectory matches one process.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mixmag.errors import MixmagValueError
from mixmag.io.features import FeatureFile
from mixmag.io.manifest import BASE_COLUMNS, read_manifest
from mixmag.region.checkpoints import (
    CONFIG_FILE,
    STATE_FILE,
    check_layout,
    load_checkpoint_tensors,
    load_region_encoder,
    load_training_state,
    read_checkpoint_config,
    remove_checkpoint,
    save_region_checkpoint,
    set_rng_state,
)
from mixmag.region.data import (
    FeatureCohort,
    RegionStream,
    SlideEntry,
    accumulate_target_moments,
    scan_feature_cohort,
)
from mixmag.region.distributed import DistContext, init_distributed
from mixmag.region.objectives import OBJECTIVES
from mixmag.region.runlog import MetricsLog
from mixmag.region.settings import PretrainSettings
from mixmag.region.trainer import Trainer
from mixmag.report.run_plots import write_loss_curve
from mixmag.utils.atomic import atomic_write_json, atomic_write_text, remove_stale_temp_files
from mixmag.utils.cost import PROBE_STEPS, Ask, CostLimitError, check_cost, estimate_from_probe
from mixmag.utils.cpus import thread_budget, usable_cpus
from mixmag.utils.device import resolve_device
from mixmag.utils.env import environment_info
from mixmag.utils.seed import seed_everything

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainResult:
    """Outcome of :func:`pretrain_region_encoder`.

    Attributes:
        checkpoint: The final checkpoint folder (``<out>/final``).
        final_loss: Loss of the last optimizer step (None for ``random`` or a run finished earlier).
        metrics_path: ``metrics.jsonl``.
        plot_path: ``loss_curve.png`` (None when no step was logged).
        steps: Optimizer steps of the run.
        objective: The objective key.
        out_dir: Run folder.
        resumed_from: Step the run resumed from (None for a fresh run).
        n_slides: Slides used.
        n_regions: Usable regions in those slides.
        n_skipped: Feature files left out (failed their checks, or no usable region).
        n_nonfinite: Slides found holding NaN/inf in valid tokens while training (those tokens
            were masked; listed as ``error`` in ``manifest.csv``).
    """

    checkpoint: Path
    final_loss: float | None
    metrics_path: Path
    plot_path: Path | None
    steps: int
    objective: str
    out_dir: Path
    resumed_from: int | None
    n_slides: int
    n_regions: int
    n_skipped: int = 0
    n_nonfinite: int = 0


def _write_manifest(path: Path, cohort: FeatureCohort, nonfinite: dict[str, str] | None = None) -> None:
    """One row per slide: ``ok``, or ``error``/``empty`` with the reason; ``nonfinite`` = {slide_id: reason}."""
    # One write for the whole cohort (Manifest.update rewrites the file per row: quadratic here).
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=BASE_COLUMNS)
    writer.writeheader()
    nonfinite = nonfinite or {}
    rows = [{"slide_id": s.slide_id, "path": str(s.path), "status": "error" if s.slide_id in nonfinite else "ok",
             "n_items": s.usable.size, "error": nonfinite.get(s.slide_id, "")} for s in cohort.slides]
    rows += [{"slide_id": sid, "path": p, "status": status, "error": reason}
             for sid, p, status, reason in cohort.skipped]
    for row in sorted(rows, key=lambda r: str(r["slide_id"])):
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())


def _nonfinite_reason(entry: SlideEntry) -> str:
    """What a full read of a slide flagged while training finds: how many regions hold NaN/inf."""
    with FeatureFile(entry.path) as ff:
        bad = ff.nonfinite_regions()
    lost = bool(np.isin(entry.usable, bad).all())
    used = ("every usable region has such tokens, so the slide contributed nothing" if lost
            else "its finite tokens were used")
    return (f"NaN/inf tile features in valid tokens of {bad.size} of {entry.n_regions} regions (first: "
            f"{bad[:5].tolist()}); those tokens were masked during pretraining and {used}; the file is corrupt: "
            "delete it and re-run `mixmag embed`")


def latest_checkpoint(out: Path) -> Path | None:
    """Newest complete checkpoint of a run folder (final first, then the highest step)."""
    if (out / "final" / CONFIG_FILE).is_file():
        return out / "final"
    steps = sorted(c for c in (out / "checkpoints").glob("step_*") if (c / CONFIG_FILE).is_file())
    return steps[-1] if steps else None


def _target_stats(cohort: FeatureCohort, s: PretrainSettings, ctx: DistContext,
                  nonfinite: dict[int, set[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Cohort mean/std of valid tile embeddings; ranks read disjoint slides and sum their moments.

    Regions found holding NaN/inf are added to ``nonfinite`` ({slide index: regions}).
    """
    t0 = time.perf_counter()
    mine = range(ctx.rank, len(cohort.slides), ctx.world_size)
    m = accumulate_target_moments(cohort, mine, regions_per_slide=s.stats_regions_per_slide, seed=s.seed,
                                  nonfinite=nonfinite)
    local = torch.from_numpy(np.concatenate([[m.count], m.total, m.total_sq]))
    packed = ctx.all_reduce_sum(local).numpy()
    d = cohort.tile_dim
    m.count, m.total, m.total_sq = float(packed[0]), packed[1 : 1 + d], packed[1 + d :]
    mean, std = m.finalize()
    logger.info("target statistics from %d valid tokens in %.1f s", int(m.count), time.perf_counter() - t0)
    return mean, std


def pretrain_region_encoder(
    features: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    settings: PretrainSettings | None = None,
    resume: bool = True,
    progress: bool = True,
    ask: Ask | None = None,
    **options: Any,
) -> PretrainResult:
    """Pretrain (or, for ``objective="random"``, initialise and save) a region encoder.

    Args:
        features: Folder of per-slide feature files (``mixmag embed`` output) or a list of files.
        out_dir: Run folder (created; see the module docstring for its contents).
        settings: Full settings (default: :class:`~mixmag.region.settings.PretrainSettings` defaults);
            ``options`` override single fields of it.
        resume: Continue from the newest checkpoint in ``out_dir`` (its settings and cohort must
            match); False starts over and replaces the run's earlier checkpoints and metrics.
        progress: Show a progress bar (rank 0 only).
        ask: Called on rank 0 with the duration estimate made after the first steps when it exceeds
            ``settings.confirm_above_minutes``; True goes on. None (the default, and batch jobs)
            stops instead (:func:`mixmag.utils.cost.check_cost`).
        **options: Any :class:`~mixmag.region.settings.PretrainSettings` field, e.g.
            ``objective="cmem", preset="small", steps=500, batch_size=64, lr=3e-4``.

    Returns:
        A :class:`PretrainResult` (identical on every rank; only rank 0 writes files).

    Raises:
        FormatError: Inconsistent feature files, or a checkpoint of another layout in ``out_dir``.
        ValueError: Bad settings, no usable regions, or ``out_dir`` holds a run with other settings.
        CostLimitError: The estimate from the first steps exceeds ``confirm_above_minutes`` and
            ``ask`` did not confirm (nothing is saved but the run folder's metadata).
    """
    s = (settings if settings is not None else PretrainSettings()).updated(**options)
    ctx = init_distributed(resolve_device(s.device))
    try:
        # compute threads from the usable cores (torchrun sets OMP_NUM_THREADS=1 per rank unless
        # given), restored afterwards; env.json records the budget (mixmag.utils.env)
        with thread_budget(s.threads):
            return _Run(features, Path(out_dir), s, ctx, resume=resume, progress=progress, ask=ask).execute()
    finally:
        ctx.close()


class _Run:
    """State of one pretraining run (private: the public entry point is the function above)."""

    def __init__(self, features: Any, out: Path, s: PretrainSettings, ctx: DistContext, *,
                 resume: bool, progress: bool, ask: Ask | None) -> None:
        self.features, self.out, self.s, self.ctx = features, out, s, ctx
        self.resume, self.progress, self.ask = resume, progress, ask
        self.objective = OBJECTIVES.get(s.objective)
        self.cohort = scan_feature_cohort(features)
        self.metrics = MetricsLog(out / "metrics.jsonl")
        self.run_id = {"settings": s.result_defining(), "cohort": self.cohort.fingerprint()}
        # {slide index: region indices} whose NaN/inf valid tokens this process masked (stats + stream)
        self.nonfinite: dict[int, set[int]] = {}
        self.flagged_before: dict[str, str] = {}  # {slide_id: reason} a resumed run's manifest lists as NaN/inf
        self.n_nonfinite = 0

    # ------------------------------------------------------------------ set-up
    def _prepare_folder(self) -> Path | None:
        """Create the run folder; return the checkpoint to resume from (None = fresh start)."""
        out, c = self.out, self.cohort
        latest = latest_checkpoint(out) if self.resume else None
        if latest is not None:
            meta = read_checkpoint_config(latest)
            _, info = load_region_encoder(latest)
            check_layout(info, tile_dim=c.tile_dim, spec=c.spec, source=f"the feature cohort {self.features}")
            if meta.get("config", {}).get("run") != self.run_id:
                raise MixmagValueError(f"{out} holds a pretraining run with other settings or another cohort; "
                                       "resume it with the same options, or pass --no-resume / a new --out")
        if self.ctx.is_main:
            if latest is not None:  # NaN/inf found before the interruption stays on record
                used = {e.slide_id for e in c.slides}
                self.flagged_before = {sid: row.get("error") or "NaN/inf tile features"
                                       for sid, row in read_manifest(out / "manifest.csv").items()
                                       if sid in used and row.get("status") == "error"}
            out.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(out)
            if latest is None:  # fresh start: clear what an earlier run of this folder left
                remove_checkpoint(out / "final")
                for old in (out / "checkpoints").glob("step_*"):
                    remove_checkpoint(old)
                self.metrics.path.unlink(missing_ok=True)
            atomic_write_json(out / "config.resolved.json", {
                "settings": self.s.to_dict(), "run": self.run_id, "features": str(self.features),
                "tile_dim": c.tile_dim, "spec": c.spec.to_dict(), "tile_encoder": c.encoder,
                "n_slides": len(c.slides), "n_regions": c.n_regions, "world_size": self.ctx.world_size})
            atomic_write_json(out / "env.json", environment_info())
            _write_manifest(out / "manifest.csv", c, self.flagged_before)
        self.ctx.barrier()
        return latest

    def _save(self, folder: Path, step: int, *, with_state: bool) -> None:
        if not self.ctx.is_main:
            return
        save_region_checkpoint(
            folder, model=self.trainer.model, optimizer=self.trainer.optimizer if with_state else None,
            scheduler=self.trainer.scheduler if with_state else None, step=step,
            config={"run": self.run_id, "settings": self.s.to_dict(), "tile_encoder": self.cohort.encoder},
            target_mean=self.mean, target_std=self.std, spec=self.cohort.spec, objective=self.s.objective,
            training_state=self.trainer.state() if with_state else None,
        )

    def _result(self, final_loss: float | None, resumed_from: int | None) -> PretrainResult:
        plot = self.out / "loss_curve.png"
        return PretrainResult(
            checkpoint=self.out / "final", final_loss=final_loss, metrics_path=self.metrics.path,
            plot_path=plot if plot.exists() else None, steps=self.s.steps, objective=self.s.objective,
            out_dir=self.out, resumed_from=resumed_from, n_slides=len(self.cohort.slides),
            n_regions=self.cohort.n_regions, n_skipped=len(self.cohort.skipped),
            n_nonfinite=self.n_nonfinite)

    def _note_nonfinite(self, pairs: np.ndarray) -> None:
        """Remember (slide, region) pairs whose NaN/inf tokens were masked; warn once per slide."""
        for slide, region in pairs.tolist():
            if slide not in self.nonfinite:
                logger.warning("slide %s: NaN/inf tile features in region %d; its NaN/inf tokens are treated as "
                               "invalid for the rest of the run; the file is corrupt: delete it and re-run "
                               "`mixmag embed`", self.cohort.slides[slide].slide_id, region)
            self.nonfinite.setdefault(slide, set()).add(region)

    def _record_nonfinite(self) -> None:
        """Mark every slide found holding NaN/inf (on any rank) as ``error`` in the manifest, with the reason.

        Collective: every rank calls it. Only the flagged slides are read again in full (by rank 0),
        for an exact count of their bad regions.
        """
        # this rank's finds, plus (rank 0) the slides a resumed run's manifest already lists
        flags = torch.zeros(len(self.cohort.slides), dtype=torch.float32, device=self.ctx.device)
        flags[list(self.nonfinite)] = 1.0
        flags[[i for i, e in enumerate(self.cohort.slides) if e.slide_id in self.flagged_before]] = 1.0
        flagged = set(np.flatnonzero(self.ctx.all_reduce_sum(flags).cpu().numpy() > 0).tolist())
        self.n_nonfinite = len(flagged)
        if flagged and self.ctx.is_main:
            reasons = {self.cohort.slides[i].slide_id: _nonfinite_reason(self.cohort.slides[i]) for i in sorted(flagged)}
            _write_manifest(self.out / "manifest.csv", self.cohort, reasons)
            logger.warning("%d slides hold NaN/inf tile features (their bad tokens were masked); listed as error "
                           "in %s", len(flagged), self.out / "manifest.csv")

    # ------------------------------------------------------------------ main
    def execute(self) -> PretrainResult:
        s, ctx = self.s, self.ctx
        latest = self._prepare_folder()
        if latest is not None and latest.name == "final":
            logger.info("%s already holds the finished run (%d steps); nothing to do", self.out, s.steps)
            return self._result(None, s.steps)
        seed_everything(s.seed)
        self.trainer = Trainer(tile_dim=self.cohort.tile_dim, spec=self.cohort.spec, settings=s, ctx=ctx)
        kw = self.trainer.model.encoder.init_kwargs
        n_params = sum(p.numel() for p in self.trainer.encoder.parameters())
        logger.info("region encoder W=%d depth=%d heads=%d (%s positions), %.2fM parameters; %d slides, "
                    "%d regions; objective %s", kw["width"], kw["depth"], kw["heads"], kw["position"],
                    n_params / 1e6, len(self.cohort.slides), self.cohort.n_regions, s.objective)
        start = 0
        if latest is not None and self.objective.trains:
            tensors = load_checkpoint_tensors(latest)
            state = load_training_state(latest)
            self.trainer.load_state(tensors, state)
            self.mean, self.std = tensors["stats.target_mean"].numpy(), tensors["stats.target_std"].numpy()
            set_rng_state(state["rng"])
            start = int(state["step"])
            logger.info("resuming %s from step %d", self.out, start)
            if ctx.is_main:
                self.metrics.truncate(start)
        else:
            self.mean, self.std = _target_stats(self.cohort, s, ctx, self.nonfinite)
            # The encoder standardises its inputs with the same statistics as the MEM targets; a
            # `random` encoder gets them too, so random-vs-pretrained differs only in the weights.
            self.trainer.encoder.set_input_stats(self.mean, self.std)
        if not self.objective.trains:  # `random`: the initialised encoder *is* the result
            self._record_nonfinite()
            self._save(self.out / "final", 0, with_state=False)
            return self._result(None, None)
        self.trainer.set_target_stats(self.mean, self.std)
        final_loss = self._train(start)
        self._record_nonfinite()
        self._save(self.out / "final", s.steps, with_state=False)
        if ctx.is_main:
            write_loss_curve(self.metrics.records(), self.out / "loss_curve.png", title=f"{s.objective} ({s.preset})")
        ctx.barrier()
        return self._result(final_loss, start if latest is not None else None)

    def _train(self, start: int) -> float | None:
        s, ctx = self.s, self.ctx
        stream = RegionStream(
            self.cohort, batch_size=s.batch_size, rank=ctx.rank, world_size=ctx.world_size, start_step=start,
            total_steps=s.steps, seed=s.seed, n_views=self.objective.n_views, mask_ratio=s.mask_ratio,
            mag_mask_prob=s.mag_mask_prob, token_drop_max=s.token_drop_max,
            regions_per_slide=s.regions_per_slide, shuffle_buffer=s.shuffle_buffer, open_files=s.open_files)
        # Loader processes beyond the allocation's cores only preempt the training threads (the
        # batches do not depend on the worker count, see mixmag.region.data).
        workers, cores = s.num_workers, usable_cpus().cores
        if workers > cores:
            logger.info("pretrain: %d loader workers capped at the %d usable CPU cores", workers, cores)
            workers = cores
        # An explicit generator keeps the DataLoader from drawing on the global RNG (exact resume).
        loader = DataLoader(stream, batch_size=None, num_workers=workers,
                            pin_memory=ctx.device.type == "cuda", prefetch_factor=4 if workers else None,
                            generator=torch.Generator())
        from tqdm.auto import tqdm

        bar = tqdm(total=s.steps, initial=start, disable=not (self.progress and ctx.is_main), desc="pretrain",
                   unit="step", dynamic_ncols=True)
        final_loss = None
        probe: list[float] = []  # wall seconds of the first steps of this process (the cost probe)
        t_prev = time.perf_counter()
        for expected, batch in enumerate(loader, start=start):
            step = int(batch["step"])
            assert step == expected, "data stream out of step with the optimizer"
            if len(batch["nonfinite"]):
                self._note_nonfinite(batch["nonfinite"].numpy())
            t_data = time.perf_counter() - t_prev
            record = self.trainer.step(batch)
            now = time.perf_counter()
            record.update(step=step + 1, data_s=round(t_data, 5),
                          regions_per_s=round(s.batch_size / max(now - t_prev, 1e-9), 2))
            final_loss = record["loss"]
            if ctx.is_main:
                self.metrics.append(record)
            if len(probe) < PROBE_STEPS:  # the first steps time the run (nothing is run twice)
                probe.append(now - t_prev)
                if len(probe) == PROBE_STEPS and step + 1 < s.steps:
                    bar.clear()
                    try:
                        self._check_cost(probe, s.steps - step - 1)
                    except CostLimitError:
                        bar.close()
                        raise
                    bar.refresh()
            t_prev = time.perf_counter()  # the time spent asking is not the next step's data time
            bar.update(1)
            bar.set_postfix(loss=f"{final_loss:.4f}")
            done = step + 1
            if s.checkpoint_every and done % s.checkpoint_every == 0 and done < s.steps:
                self._checkpoint(done)
        bar.close()
        self.metrics.close()
        return final_loss

    def _check_cost(self, probe: list[float], steps_left: int) -> None:
        """Estimate the rest of the run from the probe; stop (every rank) unless it may go on.

        Collective: every rank calls it at the same step; rank 0 decides (and asks), the others follow.
        """
        s, ctx = self.s, self.ctx
        advice = [] if ctx.device.type == "cuda" else ["use a GPU (region.device: cuda)"]
        if s.preset != "tiny":
            advice.append(f"a smaller region.preset than {s.preset} (small or tiny)")
        advice.append(f"fewer region.steps than {s.steps}")
        estimate = estimate_from_probe(
            probe, stage=f"pretraining {s.objective} (preset {s.preset}, batch {s.batch_size})", unit="step",
            units_left=steps_left, device=str(ctx.device),
            advice=", ".join(advice[:-1]) + (" or " if len(advice) > 1 else "") + advice[-1])
        refused: CostLimitError | None = None
        if ctx.is_main:
            try:
                check_cost(estimate, limit_minutes=s.confirm_above_minutes, setting="region.confirm_above_minutes",
                           ask=self.ask)
            except CostLimitError as exc:
                refused = exc
        flag = torch.tensor([1.0 if refused is not None else 0.0], device=ctx.device)
        if ctx.all_reduce_sum(flag).item() > 0:
            self.metrics.close()
            raise refused if refused is not None else CostLimitError(
                "rank 0 stopped the run: its duration estimate exceeds region.confirm_above_minutes")

    def _checkpoint(self, step: int) -> None:
        if not self.ctx.is_main:
            return
        self._save(self.out / "checkpoints" / f"step_{step:07d}", step, with_state=True)
        olds = sorted(c for c in (self.out / "checkpoints").glob("step_*") if (c / STATE_FILE).is_file())
        for old in olds[: max(len(olds) - self.s.keep_checkpoints, 0)]:
            remove_checkpoint(old)
        write_loss_curve(self.metrics.records(), self.out / "loss_curve.png", title=f"{self.s.objective} ({self.s.preset})")
