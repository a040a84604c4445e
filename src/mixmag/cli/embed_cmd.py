"""``mixmag embed`` (region indexes -> feature files) and ``mixmag export`` (-> TRIDENT/CLAM files)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel

from mixmag.cli.common import exit_batch, friendly_errors
from mixmag.cli.options import (
    ConfigFile,
    SetItems,
    given_settings,
    load_study_config,
    setting_option,
)
from mixmag.cluster.settings import Backend
from mixmag.embed.settings import EmbedSettings
from mixmag.utils.settings import Precision

# The `embed` section: each named setting option below is one of its fields, with the field's
# docstring as help and its default (read from this instance) as default.
E = EmbedSettings
_EMBED = EmbedSettings()
#: The config sections whose fields the named options set (see ``given_settings``).
SECTIONS: dict[str, type[BaseModel]] = {"embed": EmbedSettings}


def register(app: typer.Typer) -> None:
    """Add the ``embed`` and ``export`` commands to ``app``."""

    @app.command("embed")
    def embed(
        ctx: typer.Context,
        region_dir: Annotated[Path, typer.Argument(
            help="Output folder of `mixmag tile` (or a folder / list file of region .h5 files).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Feature folder (one folder per encoder).")],
        config: ConfigFile = None,
        overrides: SetItems = None,
        encoder: Annotated[str, setting_option(E, "encoder", "--encoder", "-e")] = _EMBED.encoder,
        weights: Annotated[str | None, setting_option(E, "weights")] = _EMBED.weights,
        random_weights: Annotated[bool, setting_option(E, "random_weights")] = _EMBED.random_weights,
        batch_size: Annotated[int, setting_option(E, "batch_size")] = _EMBED.batch_size,
        precision: Annotated[Precision, setting_option(E, "precision")] = _EMBED.precision,
        device: Annotated[str, setting_option(E, "device")] = _EMBED.device,
        threads: Annotated[int | None, setting_option(E, "threads")] = _EMBED.threads,
        workers: Annotated[str, setting_option(E, "workers")] = str(_EMBED.workers),
        backend: Annotated[Backend, setting_option(E, "backend")] = _EMBED.backend,
        ray_address: Annotated[str, setting_option(E, "ray_address", "--address")] = _EMBED.ray_address,
        ray_workers: Annotated[int | None, setting_option(E, "ray_workers", "--num-workers")] = _EMBED.ray_workers,
        ray_gpus_per_worker: Annotated[float | None, setting_option(
            E, "ray_gpus_per_worker", "--gpus-per-worker")] = _EMBED.ray_gpus_per_worker,
        ray_cpus_per_worker: Annotated[int | None, setting_option(
            E, "ray_cpus_per_worker", "--cpus-per-worker")] = _EMBED.ray_cpus_per_worker,
        ray_max_retries: Annotated[int, setting_option(E, "ray_max_retries", "--max-retries")] = _EMBED.ray_max_retries,
        shard: Annotated[str | None, typer.Option(
            help="Static split i/n, 0-based (e.g. $SLURM_ARRAY_TASK_ID/8).")] = None,
        overwrite: Annotated[bool, typer.Option(help="Recompute slides that are already complete.")] = False,
        fail_fast: Annotated[bool, typer.Option(help="Stop at the first failing slide.")] = False,
        progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    ) -> None:
        """Embed the 5x/10x/20x tiles of every region with one tile encoder.

        Resumable (finished slides are skipped by provenance) and safe to run as several processes
        or Slurm array tasks on the same folders at once, or on a Ray cluster (--backend ray, one
        model per GPU or CPU slot; docs/cluster.md). Settings come from the `embed` section of
        --config FILE, then --set embed.KEY=VALUE, then the options below.
        """
        from mixmag.embed import embed_slides, parse_shard

        values, sources = given_settings(ctx, SECTIONS)
        cfg = load_study_config(config, overrides, values, sources, stages=("embed",))
        with friendly_errors():
            summary = embed_slides(region_dir, out, settings=cfg.embed, shard=parse_shard(shard),
                                   overwrite=overwrite, fail_fast=fail_fast, progress=progress)
        typer.echo(
            f"{len(summary.ok)} embedded, {len(summary.skipped)} already done, "
            f"{len(summary.claimed_elsewhere)} taken by other processes, {len(summary.errors)} failed; "
            f"{summary.n_tiles} tiles at {summary.tiles_per_s:.1f} tiles/s ({summary.precision}). "
            f"Manifest: {summary.manifest}"
        )
        if summary.workers:
            from mixmag.cluster.runtime import describe_workers

            typer.echo(describe_workers(summary.workers))
        for slide_id, error in summary.errors.items():
            typer.secho(f"  {slide_id}: {error}", err=True, fg=typer.colors.RED)
        n_total = len(summary.ok) + len(summary.skipped) + len(summary.claimed_elsewhere) + len(summary.errors)
        exit_batch(n_total, len(summary.errors), summary.manifest)

    @app.command("export")
    def export(
        feature_dir: Annotated[Path, typer.Argument(help="Feature folder written by `mixmag embed`.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Export folder.")],
        fmt: Annotated[str, typer.Option("--format", "-f", help="trident or clam.")] = "trident",
        mag: Annotated[str, typer.Option(help="Magnification: 20, 10, 5 (or 20x, 0.5mpp).")] = "20",
        all_tiles: Annotated[bool, typer.Option(help="Also export tiles with too little tissue.")] = False,
        overwrite: Annotated[bool, typer.Option(help="Rewrite existing exports.")] = False,
        progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    ) -> None:
        """Write single-magnification TRIDENT/CLAM patch-feature files (features + level-0 tile coords)."""
        from mixmag.embed import export_features

        with friendly_errors():
            summary = export_features(feature_dir, out, fmt=fmt, mag=mag, all_tiles=all_tiles,
                                      overwrite=overwrite, progress=progress)
        typer.echo(f"{len(summary.written)} exported ({summary.n_tiles} tiles), {len(summary.skipped)} existed, "
                   f"{len(summary.errors)} failed -> {summary.out_dir}")
        for slide_id, error in summary.errors.items():
            typer.secho(f"  {slide_id}: {error}", err=True, fg=typer.colors.RED)
        n_total = len(summary.written) + len(summary.skipped) + len(summary.errors)
        exit_batch(n_total, len(summary.errors), summary.out_dir / "manifest.csv")
