"""Markdown tables of a command's settings, generated from the stage settings models.

``python -m mixmag.cli.settings_docs docs/cli/*.md docs/report.md`` rewrites every block
between ``<!-- settings-table:COMMAND:begin ... -->`` and ``<!-- settings-table:COMMAND:end -->``
with one row per setting the command reads: its config key (for ``--config``/``--set``), its
named option if it has one, its default and its docstring. A test fails when a table is out of
date, so the docs list each setting once, as the model declares it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import typer
import yaml
from pydantic import BaseModel

from mixmag.utils.settings import field_default, runtime_fields

_BLOCK = re.compile(r"(?P<begin><!-- settings-table:(?P<command>[\w-]+):begin.*?-->)\n.*?"
                    r"(?P<end><!-- settings-table:(?P=command):end -->)", re.DOTALL)


def _sections(command: str) -> list[tuple[str, type[BaseModel], tuple[str, ...] | None, set[str]]]:
    """(config section, model, the keys the command reads (None = all), keys only `mixmag run` reads)."""
    from mixmag.cli import embed_cmd, pretrain_cmd, report_cmd, tile_cmd, train_cmd
    from mixmag.evaluate.settings import cross_validation_fields
    from mixmag.region.settings import PretrainSettings

    if command == "pretrain":
        (name, model), = pretrain_cmd.SECTIONS.items()
        return [(name, model, None, set(model.model_fields) - set(PretrainSettings.model_fields))]
    if command == "train":
        (mil, mil_model), (ev, ev_model) = train_cmd.SECTIONS.items()
        return [(mil, mil_model, None, set()), (ev, ev_model, cross_validation_fields(ev_model), set())]
    if command in ("tile", "embed", "report"):
        sections = {"tile": tile_cmd, "embed": embed_cmd, "report": report_cmd}[command].SECTIONS
        return [(name, model, None, set()) for name, model in sections.items()]
    raise KeyError(f"no settings table for command {command!r}")


def _value(value: Any) -> str:
    value = getattr(value, "value", value)
    if isinstance(value, Path):
        value = str(value)
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("...").strip()
    return f"`{text}`"


def settings_table(command: str) -> str:
    """The Markdown table of the settings ``mixmag COMMAND`` reads."""
    from mixmag.cli.app import build_app

    click_command = typer.main.get_command(build_app()).commands[command]  # type: ignore[attr-defined]
    params = {p.name: p for p in click_command.params if p.param_type_name == "option"}
    sections = _sections(command)
    rows = ["| key (`--config` / `--set`) | option | default | meaning |", "|---|---|---|---|"]
    for section, model, keys, study_only in sections:
        runtime = runtime_fields(model)
        for name, field in model.model_fields.items():
            if keys is not None and name not in keys:
                continue
            # an option belongs to the first section that has a field of its name (given_settings)
            owner = next(s for s, m, k, _ in sections if name in m.model_fields and (k is None or name in k))
            option = f"`{max(params[name].opts, key=len)}`" if name in params and owner == section else ""
            if name in study_only:
                option = "`mixmag run` only"
            meaning = " ".join((field.description or "").split()).replace("|", "\\|")
            if name in runtime:
                meaning += " *(runtime)*"
            rows.append(f"| `{section}.{name}` | {option} | {_value(field_default(model, name))} | {meaning} |")
    return "\n".join(rows)


def update_doc(path: str | Path) -> bool:
    """Rewrite the settings-table blocks of ``path``; True when the file changed."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")

    def block(match: re.Match[str]) -> str:
        return "\n".join([match["begin"], settings_table(match["command"]), match["end"]])

    new = _BLOCK.sub(block, text)
    if new != text:
        p.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"{arg}: {'updated' if update_doc(arg) else 'up to date'}")
