"""``mixmag list readers|encoders``: what the registries hold, with metadata."""

from __future__ import annotations

import importlib

import typer

# registry kind -> (module that populates it on import, attribute holding the Registry)
REGISTRIES: dict[str, tuple[str, str]] = {
    "readers": ("mixmag.slides", "READERS"),
    "encoders": ("mixmag.encoders", "ENCODERS"),
}


PREFERRED_COLUMNS = ("key", "embed_dim", "pooling", "gated", "license", "extensions", "priority", "package")


def register(app: typer.Typer) -> None:
    """Add the ``list`` command to ``app``."""

    @app.command("list")
    def list_registry(
        kind: str = typer.Argument(..., help=f"One of: {', '.join(REGISTRIES)}."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """List registered slide readers or tile encoders with their metadata."""
        import json

        from rich.console import Console
        from rich.table import Table

        from mixmag.cli.common import fail

        if kind not in REGISTRIES:
            fail(f"unknown registry {kind!r}; choose one of {', '.join(REGISTRIES)}")
        module_name, attr = REGISTRIES[kind]
        registry = getattr(importlib.import_module(module_name), attr)
        rows = registry.describe()
        if as_json:
            typer.echo(json.dumps(rows, indent=2, default=str))
            return
        present = list(dict.fromkeys(k for row in rows for k in row))
        # the few columns a person scans first; --json has every field
        preferred = [c for c in PREFERRED_COLUMNS if c in present]
        columns = preferred if len(preferred) >= 2 else present[:6]
        table = Table(title=f"mixmag {kind}")
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*(str(row.get(c, "")) for c in columns))
        Console().print(table)
