"""``mixmag config init|show``: write a commented study-config template, print a resolved config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``config`` command group to ``app``."""
    group = typer.Typer(help="Write a commented config template or print a resolved config.",
                        no_args_is_help=True)
    app.add_typer(group, name="config")

    @group.command("init")
    def init(
        path: Annotated[Path | None, typer.Argument(help="File to write (default: print to stdout).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    ) -> None:
        """Write a YAML template of every setting, with its default and an explanation."""
        from mixmag.cli.common import fail
        from mixmag.config_template import config_template
        from mixmag.utils.atomic import atomic_write_text

        text = config_template()
        if path is None:
            typer.echo(text, nl=False)
            return
        if path.exists() and not force:
            fail(f"{path} already exists; pass --force to overwrite it")
        atomic_write_text(path, text)
        typer.echo(f"wrote {path}; edit it, then check it with `mixmag config show {path}`")

    @group.command("show")
    def show(
        path: Annotated[Path | None, typer.Argument(help="Study config YAML (default: built-in defaults).")] = None,
        overrides: Annotated[list[str] | None, typer.Option(
            "--set", help="Override a key: section.key=value (repeatable).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
    ) -> None:
        """Check a config and print it fully resolved (defaults < file < --set).

        Every value is checked (types, ranges, registry keys, magnifications) and so is every file
        it names (slides, labels and whether they match, mpp table, splits, region labels,
        checkpoints, local weights) and the region geometry: all problems are listed at once, one
        line each with file:line, and the exit status is 2.
        """
        import json

        from mixmag.cli.options import load_study_config
        from mixmag.config import dump_config

        config = load_study_config(path, overrides or [], stages=None)
        if as_json:
            typer.echo(json.dumps(config.model_dump(mode="json"), indent=2))
        else:
            typer.echo(dump_config(config), nl=False)
