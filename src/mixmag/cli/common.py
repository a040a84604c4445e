"""Helpers shared by CLI commands: one-line errors, bug reports and exit codes.

Two kinds of failure leave a command differently (see :mod:`mixmag.errors`):

* a user error (:class:`~mixmag.errors.MixmagError`, or an ``OSError`` such as a permission
  problem or a full disk) prints one red ``error: <message>`` line and exits with
  :data:`EXIT_USAGE`; the message already says what to change, a traceback would only hide it;
* anything else is a bug in mixmag: the full traceback is printed, then one line asking for a
  report, and the exit status is :data:`EXIT_SOFTWARE` (``EX_SOFTWARE`` of ``sysexits.h``).

A batch command (``tile``, ``embed``, ``export``, ``encode``, ``predict``, ``run``) that finishes
ends with :func:`finish_batch`: exit :data:`EXIT_OK` when no input failed, :data:`EXIT_PARTIAL`
when some failed (recorded in the manifest, the rest kept), :data:`EXIT_FAILED` when none
succeeded. The table is in ``docs/cli/exit-codes.md``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import NoReturn, TypeVar

import typer

from mixmag.errors import MixmagError
from mixmag.utils.cost import CostEstimate

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Errors whose message is written for a person: printed alone, without a traceback. OSError is
# here because a denied permission, a full disk or a vanished file is the machine's state, not a
# mixmag bug, and its message names the path; a report would not help anyone.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (MixmagError, OSError)

# The exit-code contract of every command (docs/cli/exit-codes.md); scripts and schedulers branch
# on these, so a value never changes meaning.
EXIT_OK = 0
EXIT_FAILED = 1  # a batch where no input succeeded, or one that --fail-fast stopped
EXIT_USAGE = 2  # a user error: option, config, input path, weights ... (one line)
EXIT_PARTIAL = 3  # the batch finished; some inputs failed and are recorded in its manifest
EXIT_SOFTWARE = 70  # sysexits.h EX_SOFTWARE: an internal error
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

FALLBACK_TRACKER = "the mixmag issue tracker"
# Project-URL labels (pyproject [project.urls]) that name the issue tracker, most specific first.
_TRACKER_LABELS = ("issues", "issue tracker", "bug tracker", "bugs", "tracker")


def _passthrough() -> tuple[type[BaseException], ...]:
    """typer/click exceptions that carry an exit code or a usage error; click reports them itself."""
    kinds: list[type[BaseException]] = [typer.Exit, typer.Abort]
    base = getattr(typer, "TyperException", None)  # typer >= 0.20: base of its vendored click errors
    if base is None:  # older typer uses click's own classes
        import click

        base = click.ClickException
    kinds.append(base)
    return tuple(kinds)


PASSTHROUGH: tuple[type[BaseException], ...] = _passthrough()


@cache
def issue_tracker() -> str:
    """The issue-tracker URL from the installed package metadata, or a generic wording.

    Read from the ``Project-URL`` entries (pyproject ``[project.urls]``) so adding an ``Issues``
    link there is enough; only called on the error path, so the metadata lookup costs nothing
    on a normal run.
    """
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        entries = metadata("mixmag").get_all("Project-URL") or []
    except PackageNotFoundError:
        return FALLBACK_TRACKER
    urls: dict[str, str] = {}
    for entry in entries:
        label, _, url = entry.partition(",")
        urls[label.strip().lower()] = url.strip()
    for label in _TRACKER_LABELS:
        if urls.get(label):
            return urls[label]
    return FALLBACK_TRACKER


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code``."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def finish_batch(n_total: int, n_failed: int, where: object, *, noun: str = "slides") -> int:
    """The exit code of a batch that ran to its end, after one summary line when inputs failed.

    Prints ``N of M <noun> failed; see <where>`` to stderr when ``n_failed`` > 0 and nothing
    otherwise (the command has already printed its counts).

    Args:
        n_total: Inputs of the batch (done, reused and failed alike).
        n_failed: Inputs that failed and were recorded (manifest ``status=error``, ``problems.csv``).
        where: What to read for the reasons, usually the manifest path.
        noun: What the inputs are, plural.

    Returns:
        :data:`EXIT_OK` when nothing failed, :data:`EXIT_FAILED` when every input failed (nothing
        came out of the batch), else :data:`EXIT_PARTIAL`.
    """
    if n_failed <= 0:
        return EXIT_OK
    every = n_failed >= n_total
    typer.secho(f"{n_failed} of {max(n_total, n_failed)} {noun} failed; see {where}", err=True,
                fg=typer.colors.RED if every else typer.colors.YELLOW)
    return EXIT_FAILED if every else EXIT_PARTIAL


def exit_batch(n_total: int, n_failed: int, where: object, *, noun: str = "slides") -> None:
    """:func:`finish_batch`, then leave the command with its code unless that is :data:`EXIT_OK`."""
    code = finish_batch(n_total, n_failed, where, noun=noun)
    if code != EXIT_OK:
        raise typer.Exit(code)


def report_error(exc: BaseException) -> int:
    """Print ``exc`` the way the CLI shows failures and return the exit status to use.

    User errors (:data:`EXPECTED_ERRORS`) print one line; an interrupt prints one line; anything
    else prints its traceback and a request to report the bug.
    """
    if isinstance(exc, KeyboardInterrupt):
        typer.secho("interrupted", err=True, fg=typer.colors.RED)
        return EXIT_INTERRUPTED
    if isinstance(exc, EXPECTED_ERRORS):
        # the traceback is still there for --log-level DEBUG, e.g. to see which file was involved
        logger.debug("command failed", exc_info=exc)
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        return EXIT_USAGE
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    typer.echo(text.rstrip("\n"), err=True)
    typer.secho(f"internal error: this is a bug in mixmag; please report it, with the traceback above, at "
                f"{issue_tracker()}", err=True, fg=typer.colors.RED)
    return EXIT_SOFTWARE


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn a failure of the wrapped block into the CLI's output and exit code (see :func:`report_error`)."""
    try:
        yield
    except PASSTHROUGH:
        raise
    except (Exception, KeyboardInterrupt) as exc:
        raise typer.Exit(report_error(exc)) from None


def call(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Call ``fn`` inside :func:`friendly_errors`."""
    with friendly_errors():
        return fn(*args, **kwargs)


def terminal_ask(yes: bool) -> Callable[[CostEstimate], bool] | None:
    """The ``ask`` callback of long stages (:func:`mixmag.utils.cost.check_cost`) for a command.

    ``--yes`` answers every question in advance; with stdin a terminal a person is asked; otherwise
    (a batch job, a pipe) None, so an over-limit estimate stops the stage with its message instead
    of waiting for an answer that never comes.
    """
    if yes:
        return lambda estimate: True
    if not sys.stdin.isatty():
        return None

    def ask(estimate: CostEstimate) -> bool:
        typer.echo(f"{estimate.describe()}; to make it shorter: {estimate.advice}.", err=True)
        return bool(typer.confirm("Go on?", default=False, err=True))

    return ask
