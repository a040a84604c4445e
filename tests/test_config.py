"""Study config: template round trip, `config show`, and one-line errors naming file, line and key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pytest
import yaml
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from mixmag.cli.app import build_app
from mixmag.config import PipelineConfig, load_config
from mixmag.config_errors import (
    ConfigError,
    describe_type,
    load_config_checked,
    split_dotted,
    where_prefix,
    yaml_line,
)
from mixmag.config_template import config_template


def test_template_loads_back_to_defaults(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(config_template(), encoding="utf-8")
    assert load_config(path) == PipelineConfig()


def test_template_is_commented_from_field_docstrings() -> None:
    text = config_template()
    for section, field in PipelineConfig.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            doc = field.annotation.__doc__.strip().splitlines()[0]
            assert f"\n# {doc}\n{section}:\n" in text
    # a field docstring from config.py appears as a comment right above its key
    field = PipelineConfig.model_fields["tiling"].annotation.model_fields["min_tissue"]
    assert field.description
    lines = text.splitlines()
    i = lines.index("  min_tissue: 0.25")
    assert lines[i - 1].startswith("  # ") and field.description.split()[0] in lines[i - 1]


def test_template_of_resolved_config_keeps_values(tmp_path: Path) -> None:
    cfg = load_config(None, ["mil.epochs=3", "tiling.magnifications=[5x, 20x]", "out=/tmp/x y"])
    path = tmp_path / "resolved.yaml"
    path.write_text(config_template(cfg), encoding="utf-8")
    assert load_config(path) == cfg


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_key_names_file_line_and_close_match(tmp_path: Path) -> None:
    path = _write(tmp_path, "out: runs/a\nmil:\n  lr: 0.001\n  epoch: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config_checked(path)
    message = str(info.value)
    assert message == f"{path}:4: unknown key 'mil.epoch'; did you mean 'mil.epochs'?"


def test_unknown_section_lists_close_match(tmp_path: Path) -> None:
    path = _write(tmp_path, "tilling:\n  min_tissue: 0.3\n")
    with pytest.raises(ConfigError, match=r"study.yaml:1: unknown key 'tilling'; did you mean 'tiling'\?"):
        load_config_checked(path)


def test_wrong_type_names_key_line_expected_type_and_default(tmp_path: Path) -> None:
    path = _write(tmp_path, "# comment\ntiling:\n  region_um: 448\n  min_tissue: lots\n")
    with pytest.raises(ConfigError) as info:
        load_config_checked(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:4: 'tiling.min_tissue' = lots is invalid")
    assert "set a number (default: 0.25)" in message


def test_bad_enum_lists_choices(tmp_path: Path) -> None:
    path = _write(tmp_path, "embed:\n  precision: fp8\n")
    with pytest.raises(ConfigError, match="one of auto, fp32, fp16, bf16"):
        load_config_checked(path)


def test_override_errors_blame_the_override(tmp_path: Path) -> None:
    path = _write(tmp_path, "mil:\n  lr: 0.001\n")
    with pytest.raises(ConfigError) as info:
        load_config_checked(path, ["mil.lr=fast"])
    assert str(info.value).startswith("--set mil.lr=fast: 'mil.lr' = fast is invalid")


def test_several_problems_one_line_each_in_file_order(tmp_path: Path) -> None:
    path = _write(tmp_path, "mil:\n  epoch: 3\ntiling:\n  min_tissue: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config_checked(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}:2: unknown key 'mil.epoch'")
    assert lines[1].startswith(f"{path}:4: 'tiling.min_tissue' = 2 is invalid")


def test_missing_file_and_yaml_syntax(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; create one with `mixmag config init"):
        load_config_checked(tmp_path / "nope.yaml")
    path = _write(tmp_path, "mil:\n  lr: 1\n bad: [\n")
    with pytest.raises(ConfigError, match=r"study.yaml:3:2: invalid YAML"):
        load_config_checked(path)


def test_yaml_line_walks_nested_keys_and_lists() -> None:
    text = "a:\n  b:\n    - 1\n    - x: 2\nc: 3\n"
    assert yaml_line(text, ["c"]) == 5
    assert yaml_line(text, ["a", "b", 1, "x"]) == 4
    assert yaml_line(text, ["a", "b"], key_line=True) == 2
    assert yaml_line(text, ["a", "zzz"]) == 1  # deepest existing parent
    assert yaml_line("{{{", ["a"]) is None


def test_describe_type() -> None:
    assert describe_type(float | None) == "a number or null"
    assert describe_type(list[str]) == "a list of strings"
    assert describe_type(bool) == "true or false"
    # embed.workers: a constrained number or a word
    assert describe_type(Annotated[int, Field(ge=0)] | Literal["auto"]) == "a whole number or auto"


def test_cli_config_init_and_show(tmp_path: Path) -> None:
    runner = CliRunner()
    app = build_app()
    path = tmp_path / "study.yaml"
    result = runner.invoke(app, ["config", "init", str(path)])
    assert result.exit_code == 0, result.output
    assert load_config(path) == PipelineConfig()
    again = runner.invoke(app, ["config", "init", str(path)])
    assert again.exit_code == 2 and "--force" in again.output
    shown = runner.invoke(app, ["config", "show", str(path), "--set", "mil.epochs=3"])
    assert shown.exit_code == 0, shown.output
    assert yaml.safe_load(shown.output)["mil"]["epochs"] == 3


def test_cli_config_show_error_is_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "mil:\n  epoch: 3\n")
    result = CliRunner().invoke(build_app(), ["config", "show", str(path)])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines == [f"error: {path}:2: unknown key 'mil.epoch'; did you mean 'mil.epochs'?"]


def test_external_section_is_in_the_template_and_config_show(tmp_path: Path) -> None:
    text = config_template()
    assert "\nexternal:\n  # " in text and "  inputs: []" in text.split("\nexternal:\n")[1]
    cfg = load_config(None, ["external.inputs=[/new/slides]", "external.labels=/new/labels.csv"])
    path = tmp_path / "resolved.yaml"
    path.write_text(config_template(cfg), encoding="utf-8")
    assert load_config(path) == cfg and cfg.external.inputs == [Path("/new/slides")]
    shown = CliRunner().invoke(build_app(), ["config", "show", "--set", "external.methods=[mix-mem]"])
    assert shown.exit_code == 0, shown.output
    assert yaml.safe_load(shown.output)["external"] == {"inputs": [], "labels": None, "methods": ["mix-mem"]}
    with pytest.raises(ConfigError, match="external.input"):
        load_config_checked(_write(tmp_path, "external:\n  input: [a]\n"))


def test_a_validator_message_is_shown_whole(tmp_path: Path) -> None:
    path = _write(tmp_path, "embed:\n  encoder: unii\ntiling:\n  magnifications: [20x, 2Ox]\n")
    with pytest.raises(ConfigError) as info:
        load_config_checked(path)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{path}:2: 'embed.encoder' = unii is invalid: unknown tile encoder 'unii'. "
                               "Did you mean: uni")
    assert lines[1] == (f"{path}:4: 'tiling.magnifications[1]' = 2Ox is invalid: '2Ox' is not a magnification: "
                        "write a label such as 20x (or 20), or an exact resolution such as 0.5mpp (or 0.5um)")
    assert "Value error" not in str(info.value) and "; set a string" not in str(info.value)


def test_where_prefix_blames_option_then_set_then_file_line() -> None:
    text = "slides:\n  inputs:\n    - a\n    - b\n"
    assert split_dotted("slides.inputs[1]") == ["slides", "inputs", 1]
    assert where_prefix("slides.inputs[1]", path="s.yaml", text=text) == "s.yaml:4: "
    assert where_prefix("mil.labels", path="s.yaml", text=text) == "s.yaml: "  # set nowhere
    assert where_prefix("slides.inputs[0]", path="s.yaml", text=text, overrides=["slides.inputs=[x]"]) == (
        "--set slides.inputs=[x]: ")
    assert where_prefix("slides.inputs[0]", path="s.yaml", text=text, overrides=["slides.inputs=[x]"],
                        sources={"slides.inputs": "INPUTS"}) == "INPUTS: "
