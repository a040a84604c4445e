"""Turn config problems into one readable line each: where (file:line or ``--set``), which key, the fix.

pydantic reports *what* is wrong with a dotted location; a person editing ``study.yaml`` also needs
*where* (the line of the offending key, found by walking the YAML node tree from
:func:`yaml.compose`) and *how to fix it* (a close match for a misspelled key, the expected type
and default for a bad value). :func:`load_config_checked` is :func:`mixmag.config.load_config`
with every failure (missing file, YAML syntax, unknown key, wrong type) raised as a
:class:`ConfigError` carrying that text, so CLI commands print it without a traceback.
:func:`where_prefix` and :func:`validate_valid_part` serve :func:`mixmag.preflight.check_config`,
which adds the checks of the files a config names and reports every problem at once.
"""

from __future__ import annotations

import copy
import difflib
import enum
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mixmag.config import PipelineConfig, merge_config_data
from mixmag.errors import MixmagValueError


class ConfigError(MixmagValueError):
    """A study-config problem, already formatted for a person (one line per problem)."""


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _field_path(loc: Sequence[Any], root: type[BaseModel]) -> tuple[list[str | int], Any]:
    """Keep the parts of a pydantic ``loc`` that are real keys/indices; return them and the field.

    pydantic inserts union-branch tags (``'float'``, ``'function-after[...]'``) into locations;
    those are not keys in the user's file and are dropped here.
    """
    model: Any = root
    field = None
    keys: list[str | int] = []
    for part in loc:
        if isinstance(part, int):
            keys.append(part)
            continue
        fields = getattr(model, "model_fields", None)
        if fields is not None and part in fields:
            keys.append(part)
            field = fields[part]
            annotation = field.annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        elif fields is not None:  # an unknown key: keep it so the message can name it
            keys.append(part)
            model = None
    return keys, field


