"""The study configuration: one pydantic model with one section per pipeline stage.

Precedence: built-in defaults < YAML file < ``--set section.key=value`` overrides. Unknown keys are
errors (``extra="forbid"``) so a typo never silently falls back to a default.

A stage that owns its settings model declares each setting there once and this root config only
composes it: ``region`` is :class:`mixmag.region.settings.RegionSettings` and ``mil`` is
:class:`mixmag.mil.settings.MilSettings`, passed unchanged to the stage's function. The other
sections are still declared here. Fields marked ``json_schema_extra=RUNTIME`` never change a result
(:func:`mixmag.utils.settings.runtime_fields`; the study's resume fingerprints leave them out).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mixmag.errors import MixmagFileNotFoundError, MixmagValueError
from mixmag.mil.settings import MilSettings
from mixmag.region.settings import RegionSettings
from mixmag.tiling import MIN_THUMBNAIL_PX
from mixmag.utils.settings import RUNTIME, Precision


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class SlidesConfig(_Section):
    """Where the slides are and how to read them."""

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


class TilingConfig(_Section):
    """Region geometry and tissue rules (docs/concepts/resolution.md#regions-tiles-and-tokens)."""

    region_um: float = Field(default=448.0, gt=0)
    """Side of a square region in µm."""
    tile_px: int = Field(default=224, gt=0)
    """Tile side in pixels at every magnification."""
    magnifications: list[str] = Field(default_factory=lambda: ["5x", "10x", "20x"])
    """Target magnifications as labels (`20x` = 0.5 µm/px exactly) or exact resolutions (`0.5mpp`)."""
    min_tissue: float = Field(default=0.25, ge=0, le=1)
    """Keep a region when its coarsest tile has at least this tissue fraction."""
    valid_min_tissue: float = Field(default=0.1, ge=0, le=1)
    """A token is valid when its own tile has at least this tissue fraction."""
    thumbnail_px: int = Field(default=2048, ge=MIN_THUMBNAIL_PX)
    """Longer side of the thumbnail used for tissue detection and QC pictures."""
    workers: int = Field(default=1, ge=1, json_schema_extra=RUNTIME)
    """Slides processed in parallel processes."""


class EmbedConfig(_Section):
    """Tile embedding with a foundation model (docs/encoders.md)."""

    encoder: str = "efficientnet-lite0-imagenet"
    """Encoder registry key (`mixmag list encoders`)."""
    weights: str | None = None
    """Local weights file/folder or hub id; None uses the encoder's default source."""
    random_weights: bool = False
    """Build with random weights (testing only; stamped as 'random' in every file)."""
    batch_size: int = Field(default=32, ge=1)
    """Tiles per forward pass."""
    precision: Precision = Precision.AUTO
    """auto = fp16 on GPU, bf16 on CPUs with native bf16, else fp32 (docs/concepts/precision.md)."""
    device: str = Field(default="auto", json_schema_extra=RUNTIME)
    """`auto`, `cpu`, `cuda`, `cuda:1` ..."""
    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(default="auto", json_schema_extra=RUNTIME)
    """Region decoding: `auto` (inline between forward passes on a CPU, up to 8 worker processes
    next to a GPU), 0 (inline, one thread per core) or a number of worker processes."""


class EvaluateConfig(_Section):
    """Cross-validation protocol, statistics and the diagnostics stage."""

    folds: int = Field(default=5, ge=2)
    """Outer cross-validation folds (reduced with a warning when a class has fewer patients)."""
    val_frac: float = Field(default=0.2, gt=0, lt=1)
    """Validation share of each fold's non-test patients (early stopping)."""
    bootstrap: int = Field(default=1000, ge=0)
    """Bootstrap resamples for confidence intervals (0 = none)."""
    seed: int = 0
    """Seed of the diagnostics stage (the MIL splits and training use `mil.seed`)."""
    splits: Path | None = None
    """Reuse an existing splits file (identical folds across runs)."""
    region_labels: Path | None = None
    """CSV of ground-truth region annotations (boxes or tiled regions, see docs/concepts/diagnostics.md)
    for the probe, slide-ceiling and attention diagnostics; without it only the label-free
    pretraining diagnostics run."""
    diagnostics: bool = True
    """Run `mixmag diagnose` as a study stage after training (`diagnostics/` in the run folder)."""


class ReportConfig(_Section):
    """Heatmaps and the HTML report."""

    heatmap_slides: int = Field(default=4, ge=0)
    top_k: int = Field(default=4, ge=0)


class PipelineConfig(_Section):
    """Root of a study config (`mixmag config init` writes a commented template)."""

    out: Path = Path("runs/study")
    """Run folder: every stage writes below it."""
    slides: SlidesConfig = Field(default_factory=SlidesConfig)
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    region: RegionSettings = Field(default_factory=RegionSettings)
    mil: MilSettings = Field(default_factory=MilSettings)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

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
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise MixmagFileNotFoundError(f"config file {p} does not exist; create one with `mixmag config init {p}`")
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise MixmagValueError(f"{p}: the top level of a study config must be a mapping of sections")
        data = loaded or {}
    apply_overrides(data, overrides or [])
    for dotted, value in (values or {}).items():
        set_dotted(data, dotted, value)
    return PipelineConfig.model_validate(data)


def dump_config(config: PipelineConfig) -> str:
    """YAML text of a resolved config (paths as strings, enums as values)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
