"""Hyper-parameters of a pretraining run (one frozen dataclass).

The defaults and why: docs/concepts/region-encoder.md#our-choices-where-the-paper-is-silent.

Kept apart from the engine so the CLI, the pipeline config and tests share one definition of every
default, and so a run folder can be checked against the settings it was started with.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any

from mixmag.errors import MixmagValueError
from mixmag.region.model import REGION_ENCODERS
from mixmag.region.objectives import OBJECTIVES, RECONSTRUCTION_LOSSES
from mixmag.utils.device import PRECISIONS

# Settings that change *how fast* or *where* a run executes, never its result; a run may be
# resumed with different values of these.
RUNTIME_FIELDS = frozenset({"device", "num_workers", "checkpoint_every", "keep_checkpoints", "open_files"})


@dataclass(frozen=True)
class PretrainSettings:
    """Everything that defines a region-encoder pretraining run.

    Attributes:
        objective: ``mem``, ``cmem`` or ``random`` (untrained encoder, saved at initialisation).
        preset: Architecture preset (``base``, ``small``, ``tiny``); the fields below override it.
        width, depth, heads, mlp_ratio, drop_path: Architecture overrides (None = preset value).
        position: ``slot`` or ``sincos`` position embedding.
        steps: Optimizer steps.
        batch_size: Global batch in regions per step (split evenly over DDP processes).
        lr: Peak learning rate (AdamW, after linear warmup, then cosine decay to 0).
        weight_decay: AdamW weight decay (not applied to biases, norms and embeddings).
        betas: AdamW betas (0.9, 0.95) as in MAE.
        warmup_frac: Fraction of the steps used for linear warmup.
        grad_clip: Max global gradient L2 norm (0 disables clipping).
        mask_ratio: Fraction of valid tokens masked per view.
        mag_mask_prob: Probability that a view masks one whole magnification instead.
        token_drop_max: Views drop a uniform 0..token_drop_max fraction of valid tokens.
        regions_per_slide: Regions sampled per slide per epoch (K).
        shuffle_buffer: Regions held in the cross-slide shuffle buffer.
        contrastive_weight: λ of the CMEM InfoNCE term.
        temperature: InfoNCE temperature τ.
        proj_dim: CMEM projection size.
        loss: Reconstruction loss, ``mse`` or ``cosine``.
        stats_regions_per_slide: Regions per slide sampled for target statistics (None = all).
        seed: Seeds initialisation, data order, masks and drop-path.
        device: ``auto``, ``cpu``, ``cuda`` ... (DDP ranks use cuda:LOCAL_RANK).
        precision: ``auto`` (bf16 on GPUs with native bf16, else fp16 with a gradient scaler; fp32 on
            CPU), ``fp32``, ``bf16``, ``fp16``; see :func:`mixmag.utils.device.resolve_amp`.
        num_workers: DataLoader worker processes reading feature files.
        checkpoint_every: Save a resumable checkpoint every N steps (0 = only the final one).
        keep_checkpoints: Number of intermediate checkpoints kept.
        open_files: HDF5 handles each data worker keeps open (None = sized to the shuffle buffer).
    """

    objective: str = "mem"
    preset: str = "base"
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    mlp_ratio: float | None = None
    drop_path: float | None = None
    position: str = "slot"
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1.5e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    mask_ratio: float = 0.5
    mag_mask_prob: float = 0.25
    token_drop_max: float = 0.5
    regions_per_slide: int = 64
    shuffle_buffer: int = 4096
    contrastive_weight: float = 1.0
    temperature: float = 0.1
    proj_dim: int = 256
    loss: str = "mse"
    stats_regions_per_slide: int | None = 256
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = 2
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    open_files: int | None = None

    def __post_init__(self) -> None:
        OBJECTIVES.get(self.objective)  # unknown keys raise with close matches
        REGION_ENCODERS.get(self.preset)
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2 (InfoNCE needs negatives; MEM needs a batch)"),
            (self.lr > 0, "lr must be positive"),
            (0 <= self.warmup_frac < 1, "warmup_frac must lie in [0, 1)"),
            (0 < self.mask_ratio < 1, "mask_ratio must lie in (0, 1)"),
            (0 <= self.mag_mask_prob <= 1, "mag_mask_prob must lie in [0, 1]"),
            (0 <= self.token_drop_max < 1, "token_drop_max must lie in [0, 1)"),
            (self.regions_per_slide >= 1, "regions_per_slide must be >= 1"),
            (self.temperature > 0, "temperature must be positive"),
            (self.loss in RECONSTRUCTION_LOSSES, f"loss must be one of {RECONSTRUCTION_LOSSES}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.num_workers >= 0 and self.checkpoint_every >= 0, "num_workers/checkpoint_every must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise MixmagValueError(f"invalid pretraining setting: {message}")

    @classmethod
    def from_options(cls, **options: Any) -> PretrainSettings:
        """Build from keyword options; an unknown name raises ``ValueError`` with close matches."""
        names = {f.name for f in dataclasses.fields(cls)}
        for key in options:
            if key not in names:
                close = difflib.get_close_matches(key, sorted(names), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise MixmagValueError(f"unknown pretraining option {key!r}{hint}")
        if "betas" in options:
            options["betas"] = tuple(options["betas"])
        return cls(**options)

    def architecture(self) -> dict[str, Any]:
        """Overrides passed to :func:`~mixmag.region.model.build_region_encoder`."""
        return {"width": self.width, "depth": self.depth, "heads": self.heads, "mlp_ratio": self.mlp_ratio,
                "drop_path": self.drop_path, "position": self.position}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in checkpoints and the run folder)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def result_defining(self) -> dict[str, Any]:
        """The settings that must match for a run to be resumed (runtime-only fields removed)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}

    @property
    def warmup_steps(self) -> int:
        """Linear-warmup length in steps."""
        return int(round(self.warmup_frac * self.steps))


def lr_factor(step: int, *, total: int, warmup: int) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-based): linear warmup, cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


# RegionConfig fields copied verbatim into PretrainSettings (the architecture ones only when set).
_CONFIG_FIELDS = ("preset", "position", "steps", "batch_size", "lr", "weight_decay", "warmup_frac", "grad_clip",
                  "mask_ratio", "mag_mask_prob", "token_drop_max", "regions_per_slide", "shuffle_buffer",
                  "contrastive_weight", "temperature", "seed", "device", "precision", "num_workers",
                  "checkpoint_every")
_ARCH_FIELDS = ("width", "depth", "heads", "mlp_ratio", "drop_path")


def settings_from_config(region: Any, *, objective: str, **overrides: Any) -> PretrainSettings:
    """Pretraining settings from a ``mixmag.config.RegionConfig`` section.

    Architecture fields (width, depth, heads, mlp_ratio, drop_path) override the preset only when
    they were set explicitly in the config (pydantic's ``model_fields_set``), so ``preset: small``
    is not silently widened back to the section's base-size defaults.

    Args:
        region: The ``region`` section of a study config.
        objective: ``mem``, ``cmem`` or ``random``.
        **overrides: Final per-field overrides (e.g. from CLI options); None values are ignored.
    """
    values: dict[str, Any] = {k: getattr(region, k) for k in _CONFIG_FIELDS}
    values["precision"] = getattr(values["precision"], "value", values["precision"])
    values.update({k: getattr(region, k) for k in _ARCH_FIELDS if k in region.model_fields_set})
    values.update({k: v for k, v in overrides.items() if v is not None})
    return PretrainSettings.from_options(objective=objective, **values)
