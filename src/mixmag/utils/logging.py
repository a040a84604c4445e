"""Logging set-up for the CLI (library modules only ever call ``logging.getLogger(__name__)``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str | int = "INFO", log_file: str | os.PathLike[str] | None = None) -> None:
    """Configure the root ``mixmag`` logger: rich console handler plus an optional file handler.

    Calling it again replaces earlier handlers, so a run can redirect ``run.log`` into its folder.
    """
    root = logging.getLogger("mixmag")
    root.setLevel(level if isinstance(level, int) else level.upper())
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    try:
        from rich.logging import RichHandler

        console: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        console.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    except ImportError:  # pragma: no cover - rich is a core dependency
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(console)
    if log_file is not None:
        add_file_handler(log_file)
    root.propagate = False


def add_file_handler(log_file: str | os.PathLike[str]) -> logging.Handler:
    """Append records of the ``mixmag`` logger to ``log_file`` (e.g. a run folder's ``run.log``)."""
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    logging.getLogger("mixmag").addHandler(handler)
    return handler
