"""The study configuration: one pydantic model with one section per pipeline stage.

Precedence: built-in defaults < YAML file < ``--set section.key=value`` overrides. Unknown keys are
errors (``extra="forbid"``) so a typo never silently falls back to a default.

Each stage declares its settings once, in a model in its own package, and this root config only
composes them: ``tiling`` is :class:`mixmag.tiling.settings.TilingSettings`, ``embed``
:class:`mixmag.embed.settings.EmbedSettings`, ``region`` :class:`mixmag.region.settings.RegionSettings`,
``mil`` :class:`mixmag.mil.settings.MilSettings`, ``evaluate``
:class:`mixmag.evaluate.settings.EvaluateSettings` and ``report``
:class:`mixmag.report.settings.ReportSettings`, each passed unchanged to its stage. Only the
``slides`` section (the study's inputs, no stage of its own) and the ``external`` section (a second
cohort that :func:`mixmag.pipeline.predict.predict_cohort` scores with the trained models) are
declared here. Fields marked
``json_schema_extra=RUNTIME`` never change a result (:func:`mixmag.utils.settings.runtime_fields`;
the study's resume fingerprints leave them out).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mixmag.embed.settings import EmbedSettings
from mixmag.errors import MixmagFileNotFoundError, MixmagValueError
from mixmag.evaluate.settings import EvaluateSettings
from mixmag.mil.settings import MethodKey, MilSettings
from mixmag.region.settings import RegionSettings
from mixmag.registry import KnownKeys
from mixmag.report.settings import ReportSettings
from mixmag.tiling.settings import TilingSettings
from mixmag.utils.settings import StageSettings

#: Keys of the slide-reader registry (:data:`mixmag.slides.READERS`; plugins of ``mixmag.readers``).
READER_KEYS = KnownKeys("slide reader", ("image", "openslide", "tiffslide"), "mixmag.slides.base:READERS",
                        entry_point_group="mixmag.readers")


class SlidesConfig(StageSettings):
    """Where the slides are and how to read them."""

    kind: ClassVar[str] = "slides"

    inputs: list[Path] = Field(default_factory=list)
    """Slide files, folders (searched for known extensions) or a CSV with a `path` (or `slide`) column."""
    mpp: float | None = Field(default=None, gt=0)
    """Level-0 µm/px override applied to every slide (use when metadata is missing or wrong)."""
    mpp_csv: Path | None = None
    """CSV with columns `slide,mpp` overriding the resolution per slide (slide = file name or stem)."""
    reader: str | None = None
    """Force a reader backend (`openslide`, `tiffslide`, `image`); default: by extension and priority."""
    pretrain_inputs: list[Path] = Field(default_factory=list)
    """Extra unlabeled slides (files, folders or CSV) used only for region-encoder pretraining."""

    @field_validator("reader")
    @classmethod
    def _reader(cls, value: str | None) -> str | None:
        return value if value is None else READER_KEYS.check(value)


class ExternalConfig(StageSettings):
    """External validation: a second cohort, never trained on, scored by the trained models."""

    kind: ClassVar[str] = "external"

    inputs: list[Path] = Field(default_factory=list)
    """Slide files, folders or CSV lists of the new cohort (tiled and embedded exactly like the training
    slides), or one folder of its feature files; empty = no external stage."""
    labels: Path | None = None
    """Labels table of the new cohort (patient_id, slide_id and the training's label columns): groups
    slides into patients and gives the external AUROC; without it, predictions only."""
    methods: list[MethodKey] = Field(default_factory=list)
    """Trained methods to apply (empty = every trained one)."""


class PipelineConfig(BaseModel):
    """Root of a study config (`mixmag config init` writes a commented template)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    out: Path = Path("runs/study")
    """Run folder: every stage writes below it."""
    slides: SlidesConfig = Field(default_factory=SlidesConfig)
    tiling: TilingSettings = Field(default_factory=TilingSettings)
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    region: RegionSettings = Field(default_factory=RegionSettings)
    mil: MilSettings = Field(default_factory=MilSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    external: ExternalConfig = Field(default_factory=ExternalConfig)

    @field_validator("out")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(os.path.expanduser(str(v)))


def _parse_scalar(text: str) -> Any:
    """Parse the right-hand side of ``--set a.b=VALUE`` with YAML rules (numbers, lists, bools)."""
    return yaml.safe_load(text)


def set_dotted(data: dict[str, Any], dotted: str, value: Any, *, source: str | None = None) -> None:
    """Set ``data[a][b][c] = value`` for ``dotted = "a.b.c"``, creating sections (in place).

    Args:
        data: Nested mapping (a loaded YAML file).
        dotted: Key path.
        value: The value to set (not parsed).
        source: How the value was given, for the error message (default: ``dotted``).
    """
    node = data
    keys = dotted.strip().split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise MixmagValueError(f"override {source or dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise MixmagValueError(f"override {item!r} must look like section.key=value")
        dotted, value = item.split("=", 1)
        set_dotted(data, dotted, _parse_scalar(value), source=item)
    return data


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None,
                values: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Defaults < YAML file at ``path`` < ``overrides`` < ``values``; returns the validated config.

    ``values`` maps dotted keys to values that need no parsing (a command's named options, e.g.
    ``{"mil.epochs": 3}``); they win over the ``--set`` items.
    """
    return PipelineConfig.model_validate(merge_config_data(path, overrides, values))


def merge_config_data(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None,
                      values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The unvalidated nested mapping :func:`load_config` validates: file < ``overrides`` < ``values``.

    Raises:
        MixmagFileNotFoundError: ``path`` does not exist.
        MixmagValueError: The file is a folder, not text, its top level is not a mapping, it sets a
            key twice, or an override is malformed.
        yaml.YAMLError: The file is not YAML.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise MixmagFileNotFoundError(f"config file {p} does not exist; create one with `mixmag config init {p}`")
        if p.is_dir():
            raise MixmagValueError(f"config file {p} is a folder; give the study config YAML file in it")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise MixmagValueError(f"{p}: not a text (UTF-8) file ({exc.reason} at byte {exc.start}); give the study "
                                   "config YAML (`mixmag config init` writes one)") from None
        loaded = yaml.safe_load(text)
        if loaded is not None and not isinstance(loaded, dict):
            raise MixmagValueError(f"{p}: the top level of a study config must be a mapping of sections")
        twice = duplicate_keys(yaml.compose(text))
        if twice:
            raise MixmagValueError("\n".join(
                f"{p}:{line}: key '{dotted}' is set twice (first on line {first}); keep one (YAML would silently "
                f"use the last)" for line, dotted, first in twice))
        data = loaded or {}
    apply_overrides(data, overrides or [])
    for dotted, value in (values or {}).items():
        set_dotted(data, dotted, value)
    return data


def duplicate_keys(node: yaml.Node | None, prefix: str = "") -> list[tuple[int, str, int]]:
    """Mapping keys given twice in a composed YAML document: ``(line, dotted key, line of the first)``.

    PyYAML keeps the last of two equal keys without a word, so ``epochs: 3`` written again further
    down a section would silently win; a study config refuses them instead (1-based lines).
    """
    found: list[tuple[int, str, int]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            dotted = f"{prefix}.{key}" if prefix else key
            line = key_node.start_mark.line + 1
            if key in first:
                found.append((line, dotted, first[key]))
            else:
                first[key] = line
            found += duplicate_keys(value_node, dotted)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += duplicate_keys(item, f"{prefix}[{i}]")
    return found


def dump_config(config: PipelineConfig) -> str:
    """YAML text of a resolved config (paths as strings, enums as values)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
