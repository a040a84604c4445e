"""The study configuration: one pydantic model with one section per pipeline stage.

Precedence: built-in defaults < YAML file < ``--set section.key=value`` overrides. Unknown keys are
errors (``extra="forbid"``) so a typo never silently falls back to a default. Library functions take
plain typed arguments; these models are only used at the boundary (CLI, ``mixmag run``).
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mixmag.errors import MixmagFileNotFoundError, MixmagValueError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class Precision(str, Enum):
    """Numeric precision of model inference/training."""

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


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
    thumbnail_px: int = Field(default=2048, ge=256)
    """Longer side of the thumbnail used for tissue detection and QC pictures."""
    workers: int = Field(default=1, ge=1)
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
    device: str = "auto"
    """`auto`, `cpu`, `cuda`, `cuda:1` ..."""
    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    """Region decoding: `auto` (inline between forward passes on a CPU, up to 8 worker processes
    next to a GPU), 0 (inline, one thread per core) or a number of worker processes."""


class RegionConfig(_Section):
    """Region encoder and its self-supervised pretraining (docs/concepts/region-encoder.md)."""

    preset: str = "base"
    """Architecture preset (`base` W768/d6/h12, `small`, `tiny`); width/depth/heads/mlp_ratio/drop_path
    override it only when set explicitly in the config."""
    width: int = Field(default=768, ge=8)
    depth: int = Field(default=6, ge=1)
    heads: int = Field(default=12, ge=1)
    mlp_ratio: float = Field(default=4.0, gt=0)
    drop_path: float = Field(default=0.1, ge=0, lt=1)
    position: str = "slot"
    """`slot` (learned per token slot) or `sincos` (2D sin-cos of the tile centre)."""
    pretrain_on: str = Field(default="auto", pattern="^(auto|all|unlabeled)$")
    """Pretraining corpus: `unlabeled` (only `slides.pretrain_inputs`: no test patient is seen),
    `all` (labeled + unlabeled slides; self-supervised, labels unused, but test patients' slides are
    seen; the report says so), `auto` = `unlabeled` when `slides.pretrain_inputs` is set, else `all`."""
    objectives: list[str] = Field(default_factory=lambda: ["mem", "cmem"])
    """Pretraining objectives to run (each gives one checkpoint): `mem`, `cmem`."""
    mask_ratio: float = Field(default=0.5, gt=0, lt=1)
    mag_mask_prob: float = Field(default=0.25, ge=0, le=1)
    token_drop_max: float = Field(default=0.5, ge=0, lt=1)
    regions_per_slide: int = Field(default=64, ge=1)
    contrastive_weight: float = Field(default=1.0, ge=0)
    temperature: float = Field(default=0.1, gt=0)
    steps: int = Field(default=2000, ge=1)
    batch_size: int = Field(default=256, ge=2)
    lr: float = Field(default=1.5e-4, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_frac: float = Field(default=0.05, ge=0, lt=1)
    precision: Precision = Precision.AUTO
    """auto = bf16 on GPUs with native bf16, else fp16 with a gradient scaler; fp32 on CPU
    (docs/concepts/precision.md)."""
    device: str = "auto"
    seed: int = 0
    grad_clip: float = Field(default=1.0, ge=0)
    """Max global gradient norm (0 disables clipping)."""
    shuffle_buffer: int = Field(default=4096, ge=1)
    """Regions held in the cross-slide shuffle buffer of the streaming loader."""
    checkpoint_every: int = Field(default=500, ge=0)
    """Resumable checkpoint every N steps (0 = final only)."""
    num_workers: int = Field(default=2, ge=0)
    """DataLoader processes reading feature files."""


class MilConfig(_Section):
    """AB-MIL biomarker models and their training (docs/concepts/evaluation.md)."""

    labels: Path | None = None
    """CSV/TSV with patient_id, slide_id and label columns."""
    targets: list[str] = Field(default_factory=list)
    """Label columns to predict (default: every column except patient_id/slide_id)."""
    methods: list[str] = Field(default_factory=lambda: [
        "abmil-5x", "abmil-10x", "abmil-20x", "mix-random", "mix-mem", "mix-cmem", "mix-mem-cls"])
    bag_level: str = "patient"
    """`patient` (pool a patient's slides into one bag) or `slide`."""
    epochs: int = Field(default=30, ge=1)
    patience: int = Field(default=8, ge=1)
    lr: float = Field(default=2e-4, gt=0)
    encoder_lr_scale: float = Field(default=0.1, ge=0)
    freeze_encoder: bool = False
    weight_decay: float = Field(default=1e-4, ge=0)
    max_instances: int = Field(default=4096, ge=1)
    """Tiles per bag per training step for `abmil-*` (random subset; all at evaluation)."""
    max_regions: int = Field(default=256, ge=1)
    """Regions per bag per training step for `mix-*` (random subset; all at evaluation)."""
    batch_size: int = Field(default=1, ge=1)
    """Bags per forward pass, padded to the longest (1 = classic one-bag AB-MIL steps)."""
    grad_accum: int = Field(default=1, ge=1)
    """Forward passes per optimiser update."""
    standardize: bool = True
    """Standardise `abmil-*` tile features per dimension with training-fold statistics."""
    checkpoints: dict[str, Path] = Field(default_factory=dict)
    """Region-encoder checkpoint per role: `mem`, `cmem`, `random` (a method without its role is skipped)."""
    region_preset: str = "base"
    """Architecture of a fresh `mix-random` encoder when no checkpoint is given at all."""
    allow_missing_slides: bool = False
    """Exclude (and record) labelled slides without features instead of failing."""
    precision: Precision = Precision.AUTO
    """Training and its validation/test predictions: auto = bf16 on GPUs with native bf16, else fp16
    with a gradient scaler; fp32 on CPU (docs/concepts/precision.md)."""
    cache_gb: float = Field(default=4.0, ge=0)
    """In-memory feature cache shared by all methods of a run."""
    hidden_dim: int = Field(default=512, ge=8)
    attention_dim: int = Field(default=256, ge=8)
    dropout: float = Field(default=0.25, ge=0, lt=1)
    device: str = "auto"
    seed: int = 0


class EvaluateConfig(_Section):
    """Cross-validation protocol, statistics and the diagnostics stage."""

    folds: int = Field(default=5, ge=2)
    val_frac: float = Field(default=0.2, gt=0, lt=1)
    bootstrap: int = Field(default=1000, ge=0)
    seed: int = 0
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
    region: RegionConfig = Field(default_factory=RegionConfig)
    mil: MilConfig = Field(default_factory=MilConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("out")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(os.path.expanduser(str(v)))


def _parse_scalar(text: str) -> Any:
    """Parse the right-hand side of ``--set a.b=VALUE`` with YAML rules (numbers, lists, bools)."""
    return yaml.safe_load(text)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise MixmagValueError(f"override {item!r} must look like section.key=value")
        dotted, value = item.split("=", 1)
        node = data
        keys = dotted.strip().split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise MixmagValueError(f"override {item!r}: {key!r} is not a section")
        node[keys[-1]] = _parse_scalar(value)
    return data


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Defaults < YAML file at ``path`` < ``overrides``; returns the validated config."""
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
    return PipelineConfig.model_validate(data)


def dump_config(config: PipelineConfig) -> str:
    """YAML text of a resolved config (paths as strings, enums as values)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
