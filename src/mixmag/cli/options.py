"""Options shared by the commands that run a stage: ``--config``/``--set`` and setting options.

* :func:`load_study_config` loads a study config the way ``mixmag run`` does (defaults < file <
  ``--set``), then applies the options named on the command line; a problem exits with the same
  one-line ``file:line`` message as ``mixmag run``.
* :func:`setting_option` builds a named option from a field of a stage settings model (its
  docstring is the help; commands take the default from an instance of the model), and
  :func:`given_settings` turns the options actually typed into dotted config keys. A named option
  therefore never has a default, a range or a help text of its own: the model's field is the one
  source, and validation (with the range) happens once, in the model.

This module is imported when the app is built: it imports only typer (click) and pydantic.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import BaseModel

if TYPE_CHECKING:
    from mixmag.config import PipelineConfig

ConfigFile = Annotated[Path | None, typer.Option(
    "--config", help="Study config YAML (`mixmag config init`); precedence: defaults < this file < --set < "
                     "the named options.")]
SetItems = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config key: section.key=value (repeatable), as in `mixmag run`.")]
AssumeYes = Annotated[bool, typer.Option(
    "--yes", "-y", help="Go on without asking when the first steps estimate a run longer than "
                        "region.confirm_above_minutes (needed in batch jobs, which cannot be asked).")]


def split_list(values: list[str] | None) -> list[str]:
    """Items of a list option given comma-separated and/or repeated (``--methods a,b --methods c``)."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def named_items(items: list[str] | None, option: str, *, value: str = "VALUE",
                as_list: bool = False) -> dict[str, Any]:
    """``NAME=VALUE`` items of a repeatable option as ``{name: value}`` (``as_list``: comma-separated values).

    Exits with status 2 and one line naming the option when an item has no ``=`` or an empty side.

    Args:
        items: The option's values as typed (``["os=survival", "grade=multiclass"]``).
        option: The option's name, for the message (``--target-type``).
        value: What the value is called, for the message (``TYPE``).
        as_list: Split each value at commas (``os=os_months,os_status`` -> ``["os_months", "os_status"]``).
    """
    from mixmag.cli.common import fail

    parsed: dict[str, Any] = {}
    for item in items or []:
        name, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not name or not text:
            fail(f"{option} {item!r}: expected NAME={value}, e.g. {option} os={value.lower()}")
        parsed[name] = split_list([text]) if as_list else text
    return parsed


def setting_option(model: type[BaseModel], name: str, *param_decls: str, help: str | None = None,
                   **kwargs: Any) -> Any:
    """A ``typer.Option`` for field ``name`` of ``model``: the field's docstring and range as help.

    Args:
        model: A stage settings model (or a config section).
        name: The field; the option is ``--name-with-dashes`` unless ``param_decls`` are given.
        *param_decls: Option names, e.g. ``"--out", "-o"``.
        help: Replaces the docstring (e.g. for a list option that takes comma-separated values).
        **kwargs: Passed to ``typer.Option``.
    """
    field = model.model_fields[name]
    text = help if help is not None else " ".join((field.description or "").split())
    bounds = [f"{symbol}{getattr(m, attr)}" for m in field.metadata
              for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
              if getattr(m, attr, None) is not None]
    if bounds:  # the model checks them (one message naming the option); the help shows them
        text += f" [{', '.join(bounds)}]"
    decls = param_decls or (f"--{name.replace('_', '-')}",)
    return typer.Option(*decls, help=text, **kwargs)


def _typed(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def given_settings(ctx: typer.Context, sections: Mapping[str, type[BaseModel]]
                   ) -> tuple[dict[str, Any], dict[str, str]]:
    """The options (not the arguments) typed on the command line that name a field of a config section.

    Args:
        ctx: The command's context.
        sections: Config section -> its model, in priority order (the first section with a field
            of that name takes the option).

    Returns:
        ``({"section.field": value}, {"section.field": "--option"})``: values for
        :func:`load_study_config` and how each was given, for its messages.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    options = {p.name: p for p in ctx.command.params if p.param_type_name == "option"}  # not the arguments
    for name, value in ctx.params.items():
        if name not in options or not _typed(ctx, name):
            continue
        section = next((s for s, model in sections.items() if name in model.model_fields), None)
        if section is None:
            continue
        key = f"{section}.{name}"
        values[key] = value.value if isinstance(value, Enum) else value
        sources[key] = max(options[name].opts, key=len)
    return values, sources


def print_problems(errors: Sequence[str], warnings: Sequence[str] = ()) -> None:
    """Print ``warning: ...`` and ``error: ...`` lines (stderr), one per problem."""
    for line in warnings:
        typer.secho(f"warning: {line}", err=True, fg=typer.colors.YELLOW)
    for line in errors:
        typer.secho(f"error: {line}", err=True, fg=typer.colors.RED)


def load_study_config(config: Path | None, overrides: list[str] | None, values: Mapping[str, Any] | None = None,
                      sources: Mapping[str, str] | None = None, *, stages: Collection[str] | str | None = (),
                      features: Path | None = None, features_name: str = "FEATURES_DIR",
                      warn: bool = True) -> PipelineConfig:
    """Defaults < ``config`` < ``--set`` ``overrides`` < named-option ``values``, validated and checked.

    Exits with status 2 and one line per problem (``study.yaml:4: unknown key 'mil.epoch'; did you
    mean 'mil.epochs'?``), every problem at once, exactly as ``mixmag run`` does.

    Args:
        config: Study config YAML.
        overrides: ``--set`` items.
        values: Dotted keys set by the command's named options (see :func:`given_settings`).
        sources: How each of ``values`` was given.
        stages: The stages the command runs: the files and data they read are checked too
            (:func:`mixmag.preflight.preflight`); ``()`` checks the values only, None checks
            everything the config sets (``mixmag config show``), ``"study"`` what ``mixmag run`` runs.
        features: A feature folder the command reads (checked; labels are matched against it).
        features_name: The command's name for that argument, in messages.
        warn: Print the warnings (``mixmag run`` leaves them to the study's log).
    """
    from mixmag.cli.common import EXIT_USAGE
    from mixmag.config_errors import ConfigError, load_config_checked

    try:
        if stages == ():
            return load_config_checked(config, overrides or [], values=values, sources=sources)
        from mixmag.preflight import check_config

        cfg, warnings = check_config(config, overrides or [], values=values, sources=sources, stages=stages,
                                     features=features, features_name=features_name)
    except ConfigError as exc:
        print_problems(str(exc).splitlines(), getattr(exc, "warnings", []))
        raise typer.Exit(EXIT_USAGE) from None
    if warn:
        print_problems((), warnings)
    return cfg
