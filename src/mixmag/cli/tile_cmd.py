"""``mixmag tile``: region indices (linked 5x/10x/20x tiles over tissue) for a batch of slides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mixmag.tiling import MIN_THUMBNAIL_PX


def register(app: typer.Typer) -> None:
    """Add the ``tile`` command to ``app``."""

    @app.command("tile")
    def tile(
        inputs: Annotated[list[Path], typer.Argument(
            help="Slide files, folders (searched recursively) or CSV lists with a 'path' column.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: regions/, qc/, tissue/, manifest.")],
        mpp: Annotated[float | None, typer.Option(
            "--mpp", help="Level-0 µm/px for every slide (overrides metadata).")] = None,
        mpp_csv: Annotated[Path | None, typer.Option(
            "--mpp-csv", help="CSV with columns slide,mpp (per-slide overrides).")] = None,
        magnifications: Annotated[str, typer.Option(
            "--magnifications", help="Comma list: labels (20x = 0.5 µm/px exactly) or '0.5mpp'.")] = "5x,10x,20x",
        region_um: Annotated[float, typer.Option("--region-um", help="Region side in µm.")] = 448.0,
        tile_px: Annotated[int, typer.Option("--tile-px", help="Tile side in pixels at every magnification.")] = 224,
        min_tissue: Annotated[float, typer.Option(
            "--min-tissue", min=0.0, max=1.0, help="Keep a region when its coarsest tile has this tissue fraction.")] = 0.25,
        valid_min_tissue: Annotated[float, typer.Option(
            "--valid-min-tissue", min=0.0, max=1.0, help="A token is valid when its tile has this tissue fraction.")] = 0.1,
        reader: Annotated[str | None, typer.Option("--reader", help="Force a backend (mixmag list readers).")] = None,
        thumbnail_px: Annotated[int, typer.Option(
            "--thumbnail-px", min=MIN_THUMBNAIL_PX, help="Thumbnail size for tissue detection and QC.")] = 2048,
        workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Slides processed in parallel.")] = 1,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute slides that are already done.")] = False,
        fail_fast: Annotated[bool, typer.Option(
            "--fail-fast", help="Stop at the first failing slide and exit non-zero.")] = False,
        no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide the progress bar.")] = False,
    ) -> None:
        """Tile slides into regions over tissue, each linked to its tiles at every magnification."""
        from mixmag.cli.common import EXIT_FAILED, friendly_errors
        from mixmag.geometry import RegionSpec, parse_magnification
        from mixmag.io.manifest import Status
        from mixmag.tiling.tile import tile_slides

        with friendly_errors():
            mpps = tuple(parse_magnification(m) for m in magnifications.split(",") if m.strip())
            spec = RegionSpec(region_um=region_um, tile_px=tile_px, mpps=mpps)
            summary = tile_slides(
                inputs, out, spec=spec, min_tissue=min_tissue, valid_min_tissue=valid_min_tissue,
                mpp_override=mpp, mpp_csv=mpp_csv, reader=reader, thumbnail_px=thumbnail_px, workers=workers,
                overwrite=overwrite, fail_fast=fail_fast, progress=not no_progress,
            )
        counts = ", ".join(f"{summary.count(s)} {s.value}" for s in Status)
        typer.echo(f"{summary.n_inputs} slides: {counts}; {summary.n_regions} regions -> {summary.manifest_path}")
        for r in summary.results:
            if r.status in (Status.ERROR, Status.EMPTY):
                typer.echo(f"  {r.status.value:5s} {r.slide_id}: {r.error}", err=True)
        if summary.stopped_early:
            typer.echo("stopped at the first error (--fail-fast)", err=True)
            raise typer.Exit(EXIT_FAILED)
        if summary.all_failed:
            typer.echo("every slide failed; see the manifest for the reasons", err=True)
            raise typer.Exit(EXIT_FAILED)
