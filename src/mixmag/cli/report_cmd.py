"""``mixmag report`` (the HTML report of a run) and ``mixmag heatmap`` (attention figures of a slide)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import BaseModel

from mixmag.cli.options import (
    ConfigFile,
    SetItems,
    given_settings,
    load_study_config,
    setting_option,
)
from mixmag.errors import MixmagValueError, reading_user_file
from mixmag.report.settings import MIN_HEATMAP_THUMBNAIL_PX, ReportSettings

if TYPE_CHECKING:
    import numpy as np

# The `report` section: each named setting option below is one of its fields, with the field's
# docstring as help and its default (read from this instance) as default.
R = ReportSettings
_REPORT = ReportSettings()
#: The config sections whose fields the named options set (see ``given_settings``).
SECTIONS: dict[str, type[BaseModel]] = {"report": ReportSettings}


def _load_scores(path: Path, name: str) -> np.ndarray:
    """(R,) or (R, T) scores from .npy, or from a CSV column ``name`` (rows in region order)."""
    import numpy as np
    import pandas as pd

    with reading_user_file(path):
        if path.suffix == ".npy":
            return np.load(path)
        df = pd.read_csv(path)
    if name not in df.columns:
        raise MixmagValueError(f"{path} has no {name!r} column (columns: {', '.join(df.columns)})")
    return df[name].to_numpy(dtype=float)


def register(app: typer.Typer) -> None:
    """Add the ``report`` and ``heatmap`` commands to ``app``."""

    @app.command("report")
    def report(
        ctx: typer.Context,
        run_dir: Annotated[Path | None, typer.Argument(
            help="Run folder; its files are found at their conventional places.")] = None,
        inputs: Annotated[Path | None, typer.Option(help="JSON file listing the inputs (see docs/report.md).")] = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file (default: RUN_DIR/report.html).")] = None,
        config: ConfigFile = None,
        overrides: SetItems = None,
        heatmap_slides: Annotated[int, setting_option(R, "heatmap_slides")] = _REPORT.heatmap_slides,
        top_k: Annotated[int, setting_option(R, "top_k")] = _REPORT.top_k,
        thumbnail_px: Annotated[int, setting_option(R, "thumbnail_px")] = _REPORT.thumbnail_px,
    ) -> None:
        """Build the self-contained HTML report of a run.

        Given report settings (the options below, --set report.KEY=VALUE or the `report` section of
        --config FILE), the heatmaps of a `mixmag run` folder are drawn again with them first;
        without, the report shows the pictures the run made.
        """
        from mixmag.cli.common import fail, friendly_errors
        from mixmag.pipeline.report import is_study_folder, rebuild_study_report
        from mixmag.report.build import build_report_from_inputs, discover_inputs

        if run_dir is None and inputs is None:
            fail("give a run folder or --inputs FILE.json")
        values, sources = given_settings(ctx, SECTIONS)
        settings = load_study_config(config, overrides, values, sources).report
        if settings.model_fields_set and run_dir is None:
            fail("report settings redraw the heatmaps of a `mixmag run` folder: give RUN_DIR")
        with friendly_errors():
            if settings.model_fields_set:
                from mixmag.pipeline.heatmaps import redraw_run_heatmaps

                drawn = redraw_run_heatmaps(run_dir, settings)  # type: ignore[arg-type]
                typer.echo(f"heatmaps: {len(drawn)} pictures in {run_dir / 'heatmaps'}")  # type: ignore[operator]
            if inputs is None and out is None and run_dir is not None and is_study_folder(run_dir):
                # a `mixmag run` folder: the study's own report builder, so nothing the run showed is lost
                path = rebuild_study_report(run_dir)
            else:
                spec = inputs if inputs is not None else discover_inputs(run_dir)  # type: ignore[arg-type]
                path = build_report_from_inputs(spec, out)
        typer.echo(f"report: {path}")

    @app.command("heatmap")
    def heatmap(
        slide: Annotated[Path, typer.Argument(help="The slide (for the thumbnail and the top-k crops).")],
        regions: Annotated[Path, typer.Option(help="Region index (.h5) of the slide, from `mixmag tile`.")],
        attention: Annotated[Path, typer.Option(
            help="Per-region attention: .npy (R,) or CSV with an 'attention' column, in region order.")],
        tokens: Annotated[Path | None, typer.Option(
            help="Per-token scores .npy (R, T) for the within-region view.")] = None,
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("heatmaps"),
        top_k: Annotated[int, setting_option(R, "top_k", min=0)] = _REPORT.top_k,
        thumbnail_px: Annotated[int, setting_option(R, "thumbnail_px", min=MIN_HEATMAP_THUMBNAIL_PX)]
        = _REPORT.thumbnail_px,
        no_crops: Annotated[bool, typer.Option("--no-crops", help="Do not read region pixels (thumbnail only).")] = False,
    ) -> None:
        """Write attention heatmap PNGs of one slide from stored scores."""
        from mixmag.cli.common import friendly_errors
        from mixmag.io.regions import read_region_index
        from mixmag.report.heatmap import read_region_tiles, top_k_regions, write_slide_heatmaps
        from mixmag.slides import open_slide

        with friendly_errors():
            index = read_region_index(regions)
            att = _load_scores(attention, "attention").reshape(-1)
            if len(att) != index.n_regions:
                raise MixmagValueError(f"{attention} has {len(att)} scores but {regions} has {index.n_regions} regions")
            tok = _load_scores(tokens, "score") if tokens is not None else None
            with open_slide(slide, reader=index.attrs.get("reader")) as reader:
                thumb, dims = reader.thumbnail(thumbnail_px), reader.dimensions
            top = top_k_regions(att, top_k)
            tiles = None if no_crops or not len(top) else read_region_tiles(slide, index, top)
            written = write_slide_heatmaps(
                out, slide_id=index.slide_id or slide.stem, thumbnail=thumb, level0_size=dims,
                coords=index.coords, region_size_level0=index.region_size_level0, attention=att,
                spec=index.spec, token_scores=tok, top_tiles=tiles, top_k=top_k, valid=index.tile_valid,
            )
        for kind, path in written.items():
            typer.echo(f"{kind}: {path}")
