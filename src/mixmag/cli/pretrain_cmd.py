"""``mixmag pretrain`` (region-encoder pretraining) and ``mixmag encode`` (region embeddings)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``pretrain`` and ``encode`` commands to ``app``."""

    @app.command("pretrain")
    def pretrain(
        features: Annotated[Path, typer.Argument(help="Folder of per-slide feature files (`mixmag embed` output).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (checkpoints, metrics, loss curve).")],
        objective: Annotated[str, typer.Option(help="mem, cmem, or random (untrained encoder baseline).")] = "mem",
        config: Annotated[Path | None, typer.Option(help="Study YAML; its `region` section gives defaults.")] = None,
        preset: Annotated[str | None, typer.Option(help="Architecture: base (W768/d6/h12), small, tiny.")] = None,
        width: Annotated[int | None, typer.Option(help="Model width W (overrides the preset).")] = None,
        depth: Annotated[int | None, typer.Option(help="Transformer blocks (overrides the preset).")] = None,
        heads: Annotated[int | None, typer.Option(help="Attention heads (overrides the preset).")] = None,
        position: Annotated[str | None, typer.Option(help="slot (learned per token) or sincos (tile centre).")] = None,
        steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Global batch in regions per step.")] = None,
        lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
        mask_ratio: Annotated[float | None, typer.Option(help="Fraction of valid tokens masked.")] = None,
        mag_mask_prob: Annotated[float | None, typer.Option(help="Probability of masking one whole magnification.")] = None,
        token_drop_max: Annotated[float | None, typer.Option(help="Max fraction of valid tokens dropped per view.")] = None,
        regions_per_slide: Annotated[int | None, typer.Option(help="Regions sampled per slide per epoch.")] = None,
        contrastive_weight: Annotated[float | None, typer.Option(help="CMEM λ (weight of InfoNCE).")] = None,
        temperature: Annotated[float | None, typer.Option(help="CMEM InfoNCE temperature τ.")] = None,
        seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
        device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = None,
        precision: Annotated[str | None, typer.Option(help="auto, fp32, bf16, fp16.")] = None,
        num_workers: Annotated[int | None, typer.Option(help="Data-loader processes.")] = None,
        checkpoint_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps (0 = final only).")] = None,
        resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from the newest checkpoint.")] = True,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    ) -> None:
        """Pretrain the region-level mixing encoder (MEM / CMEM) on a feature store.

        Multi-GPU: torchrun --nproc_per_node N -m mixmag pretrain ... (--batch-size stays global).
        """
        from mixmag.cli.common import friendly_errors

        with friendly_errors():
            from mixmag.config import RegionConfig
            from mixmag.config_errors import load_config_checked
            from mixmag.region.pretrain import pretrain_region_encoder
            from mixmag.region.settings import settings_from_config
            from mixmag.utils.logging import add_file_handler

            region = load_config_checked(config).region if config is not None else RegionConfig()
            settings = settings_from_config(
                region, objective=objective, preset=preset, width=width, depth=depth, heads=heads,
                position=position, steps=steps, batch_size=batch_size, lr=lr, mask_ratio=mask_ratio,
                mag_mask_prob=mag_mask_prob, token_drop_max=token_drop_max, regions_per_slide=regions_per_slide,
                contrastive_weight=contrastive_weight, temperature=temperature, seed=seed, device=device,
                precision=precision, num_workers=num_workers, checkpoint_every=checkpoint_every)
            if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 writes run.log
                add_file_handler(out / "run.log")
            result = pretrain_region_encoder(features, out, settings=settings, resume=resume, progress=progress)
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
        from mixmag.cli.common import EXIT_FAILED, fail, friendly_errors

        with friendly_errors():
            from mixmag.region.encode import encode_regions

            summary = encode_regions(features, checkpoint, out, mode=mode, batch_size=batch_size, device=device,
                                     precision=precision, resume=resume, progress=progress)
        typer.echo(f"{summary.mode}: {summary.n_ok} encoded, {summary.n_skipped} already done, "
                   f"{summary.n_empty} empty, {summary.n_error} failed -> {summary.out_dir}")
        if summary.n_error:
            slide, message = next(iter(summary.errors.items()))
            fail(f"{summary.n_error} slide(s) failed (see {summary.manifest}); first: {slide}: {message}",
                 code=EXIT_FAILED)
