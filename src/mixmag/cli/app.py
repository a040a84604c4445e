"""The ``mixmag`` command: a typer app assembled from one small module per command.

Each module in :data:`COMMAND_MODULES` exposes ``register(app)``; heavy libraries are imported
inside the command functions so ``mixmag --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperGroup

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


#: Levels ``--log-level`` accepts (any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# click's (or typer's vendored click's) usage error, and the one that means "show the help"
_USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_SHOW_HELP: type[Exception] | None = getattr(sys.modules[_USAGE_ERROR.__module__], "NoArgsIsHelpError", None)


@contextmanager
def _usage_errors_on_one_line() -> Iterator[None]:
    """Print a click usage error (bad option value, unknown option, missing argument) as one line.

    click would print the usage, a hint and a framed box (six lines for ``--lr fast``); every other
    user error of mixmag is one ``error:`` line with exit status 2, and so is this one, naming
    the option and where its help is.
    """
    try:
        yield
    except _USAGE_ERROR as exc:
        if _SHOW_HELP is not None and isinstance(exc, _SHOW_HELP):
            raise  # `mixmag` (or `mixmag config`) alone: click prints the help
        from mixmag.cli.common import fail

        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "mixmag"
        message = " ".join(exc.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
        fail(f"{message} (see `{command} --help`)")


class OneLineUsageErrors(TyperGroup):
    """The ``mixmag`` group: usage errors of any of its commands print as one ``error:`` line (exit 2)."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _usage_errors_on_one_line():  # the group's own options and `mixmag` alone
            return super().make_context(*args, **kwargs)

    def invoke(self, *args: Any, **kwargs: Any) -> Any:
        with _usage_errors_on_one_line():  # an unknown command, and every command's parsing
            return super().invoke(*args, **kwargs)


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
        cls=OneLineUsageErrors,
    )

    @app.callback()
    def _root(
        log_level: str = typer.Option("INFO", "--log-level", help=f"{', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]}."),
        version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                     help="Print the version and exit."),
    ) -> None:
        from mixmag.cli.common import fail
        from mixmag.utils.logging import configure_logging

        if log_level.upper() not in LOG_LEVELS:
            fail(f"--log-level {log_level!r} is not a level; use one of {', '.join(LOG_LEVELS)} (before the command "
                 "name: mixmag --log-level DEBUG tile ...)")
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
