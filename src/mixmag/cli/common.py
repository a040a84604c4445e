"""Helpers shared by CLI commands: one-line errors and exit codes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn, TypeVar

import typer

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Errors whose message is already written for a person: print it alone, without a traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError, RuntimeError)

EXIT_USAGE = 2
EXIT_FAILED = 1


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code``."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn expected exceptions into one readable line and a non-zero exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except EXPECTED_ERRORS as exc:
        logger.debug("command failed", exc_info=True)
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        fail(str(text))


def call(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Call ``fn`` inside :func:`friendly_errors`."""
    with friendly_errors():
        return fn(*args, **kwargs)
