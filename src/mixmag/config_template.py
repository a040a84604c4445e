"""A commented YAML template of the whole study config (``mixmag config init``).

Comments come from the models themselves (section docstrings and field attribute docstrings,
which pydantic stores in ``Field.description``), so the template never drifts from the code.
Loading the template back gives exactly the values it was written from.
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml
from pydantic import BaseModel

from mixmag.config import PipelineConfig

_HEADER = """\
mixmag study config. Precedence: built-in defaults < this file < `--set section.key=value`.
Unknown keys are errors. Check a file with `mixmag config show FILE`; run it with
`mixmag run FILE`. Every key below is shown with its default value.
"""


def _scalar(value: Any) -> str:
    """One YAML value in flow style (lists inline, strings quoted only when needed)."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, allow_unicode=True).strip()
    return text.removesuffix("...").strip()


def _comment(text: str | None, indent: str, width: int) -> list[str]:
    if not text:
        return []
    # Docstrings may be wrapped in the source; re-flow them to the template width.
    flat = " ".join(text.split())
    return [f"{indent}# {line}" for line in textwrap.wrap(flat, width - len(indent) - 2)]


def _model_lines(instance: BaseModel, indent: str, width: int) -> list[str]:
    lines: list[str] = []
    values = instance.model_dump(mode="json")
    for name, field in type(instance).model_fields.items():
        value = getattr(instance, name)
        if isinstance(value, BaseModel):
            doc = (type(value).__doc__ or "").strip().splitlines()
            lines.append("")
            lines += _comment(doc[0] if doc else None, indent, width)
            lines.append(f"{indent}{name}:")
            lines += _model_lines(value, indent + "  ", width)
            continue
        lines += _comment(field.description, indent, width)
        # Keys whose mere presence changes behaviour (e.g. sizes that override a preset only when
        # set) declare json_schema_extra={"template": "commented"}; unless set, they are written
        # commented out so the template does not silently pin them.
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        commented = extra.get("template") == "commented" and name not in instance.model_fields_set
        lines.append(f"{indent}{'# ' if commented else ''}{name}: {_scalar(values[name])}")
    return lines


def config_template(config: PipelineConfig | None = None, *, width: int = 100) -> str:
    """Commented YAML for ``config`` (defaults when None), loadable by :func:`~mixmag.config.load_config`.

    Args:
        config: Values to write (e.g. a resolved config); defaults when None.
        width: Wrap comments at this many characters.
    """
    cfg = config if config is not None else PipelineConfig()
    lines = [*_comment(_HEADER, "", width), ""]
    lines += _model_lines(cfg, "", width)
    return "\n".join(lines).strip("\n") + "\n"
