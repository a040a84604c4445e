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
        """Validate a config and print it fully resolved (defaults < file < --set)."""
        import json

        from mixmag.cli.common import friendly_errors
        from mixmag.config import dump_config
        from mixmag.config_errors import load_config_checked

        with friendly_errors():
            config = load_config_checked(path, overrides or [])
        if as_json:
            typer.echo(json.dumps(config.model_dump(mode="json"), indent=2))
        else:
            typer.echo(dump_config(config), nl=False)
