"""``mixmag embed`` (region indexes -> feature files) and ``mixmag export`` (-> TRIDENT/CLAM files)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mixmag.cli.common import EXIT_FAILED, friendly_errors


def register(app: typer.Typer) -> None:
    """Add the ``embed`` and ``export`` commands to ``app``."""

    @app.command("embed")
    def embed(
        region_dir: Annotated[Path, typer.Argument(
            help="Output folder of `mixmag tile` (or a folder / list file of region .h5 files).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Feature folder (one folder per encoder).")],
        encoder: Annotated[str, typer.Option("--encoder", "-e", help="Encoder key (`mixmag list encoders`).")]
        = "efficientnet-lite0-imagenet",
        weights: Annotated[str | None, typer.Option(
            help="Weights file/folder or hub id (default: the encoder's own source).")] = None,
        random_weights: Annotated[bool, typer.Option(
            "--random-weights", help="Random weights: tests and benchmarks only (stamped in every file).")] = False,
        batch_size: Annotated[int, typer.Option(min=1, help="Tiles per forward pass.")] = 32,
        precision: Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16.")] = "auto",
        device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
        workers: Annotated[str, typer.Option(
            help="Region decoding: auto (inline on CPU, worker processes with a GPU), 0 (inline, one "
                 "thread per core) or a number of worker processes.")] = "auto",
        shard: Annotated[str | None, typer.Option(
            help="Static split i/n, 0-based (e.g. $SLURM_ARRAY_TASK_ID/8).")] = None,
        overwrite: Annotated[bool, typer.Option(help="Recompute slides that are already complete.")] = False,
        fail_fast: Annotated[bool, typer.Option(help="Stop at the first failing slide.")] = False,
        progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    ) -> None:
        """Embed the 5x/10x/20x tiles of every region with one tile encoder.

        Resumable (finished slides are skipped by provenance) and safe to run as several processes
        or Slurm array tasks on the same folders at once.
        """
        from mixmag.embed import embed_slides, parse_shard

        with friendly_errors():
            summary = embed_slides(
                region_dir, out, encoder=encoder, weights=weights, random_weights=random_weights,
                batch_size=batch_size, precision=precision, device=device, workers=workers,
                shard=parse_shard(shard), overwrite=overwrite, fail_fast=fail_fast, progress=progress,
            )
        typer.echo(
            f"{len(summary.ok)} embedded, {len(summary.skipped)} already done, "
            f"{len(summary.claimed_elsewhere)} taken by other processes, {len(summary.errors)} failed; "
            f"{summary.n_tiles} tiles at {summary.tiles_per_s:.1f} tiles/s ({summary.precision}). "
            f"Manifest: {summary.manifest}"
        )
        for slide_id, error in summary.errors.items():
            typer.secho(f"  {slide_id}: {error}", err=True, fg=typer.colors.RED)
        if summary.errors:
            raise typer.Exit(EXIT_FAILED)

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
        if summary.errors:
            raise typer.Exit(EXIT_FAILED)
