"""``mixmag pretrain`` (region-encoder pretraining) and ``mixmag encode`` (region embeddings)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel

from mixmag.cli.options import (
    AssumeYes,
    ConfigFile,
    SetItems,
    given_settings,
    load_study_config,
    setting_option,
)
from mixmag.region.settings import PretrainSettings, RegionSettings
from mixmag.utils.settings import Precision, field_default

logger = logging.getLogger(__name__)

# The `region` section: each named setting option below is one of its fields, with the field's
# docstring as help and its default (read from this instance) as default.
R = RegionSettings
_REGION = RegionSettings()
_OBJECTIVE = field_default(PretrainSettings, "objective")  # not a section key: chosen per run
#: The config sections whose fields the named options set (see ``given_settings``).
SECTIONS: dict[str, type[BaseModel]] = {"region": RegionSettings}


def register(app: typer.Typer) -> None:
    """Add the ``pretrain`` and ``encode`` commands to ``app``."""

    @app.command("pretrain")
    def pretrain(
        ctx: typer.Context,
        features: Annotated[Path, typer.Argument(help="Folder of per-slide feature files (`mixmag embed` output), "
                                                      "or a .txt/.lst file listing feature files, one per line.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (checkpoints, metrics, loss curve).")],
        config: ConfigFile = None,
        overrides: SetItems = None,
        objective: Annotated[str, setting_option(PretrainSettings, "objective")] = _OBJECTIVE,
        preset: Annotated[str, setting_option(R, "preset")] = _REGION.preset,
        steps: Annotated[int, setting_option(R, "steps")] = _REGION.steps,
        batch_size: Annotated[int, setting_option(R, "batch_size")] = _REGION.batch_size,
        lr: Annotated[float, setting_option(R, "lr")] = _REGION.lr,
        seed: Annotated[int, setting_option(R, "seed")] = _REGION.seed,
        device: Annotated[str, setting_option(R, "device")] = _REGION.device,
        threads: Annotated[int | None, setting_option(R, "threads")] = _REGION.threads,
        precision: Annotated[Precision, setting_option(R, "precision")] = _REGION.precision,
        resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from the newest checkpoint.")] = True,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
        yes: AssumeYes = False,
    ) -> None:
        """Pretrain the region-level mixing encoder (MEM / CMEM) on a feature store.

        Every other setting of the `region` section: --set region.KEY=VALUE or --config FILE.
        Multi-GPU: torchrun --nproc_per_node N -m mixmag pretrain ... (--batch-size stays global);
        several nodes: torchrun --nnodes M --rdzv_backend c10d ... (docs/cluster.md).
        """
        from mixmag.cli.common import friendly_errors, terminal_ask

        values, sources = given_settings(ctx, SECTIONS)
        cfg = load_study_config(config, overrides, values, sources, stages=("pretrain",), features=features,
                                features_name="FEATURES")
        with friendly_errors():
            from mixmag.region.pretrain import pretrain_region_encoder
            from mixmag.utils.logging import add_file_handler

            settings = cfg.region.run_settings(objective)
            if cfg.region.launches_torchrun and "WORLD_SIZE" not in os.environ:
                logger.warning("region.nproc_per_node / region.nnodes are read by `mixmag run` only; this is one "
                               "process: start `torchrun --nproc_per_node N -m mixmag pretrain ...` for several")
            if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 writes run.log
                add_file_handler(out / "run.log")
            result = pretrain_region_encoder(features, out, settings=settings, resume=resume, progress=progress,
                                             ask=terminal_ask(yes))
        loss = "" if result.final_loss is None else f", final loss {result.final_loss:.4f}"
        typer.echo(f"{result.objective}: {result.steps} steps on {result.n_slides} slides / {result.n_regions} "
                   f"regions{loss}\ncheckpoint: {result.checkpoint}\nmetrics: {result.metrics_path}")

    @app.command("encode")
    def encode(
        features: Annotated[Path, typer.Argument(help="Folder of per-slide feature files.")],
        checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c",
                                                 help="Checkpoint folder or `mixmag pretrain` run folder.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (one .h5 per slide + manifest.csv).")],
        mode: Annotated[str, typer.Option(help="cls: one vector per region; tokens: every contextualised token.")] = "cls",
        batch_size: Annotated[int, typer.Option(help="Regions per forward pass.")] = 256,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
        precision: Annotated[str, typer.Option(help="fp32 (reproducible), bf16, fp16, auto.")] = "fp32",
        resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Skip slides already encoded.")] = True,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    ) -> None:
        """Write region embeddings (CLS or tokens) with a region-encoder checkpoint."""
        from mixmag.cli.common import exit_batch, friendly_errors

        with friendly_errors():
            from mixmag.region.encode import encode_regions

            summary = encode_regions(features, checkpoint, out, mode=mode, batch_size=batch_size, device=device,
                                     precision=precision, resume=resume, progress=progress)
        typer.echo(f"{summary.mode}: {summary.n_ok} encoded, {summary.n_skipped} already done, "
                   f"{summary.n_empty} empty, {summary.n_error} failed -> {summary.out_dir}")
        for slide_id, error in summary.errors.items():
            typer.secho(f"  {slide_id}: {error}", err=True, fg=typer.colors.RED)
        n_total = summary.n_ok + summary.n_skipped + summary.n_empty + summary.n_error
        exit_batch(n_total, summary.n_error, summary.manifest)
