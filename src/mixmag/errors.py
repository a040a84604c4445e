"""One error hierarchy: every error mixmag raises *for a person to read* derives from :class:`MixmagError`.

The split that matters is *who has to act*:

* a :class:`MixmagError` means the input, a setting, a file or the environment is wrong, and the
  message says what to change. The CLI prints it as one ``error: ...`` line, without a traceback.
* any other exception (a builtin ``ValueError``, ``KeyError``, ``AssertionError``, ...) means
  mixmag itself is wrong: an internal invariant broke or a function was called incorrectly by
  mixmag's own code. The CLI prints the full traceback and asks for a bug report (exit 70).

Rule of thumb when writing a ``raise``: if a CLI user or a study config can trigger it with their
own data, options or files, raise one of the classes below; if only a wrong call from code can,
raise a builtin (or ``assert``).

The subclasses also keep the matching builtin base, so existing ``except ValueError`` /
``except KeyError`` / ``except FileNotFoundError`` callers (and ``pytest.raises``) keep working.
This module imports nothing from mixmag, so every layer can use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "MixmagError",
    "MixmagFileNotFoundError",
    "MixmagKeyError",
    "MixmagRuntimeError",
    "MixmagValueError",
    "one_line",
    "reading_user_file",
]


class MixmagError(Exception):
    """Base of every user-facing mixmag error; its message is written for a person.

    Raise a subclass rather than this class when one fits, so callers can still catch the
    builtin category (``ValueError``, ``KeyError``, ...). Domain errors (``SlideError``,
    ``FormatError``, ``ConfigError`` ...) derive from it too.
    """


class MixmagValueError(MixmagError, ValueError):
    """A bad argument, option, setting or input content: wrong range, malformed text, missing
    column, two inputs that disagree. Use for anything a user fixes by changing what they passed.
    """


class MixmagKeyError(MixmagError, KeyError):
    """An unknown name: a registry key, a method, a magnification or a column asked for by name.

    Unlike :class:`KeyError`, ``str()`` is the plain message (``KeyError`` shows the repr of its
    argument, wrapping a sentence in quotes), so it prints cleanly on one line.
    """

    def __str__(self) -> str:
        if len(self.args) == 1:
            return str(self.args[0])
        return super().__str__()


class MixmagFileNotFoundError(MixmagError, FileNotFoundError):
    """A file or folder the user pointed at (or that an earlier step should have written) is
    missing; the message names the path and, where there is one, the command that creates it.
    """


class MixmagRuntimeError(MixmagError, RuntimeError):
    """A run cannot go on for a reason found while running (every slide failed, the loss became
    NaN, nothing left to train on) that the user fixes by changing data or settings.
    """


def one_line(exc: BaseException) -> str:
    """``exc`` as one line for a manifest or a per-slide message.

    A :class:`MixmagError` is already written for a person: its message alone. Any other exception
    keeps its class name, which is often the only clue (``KeyError: 'coords'``).
    """
    text = " ".join(str(exc).split())
    return text if isinstance(exc, MixmagError) and text else f"{type(exc).__name__}: {text}"


@contextmanager
def reading_user_file(source: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise a parser's complaint about a file the user gave as a :class:`MixmagValueError`.

    Parsers report malformed input with builtin ``ValueError`` subclasses (pandas ``ParserError``
    and ``EmptyDataError``, ``json.JSONDecodeError``, ``UnicodeDecodeError``, ``numpy.load``),
    which the CLI would otherwise treat as a mixmag bug. Wrap only the parsing call, so a
    ``ValueError`` from mixmag's own code is never relabelled::

        with reading_user_file(path):
            df = pd.read_csv(path)
    """
    try:
        yield
    except MixmagError:
        raise
    except ValueError as exc:
        raise MixmagValueError(f"{os.fspath(source)}: cannot be read ({exc}); check that it is the intended file, "
                               "complete and in its expected format") from exc