def _section_model(keys: Sequence[str | int], root: type[BaseModel]) -> type[BaseModel] | None:
    """The model that owns the last key of ``keys``."""
    model: Any = root
    for key in keys[:-1]:
        fields = getattr(model, "model_fields", {})
        if not isinstance(key, str) or key not in fields:
            return None
        model = fields[key].annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def describe_type(annotation: Any) -> str:
    """Human wording of a field annotation: ``float | None`` -> 'a number or null'."""
    if annotation is None or annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # a type with constraints (Annotated[int, Field(ge=0)])
        return describe_type(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " or ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe_type(a) for a in typing.get_args(annotation)))
    if origin in (list, tuple, set):
        args = typing.get_args(annotation)
        inner = describe_type(args[0]) if args else "values"
        return f"a list of {inner.removeprefix('a ').removeprefix('an ')}s"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping of keys"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
             Path: "a path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default_text(field: Any) -> str:
    if field is None:
        return ""
    try:
        default = field.get_default(call_default_factory=True)
    except TypeError:
        return ""
    if isinstance(default, BaseModel):
        return ""
    if isinstance(default, enum.Enum):
        default = default.value
    if isinstance(default, Path):
        default = str(default)
    return f" (default: {yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()})"


def yaml_line(text: str, keys: Sequence[str | int], *, key_line: bool = False) -> int | None:
    """1-based line of ``keys`` (a path of mapping keys / list indices) in YAML ``text``.

    Returns the line of the value (or of the key itself with ``key_line``), or of the deepest
    existing parent when the full path is absent; None when the text is not YAML.
    """
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for i, key in enumerate(keys):
        if isinstance(node, yaml.MappingNode) and isinstance(key, str):
            match = next(((k, v) for k, v in node.value if k.value == key), None)
            if match is None:
                return line
            last = i == len(keys) - 1
            line = (match[1] if last and not key_line else match[0]).start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _covers(key: str, dotted: str) -> bool:
    return dotted == key or dotted.startswith(key + ".") or dotted.startswith(key + "[")


def _override_for(dotted: str, overrides: Sequence[str]) -> str | None:
    """The ``--set`` item that set ``dotted`` (the last one wins, like the loader)."""
    for item in reversed(overrides):
        if _covers(item.split("=", 1)[0].strip(), dotted):
            return item
    return None


def split_dotted(dotted: str) -> list[str | int]:
    """``"slides.inputs[2]"`` -> ``["slides", "inputs", 2]`` (the inverse of the dotted form in messages)."""
    keys: list[str | int] = []
    for part in dotted.split("."):
        name, *indices = part.split("[")
        if name:
            keys.append(name)
        keys += [int(i.rstrip("]")) for i in indices if i.rstrip("]").isdigit()]
    return keys


def where_prefix(dotted: str, *, path: str | os.PathLike[str] | None = None, text: str | None = None,
                 overrides: Sequence[str] = (), sources: Mapping[str, str] | None = None,
                 key_line: bool = False) -> str:
    """Where the value of ``dotted`` came from, as a message prefix: ``"study.yaml:12: "``.

    A named command option (``sources``, applied last) wins over a ``--set`` item, which wins over
    the file; a key set nowhere (a default) gets the file without a line, or nothing.

    Args:
        dotted: The key, e.g. ``"mil.labels"`` or ``"slides.inputs[1]"``.
        path: The YAML file the config came from.
        text: That file's text (line numbers); read from ``path`` when omitted.
        overrides: The ``--set a.b=c`` items.
        sources: Dotted keys set by named options and how each was given (``{"mil.lr": "--lr"}``).
        key_line: The line of the key itself rather than of its value.
    """
    source = next((how for key, how in (sources or {}).items() if _covers(key, dotted)), None)
    if source is not None:  # named options are applied last: they win over --set and the file
        return f"{source}: "
    override = _override_for(dotted, overrides)
    if override is not None:
        return f"--set {override}: "
    if path is None:
        return ""
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError:
            text = None
    line = yaml_line(text, split_dotted(dotted), key_line=key_line) if text is not None else None
    return f"{path}:{line}: " if line else f"{path}: "


def _one(err: dict[str, Any], where_file: str | None, text: str | None, overrides: Sequence[str],
         root: type[BaseModel], sources: Mapping[str, str]) -> str:
    keys, field = _field_path(err["loc"], root)
    dotted = _dotted(keys)
    unknown = err["type"] == "extra_forbidden"
    where = where_prefix(dotted, path=where_file, text=text if text is not None else "", overrides=overrides,
                         sources=sources, key_line=unknown)
    if unknown:
        model = _section_model(keys, root)
        valid = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(str(keys[-1]), valid, n=1, cutoff=0.6)
        parent = _dotted(keys[:-1])
        prefix = f"{parent}." if parent else ""
        fix = (f"did you mean '{prefix}{close[0]}'?" if close
               else f"valid keys{' in ' + repr(parent) if parent else ''}: {', '.join(valid)}")
        return f"{where}unknown key '{dotted}'; {fix}"
    expected = describe_type(field.annotation) if field is not None else "a valid value"
    got = yaml.safe_dump(err.get("input"), default_flow_style=True).strip().removesuffix("...").strip()
    msg = err["msg"].rstrip(".")
    if err["type"] == "missing":
        return f"{where}missing key '{dotted}'; add it ({expected})"
    if err["type"] == "value_error":  # raised by a validator of mixmag's: the message is complete
        return f"{where}'{dotted}' = {got} is invalid: {msg.removeprefix('Value error, ')}"
    return f"{where}'{dotted}' = {got} is invalid: {msg}; set {expected}{_default_text(field)}"


def format_config_error(
    exc: ValidationError,
    path: str | os.PathLike[str] | None = None,
    *,
    text: str | None = None,
    overrides: Sequence[str] = (),
    root: type[BaseModel] = PipelineConfig,
    sources: Mapping[str, str] | None = None,
) -> str:
    """One line per problem in ``exc``: location, offending key and the fix.

    Args:
        exc: The pydantic error raised while validating the merged config.
        path: The YAML file the config came from (None for defaults/overrides only).
        text: That file's text; read from ``path`` when omitted (used for line numbers).
        overrides: The ``--set a.b=c`` items, so a bad value is blamed on the right source.
        root: The model that was validated.
        sources: Dotted keys set by named command options and how each was given (``{"mil.lr":
            "--lr"}``), so a bad value is blamed on the option.

    Returns:
        e.g. ``study.yaml:12: unknown key 'mil.epoch'; did you mean 'mil.epochs'?``
    """
    if text is None and path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError:
            text = None
    where_file = str(path) if path is not None else None
    lines = [_one(dict(e), where_file, text, overrides, root, sources or {}) for e in exc.errors()]
    return "\n".join(sorted(lines, key=message_order))


def message_order(message: str) -> tuple[int, int]:
    """Sort key: problems in file order, then ``--set`` problems, then the rest."""
    head = message.split(": ", 1)[0]
    tail = head.rsplit(":", 1)[-1]
    if tail.isdigit():
        return 0, int(tail)
    return (1, 0) if head.startswith("--set") else (2, 0)


def invalid_keys(exc: ValidationError, root: type[BaseModel] = PipelineConfig) -> list[str]:
    """The dotted keys (whole fields, not list items) that ``exc`` rejects, in its order."""
    out: list[str] = []
    for err in exc.errors():
        keys, _ = _field_path(err["loc"], root)
        while keys and isinstance(keys[-1], int):  # a bad list item: the whole list
            keys = keys[:-1]
        dotted = _dotted(keys)
        if dotted and dotted not in out:
            out.append(dotted)
    return out


def validate_valid_part(data: Mapping[str, Any], exc: ValidationError, root: type[BaseModel] = PipelineConfig
                        ) -> tuple[BaseModel | None, list[str]]:
    """The config ``data`` would give without the keys ``exc`` rejects (their defaults instead).

    Lets the file and data checks (:func:`mixmag.preflight.preflight`) run on everything else, so
    every problem of a config is reported at once.

    Returns:
        The validated remainder (None when it still does not validate) and the rejected keys.
    """
    work = copy.deepcopy(dict(data))
    rejected: list[str] = []
    for _ in range(5):  # removing a key can only leave fewer problems; a few rounds always end it
        bad = invalid_keys(exc, root)
        rejected += [k for k in bad if k not in rejected]
        for dotted in bad:
            node: Any = work
            *parents, last = split_dotted(dotted)
            for key in parents:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(last, None)
        try:
            return root.model_validate(work), rejected
        except ValidationError as again:
            exc = again
    return None, rejected


def merge_data_checked(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] | None = None,
                       values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:func:`~mixmag.config.merge_config_data` raising :class:`ConfigError` with a readable message.

    Raises:
        ConfigError: Missing file, YAML syntax error, top level not a mapping or malformed ``--set``.
    """
    try:
        return merge_config_data(path, list(overrides or []), values)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}; check the indentation and the "
                          f"`key: value` syntax on that line") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def load_config_checked(path: str | os.PathLike[str] | None = None,
                        overrides: Sequence[str] | None = None, *, values: Mapping[str, Any] | None = None,
                        sources: Mapping[str, str] | None = None) -> PipelineConfig:
    """:func:`~mixmag.config.load_config` raising :class:`ConfigError` with a readable message.

    ``values`` (dotted key -> value, applied last) are a command's named options; ``sources`` says
    how each was given, for the message (see :func:`format_config_error`). The values are checked
    (types, ranges, registry keys, magnifications); whether the files they name exist is checked by
    :func:`mixmag.preflight.check_config`.

    Raises:
        ConfigError: Missing file, YAML syntax error, top level not a mapping, malformed
            ``--set``, unknown key or invalid value; the message names the file, line and key.
    """
    items = list(overrides or [])
    data = merge_data_checked(path, items, values)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_config_error(exc, path, overrides=items, sources=sources)) from None
