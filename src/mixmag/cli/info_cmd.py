"""``mixmag info SLIDE``: pyramid levels, resolution and its source, objective, vendor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``info`` command to ``app``."""

    @app.command("info")
    def info(
        slide: Annotated[Path, typer.Argument(help="Slide file.")],
        reader: Annotated[str | None, typer.Option("--reader", help="Force a backend (mixmag list readers).")] = None,
        mpp: Annotated[float | None, typer.Option("--mpp", help="Level-0 µm/px override to check.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Describe a slide: levels (size, downsample, µm/px), mpp and its source, objective, vendor."""
        import json

        from mixmag.cli.common import friendly_errors
        from mixmag.slides.info import slide_info

        with friendly_errors():
            data = slide_info(slide, reader=reader, mpp_override=mpp)
        if as_json:
            typer.echo(json.dumps(data, indent=2, default=str))
            return
        typer.echo(f"{data['path']}\n  reader: {data['reader']}   vendor: {data['vendor']}   "
                   f"objective: {data['objective_power'] or '-'}")
        if data["mpp"] is not None:
            typer.echo(f"  mpp: {data['mpp']:.6g} µm/px (source: {data['mpp_source']})")
        else:
            typer.echo(f"  mpp: unknown - {data['mpp_error']}")
        typer.echo("  level  width x height   downsample   µm/px")
        for lv in data["levels"]:
            um = f"{lv['mpp']:.4g}" if lv["mpp"] is not None else "-"
            typer.echo(f"  {lv['level']:>5}  {lv['width']:>6} x {lv['height']:<7} {lv['downsample']:>10.4f}   {um}")
