"""Base of the stage settings models: one pydantic model per stage, owned by the stage's package.

A stage (``mixmag.region.settings``, ``mixmag.mil.settings``) declares each of its settings once,
as a field of a :class:`StageSettings` subclass: default, constraint (``Field(ge=...)``) and an
attribute docstring. Everything else derives from that field: the study config section (the root
config in :mod:`mixmag.config` composes the stage models), the commented template of
``mixmag config init``, the CLI options and their help, and the resume fingerprints.

Settings that change *how fast* or *where* a stage runs, never its result (device, worker
processes, checkpoint interval, cache size) carry the :data:`RUNTIME` mark
(``Field(..., json_schema_extra=RUNTIME)``); :func:`runtime_fields` reads it, so a fingerprint
never depends on a hand-kept list of names.

Importing this module is cheap (pydantic only): CLI modules read the models to build their options.
"""

from __future__ import annotations

import difflib
from enum import Enum
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from mixmag.errors import MixmagValueError

#: ``json_schema_extra`` of a field that never changes a result (excluded from fingerprints).
RUNTIME: dict[str, Any] = {"runtime": True}

S = TypeVar("S", bound="StageSettings")


class Precision(str, Enum):
    """Numeric precision of model inference/training (docs/concepts/precision.md)."""

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


def _extra(model: type[BaseModel], name: str) -> dict[str, Any]:
    extra = model.model_fields[name].json_schema_extra
    return extra if isinstance(extra, dict) else {}


def marked_fields(model: type[BaseModel], mark: dict[str, Any]) -> tuple[str, ...]:
    """Names of the fields of ``model`` carrying ``mark`` (e.g. :data:`RUNTIME`), in declaration order."""
    key = next(iter(mark))
    return tuple(name for name in model.model_fields if _extra(model, name).get(key))


def runtime_fields(model: type[BaseModel]) -> frozenset[str]:
    """Names of the fields of ``model`` marked :data:`RUNTIME`."""
    return frozenset(marked_fields(model, RUNTIME))


def field_default(model: type[BaseModel], name: str) -> Any:
    """The default value of field ``name`` of ``model`` (factories called)."""
    return model.model_fields[name].get_default(call_default_factory=True)


def _problems(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        parts.append(f"{where} = {err.get('input')!r}: {err['msg']}")
    return "; ".join(parts)


class StageSettings(BaseModel):
    """Base of every stage settings model.

    Unknown keys are errors, assignments are validated, attribute docstrings become field
    descriptions (the template comments and CLI help) and enum fields hold their plain values
    (``"auto"``, not ``Precision.AUTO``), so a settings object passes straight to an engine.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True,
                              use_enum_values=True)

    #: Word used in error messages ("invalid pretraining setting ...").
    kind: ClassVar[str] = "stage"

    @classmethod
    def from_options(cls: type[S], **options: Any) -> S:
        """Build from keyword options; unknown names and bad values raise one readable message.

        Raises:
            MixmagValueError: An unknown name (with close matches) or an invalid value.
        """
        names = sorted(cls.model_fields)
        for key in options:
            if key not in cls.model_fields:
                close = difflib.get_close_matches(key, names, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise MixmagValueError(f"unknown {cls.kind} option {key!r}{hint}")
        try:
            return cls(**options)
        except ValidationError as exc:
            raise MixmagValueError(f"invalid {cls.kind} setting: {_problems(exc)}") from None

    def updated(self: S, **options: Any) -> S:
        """A validated copy with ``options`` replacing single fields (see :meth:`from_options`)."""
        if not options:
            return self
        return self.from_options(**{**self.model_dump(include=self.model_fields_set), **options})

    def result_defining(self) -> dict[str, Any]:
        """JSON form without the :data:`RUNTIME` fields: what must match to reuse a result."""
        runtime = runtime_fields(type(self))
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in runtime}
