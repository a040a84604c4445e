"""The ``mixmag`` command: a typer app assembled from one small module per command.

Each module in :data:`COMMAND_MODULES` exposes ``register(app)``; heavy libraries are imported
inside the command functions so ``mixmag --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from mixmag._version import __version__

# One module per command group, in the order they appear in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "info_cmd",
    "tile_cmd",
    "list_cmd",
    "embed_cmd",
    "pretrain_cmd",
    "train_cmd",
    "synth_cmd",
    "config_cmd",
    "report_cmd",
    "diagnose_cmd",
    "predict_cmd",
    "run_cmd",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"mixmag {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    """Create the typer application with every command registered."""
    app = typer.Typer(
        name="mixmag",
        help="Mixed-magnification region aggregation for computational pathology.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root(
        log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
        version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                     help="Print the version and exit."),
    ) -> None:
        from mixmag.utils.logging import configure_logging

        configure_logging(log_level)

    for name in COMMAND_MODULES:
        importlib.import_module(f"mixmag.cli.{name}").register(app)
    return app


def main() -> None:
    """Console-script entry point.

    Commands wrap their work in :func:`~mixmag.cli.common.friendly_errors`; an exception raised
    outside such a block (while printing results, say) gets the same treatment here, so a user
    error is still one line and a bug still a traceback with exit status 70. (Click itself turns
    Ctrl-C outside those blocks into "Aborted!" and exit status 1.)
    """
    app = build_app()
    try:
        code = app(standalone_mode=True)
    except (Exception, KeyboardInterrupt) as exc:
        from mixmag.cli.common import PASSTHROUGH, report_error

        if isinstance(exc, PASSTHROUGH):  # not expected in standalone mode; keep click's meaning
            raise
        code = report_error(exc)
    sys.exit(code)
