"""One error hierarchy: every mixmag exception is a MixmagError; the CLI shows user errors as one
line and internal errors as a traceback with exit status 70."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import mixmag
from mixmag.cli.app import build_app, main
from mixmag.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_SOFTWARE,
    EXIT_USAGE,
    FALLBACK_TRACKER,
    friendly_errors,
)
from mixmag.errors import (
    MixmagError,
    MixmagFileNotFoundError,
    MixmagKeyError,
    MixmagRuntimeError,
    MixmagValueError,
    reading_user_file,
)


def _exception_classes() -> dict[str, type[BaseException]]:
    """``module.Class`` -> class, for every exception class defined in a mixmag module."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(mixmag.__path__, prefix="mixmag."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__):
                found[f"{module.__name__}.{name}"] = obj
    return found


def test_every_mixmag_exception_is_a_mixmag_error() -> None:
    classes = _exception_classes()
    # the walk must see the hierarchy itself and the domain errors, or it checked nothing
    assert {"mixmag.errors.MixmagError", "mixmag.slides.base.SlideError",
            "mixmag.io.h5common.FormatError", "mixmag.config_errors.ConfigError"} <= set(classes)
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, MixmagError))
    assert outside == []


@pytest.mark.parametrize(("cls", "builtin"), [
    (MixmagValueError, ValueError),
    (MixmagKeyError, KeyError),
    (MixmagFileNotFoundError, FileNotFoundError),
    (MixmagRuntimeError, RuntimeError),
])
def test_mixins_keep_the_builtin_base(cls: type[MixmagError], builtin: type[Exception]) -> None:
    with pytest.raises(builtin, match="went wrong"):
        raise cls("it went wrong")
    assert issubclass(cls, MixmagError)
    assert mixmag.MixmagError is MixmagError and "MixmagError" in mixmag.__all__


def test_key_error_prints_the_plain_message() -> None:
    exc = MixmagKeyError("unknown tile encoder 'virchow'")
    assert str(exc) == "unknown tile encoder 'virchow'"  # a builtin KeyError would add quotes


def test_reading_user_file_relabels_parser_errors_only(tmp_path: Path) -> None:
    import json

    bad = tmp_path / "inputs.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(MixmagValueError, match="inputs.json: cannot be read"), reading_user_file(bad):
        json.loads(bad.read_text(encoding="utf-8"))
    with pytest.raises(MixmagKeyError), reading_user_file(bad):  # already a user error: unchanged
        raise MixmagKeyError("x")


def _error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error:")]


@pytest.mark.parametrize(("args", "says"), [
    (["--encoder", "virchow"], "Did you mean: virchow2"),  # an unknown registry key
    (["--encoder", "tiny.d16", "--random-weights"], "is not a folder"),  # the region folder is missing
], ids=["unknown-encoder", "missing-folder"])
def test_cli_user_error_is_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    result = CliRunner().invoke(build_app(), ["embed", str(tmp_path / "nope"), "--out", str(tmp_path / "out"),
                                              "--no-progress", *args])
    assert result.exit_code not in (0, EXIT_SOFTWARE), result.output
    assert result.exit_code == EXIT_USAGE
    lines = _error_lines(result.output)
    assert len(lines) == 1 and says in lines[0], result.output
    assert "Traceback" not in result.output and "bug" not in result.output


@pytest.mark.parametrize("exc", [ZeroDivisionError("division by zero"), RuntimeError("bug"), ValueError("oops")],
                         ids=["ZeroDivisionError", "RuntimeError", "ValueError"])
def test_cli_internal_error_prints_traceback_and_exits_70(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          exc: Exception) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr("mixmag.embed.embed_slides", broken)
    result = CliRunner().invoke(build_app(), ["embed", str(tmp_path), "--out", str(tmp_path / "out"),
                                              "--no-progress"])
    assert result.exit_code == EXIT_SOFTWARE, result.output
    assert "Traceback (most recent call last)" in result.output
    assert f"{type(exc).__name__}: {exc}" in result.output
    assert _error_lines(result.output) == []
    assert "report it" in result.output and FALLBACK_TRACKER in result.output


def test_friendly_errors_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as info, friendly_errors():
        raise KeyboardInterrupt
    assert info.value.exit_code == EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == "interrupted"
    with pytest.raises(typer.Exit) as info, friendly_errors():
        raise typer.Exit(3)  # a command's own exit code passes through untouched
    assert info.value.exit_code == 3
    with pytest.raises(typer.Exit) as info, friendly_errors():
        raise PermissionError(13, "Permission denied", "/root/out")  # the machine's state, not a bug
    assert info.value.exit_code == EXIT_USAGE
    assert capsys.readouterr().err.strip() == "error: [Errno 13] Permission denied: '/root/out'"


@pytest.mark.parametrize(("exc", "code"), [(MixmagValueError("bad value"), EXIT_USAGE),
                                           (ZeroDivisionError("division by zero"), EXIT_SOFTWARE)])
def test_main_handles_errors_raised_outside_a_command_block(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str],
                                                            exc: Exception, code: int) -> None:
    app = typer.Typer()

    @app.command()
    def boom() -> None:
        raise exc

    monkeypatch.setattr("mixmag.cli.app.build_app", lambda: app)
    monkeypatch.setattr(sys, "argv", ["mixmag"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == code
    err = capsys.readouterr().err
    assert ("Traceback" in err) == (code == EXIT_SOFTWARE)
    if code == EXIT_USAGE:
        assert err.strip() == "error: bad value"
