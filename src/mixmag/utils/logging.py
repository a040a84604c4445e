"""Logging set-up for the CLI (library modules only ever call ``logging.getLogger(__name__)``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: Libraries that log what they find wrong in a user's file (tifffile: ``<tifffile.TiffPages @8>
#: invalid page offset 382734``, once per look at a damaged TIFF) just before mixmag reports the
#: same problem in one line. They have no handler of their own, so Python's last-resort handler
#: would print those records raw on stderr; the CLI shows them with ``--log-level DEBUG`` only,
#: through mixmag's handlers.
QUIET_LIBRARIES = ("tifffile",)


class _AsDebug(logging.Handler):
    """Hands a library's records to the ``mixmag`` logger's handlers as DEBUG records."""

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger("mixmag")
        if target.isEnabledFor(logging.DEBUG):
            demoted = logging.makeLogRecord(record.__dict__)  # the record itself travels on to other handlers
            demoted.levelno, demoted.levelname = logging.DEBUG, "DEBUG"
            target.handle(demoted)


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
    for name in QUIET_LIBRARIES:
        library = logging.getLogger(name)
        for handler in [h for h in library.handlers if isinstance(h, _AsDebug)]:
            library.removeHandler(handler)
        library.addHandler(_AsDebug())  # a handler: the last-resort one stays silent


def add_file_handler(log_file: str | os.PathLike[str]) -> logging.Handler:
    """Append records of the ``mixmag`` logger to ``log_file`` (e.g. a run folder's ``run.log``)."""
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    logging.getLogger("mixmag").addHandler(handler)
    return handler
