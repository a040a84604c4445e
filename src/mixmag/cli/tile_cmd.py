"""``mixmag tile``: region indices (linked 5x/10x/20x tiles over tissue) for a batch of slides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel

from mixmag.cli.options import (
    ConfigFile,
    SetItems,
    given_settings,
    load_study_config,
    setting_option,
    split_list,
)
from mixmag.cluster.settings import Backend
from mixmag.config import SlidesConfig
from mixmag.tiling.settings import TilingSettings

# The `tiling` and `slides` sections: each named setting option below is one of their fields, with
# the field's docstring as help and its default (read from these instances) as default.
T, S = TilingSettings, SlidesConfig
_TILING, _SLIDES = TilingSettings(), SlidesConfig()
#: The config sections whose fields the named options set (see ``given_settings``).
SECTIONS: dict[str, type[BaseModel]] = {"tiling": TilingSettings, "slides": SlidesConfig}


def register(app: typer.Typer) -> None:
    """Add the ``tile`` command to ``app``."""

    @app.command("tile")
    def tile(
        ctx: typer.Context,
        out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: regions/, qc/, tissue/, manifest.")],
        inputs: Annotated[list[Path] | None, typer.Argument(
            help="Slide files, folders (searched recursively) or CSV lists with a 'path' column (default: "
                 "slides.inputs and slides.pretrain_inputs of the --config file).", metavar="INPUTS",
            show_default=False)] = None,
        config: ConfigFile = None,
        overrides: SetItems = None,
        mpp: Annotated[float | None, setting_option(S, "mpp")] = _SLIDES.mpp,
        mpp_csv: Annotated[Path | None, setting_option(S, "mpp_csv")] = _SLIDES.mpp_csv,
        reader: Annotated[str | None, setting_option(
            S, "reader", help="Force a reader backend (`mixmag list readers`); default: by extension and "
                              "priority.")] = _SLIDES.reader,
        magnifications: Annotated[list[str], setting_option(
            T, "magnifications", help="Comma-separated target magnifications (repeatable): labels (`20x` = 0.5 "
                                      "µm/px exactly) or exact resolutions (`0.5mpp`).")] = _TILING.magnifications,
        region_um: Annotated[float, setting_option(T, "region_um")] = _TILING.region_um,
        tile_px: Annotated[int, setting_option(T, "tile_px")] = _TILING.tile_px,
        min_tissue: Annotated[float, setting_option(T, "min_tissue")] = _TILING.min_tissue,
        workers: Annotated[int, setting_option(T, "workers", "--workers", "-w")] = _TILING.workers,
        backend: Annotated[Backend, setting_option(T, "backend")] = _TILING.backend,
        ray_address: Annotated[str, setting_option(T, "ray_address", "--address")] = _TILING.ray_address,
        ray_workers: Annotated[int | None, setting_option(T, "ray_workers", "--num-workers")] = _TILING.ray_workers,
        ray_max_retries: Annotated[int, setting_option(T, "ray_max_retries", "--max-retries")] = _TILING.ray_max_retries,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute slides that are already done.")] = False,
        fail_fast: Annotated[bool, typer.Option(
            "--fail-fast", help="Stop at the first failing slide and exit non-zero.")] = False,
        no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide the progress bar.")] = False,
    ) -> None:
        """Tile slides into regions over tissue, each linked to its tiles at every magnification.

        Slides run in this process, in --workers processes, or as Ray tasks on a cluster
        (--backend ray; docs/cluster.md).

        Settings come from the `tiling` section (and slides.mpp/mpp_csv/reader) of --config FILE,
        then --set section.KEY=VALUE, then the options below; e.g. --set tiling.thumbnail_px=1024
        --set tiling.valid_min_tissue=0.2.
        """
        from mixmag.cli.common import EXIT_FAILED, exit_batch, fail, friendly_errors
        from mixmag.io.manifest import Status
        from mixmag.tiling.tile import tile_slides

        values, sources = given_settings(ctx, SECTIONS)
        if "tiling.magnifications" in values:
            values["tiling.magnifications"] = split_list(values["tiling.magnifications"])
        if inputs:  # INPUTS replace the config's slides; checked (and blamed) like them
            values.update({"slides.inputs": list(inputs), "slides.pretrain_inputs": []})
            sources.update({"slides.inputs": "INPUTS", "slides.pretrain_inputs": "INPUTS"})
        cfg = load_study_config(config, overrides, values, sources, stages=("tile",))
        s = cfg.slides
        slides = [*s.inputs, *s.pretrain_inputs]
        if not slides:
            fail("no slides: give INPUTS, or set slides.inputs in the --config file")
        with friendly_errors():
            summary = tile_slides(slides, out, settings=cfg.tiling, mpp_override=s.mpp, mpp_csv=s.mpp_csv,
                                  reader=s.reader, overwrite=overwrite, fail_fast=fail_fast, progress=not no_progress)
        counts = ", ".join(f"{summary.count(st)} {st.value}" for st in Status)
        warned = f"; {summary.n_warned} with input warnings (manifest 'warnings' column)" if summary.n_warned else ""
        typer.echo(f"{summary.n_inputs} slides: {counts}{warned}; {summary.n_regions} regions -> "
                   f"{summary.manifest_path}")
        if summary.workers:
            from mixmag.cluster.runtime import describe_workers

            typer.echo(describe_workers(summary.workers))
        for r in summary.results:
            if r.status in (Status.ERROR, Status.EMPTY):
                typer.echo(f"  {r.status.value:5s} {r.slide_id}: {r.error}", err=True)
        if summary.stopped_early:
            typer.echo("stopped at the first error (--fail-fast)", err=True)
            raise typer.Exit(EXIT_FAILED)
        # `empty` (no tissue) is a finished slide, not a failure; every slide failing exits 1
        exit_batch(summary.n_inputs, summary.count(Status.ERROR), summary.manifest_path)
