"""`mixmag run` takes its study config as an argument or, like the stage commands, as --config."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from mixmag.cli.app import build_app
from mixmag.cli.common import EXIT_USAGE


def _run(args: list[str]) -> tuple[int, list[str]]:
    res = CliRunner().invoke(build_app(), ["run", *args])
    return res.exit_code, [line for line in res.output.splitlines() if line.strip()]


def test_the_argument_and_config_option_read_the_same_file(tmp_path: Path) -> None:
    config = tmp_path / "study.yaml"
    config.write_text("mil:\n  epoch: 3\n", encoding="utf-8")  # a typo: the config check stops before any stage
    code, lines = _run([str(config)])
    assert code == EXIT_USAGE and f"error: {config}:2: unknown key 'mil.epoch'; did you mean 'mil.epochs'?" in lines
    assert _run(["--config", str(config)]) == (code, lines)
    assert _run([str(config), "--config", str(config)]) == (code, lines)  # the same file twice is fine


def test_no_config_or_two_configs_are_one_line(tmp_path: Path) -> None:
    code, lines = _run([])
    assert code == EXIT_USAGE and len(lines) == 1 and lines[0].startswith("error: no study config: give it as")
    code, lines = _run([str(tmp_path / "a.yaml"), "--config", str(tmp_path / "b.yaml")])
    assert code == EXIT_USAGE and len(lines) == 1 and lines[0].startswith("error: two study configs:")
