"""Settings of region-encoder pretraining: every option declared once (default, constraint, doc).

The defaults and why: docs/concepts/region-encoder.md#our-choices-where-the-paper-is-silent.

Two thin models share one set of fields (:class:`PretrainOptions`):

* :class:`RegionSettings` is the ``region:`` section of a study config (``mixmag run``,
  ``mixmag pretrain --config``): the options plus which objectives to pretrain and on which slides;
* :class:`PretrainSettings` is one run (:func:`~mixmag.region.pretrain.pretrain_region_encoder`):
  the options plus its objective. It is stored in every checkpoint, and its
  :meth:`~mixmag.utils.settings.StageSettings.result_defining` part must match to resume a run.

Fields marked :data:`~mixmag.utils.settings.RUNTIME` (device, workers, checkpointing) may differ
between a run and its resumption. This module imports no torch: the CLI builds its options from it,
and the registry keys (objectives, presets) are checked against :data:`OBJECTIVE_KEYS` and
:data:`PRESET_KEYS`, the keys of registries that live with the torch model code.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from mixmag.errors import MixmagValueError
from mixmag.registry import KnownKeys
from mixmag.utils.settings import RUNTIME, Precision, StageSettings

_Beta = Annotated[float, Field(ge=0, lt=1)]

#: Keys of the pretraining-objective registry (:data:`mixmag.region.objectives.OBJECTIVES`).
OBJECTIVE_KEYS = KnownKeys("pretraining objective", ("cmem", "mem", "random"), "mixmag.region.objectives:OBJECTIVES")
#: Keys of the region-encoder preset registry (:data:`mixmag.region.model.REGION_ENCODERS`).
PRESET_KEYS = KnownKeys("region encoder preset", ("base", "small", "tiny"), "mixmag.region.model:REGION_ENCODERS")
#: Position encodings (:data:`mixmag.region.model.POSITIONS`).
POSITIONS = ("slot", "sincos")
#: Reconstruction losses (:data:`mixmag.region.objectives.RECONSTRUCTION_LOSSES`).
RECONSTRUCTION_LOSSES = ("mse", "cosine")
#: ``HOST:PORT`` of a rendezvous: a DNS name or IPv4 address, or an IPv6 address in brackets.
_ENDPOINT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(?P<port>[0-9]{1,5})")


def one_of(value: str, choices: tuple[str, ...], what: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a message listing them."""
    if value not in choices:
        raise MixmagValueError(f"unknown {what} {value!r}; use one of {', '.join(choices)}")
    return value


def check_endpoint(value: str) -> str:
    """Return ``value`` if it is ``HOST:PORT`` (a host name, an IPv4 address or ``[IPv6]``; port 1-65535)."""
    match = _ENDPOINT.fullmatch(value.strip())
    if match is None or not 0 < int(match["port"]) < 65536:
        raise MixmagValueError(f"rendezvous endpoint {value!r} is not HOST:PORT (e.g. node001:29500 or "
                               "10.0.0.5:29500)")
    return value.strip()


class PretrainOptions(StageSettings):
    """The options of a pretraining run shared by every objective (base of the two models below)."""

    preset: str = "base"
    """Architecture preset: `base` (W768/d6/h12), `small` (W128/d2/h4) or `tiny` (W32/d2/h2);
    width/depth/heads/mlp_ratio/drop_path override it when set."""
    width: int | None = Field(default=None, ge=8)
    """Model width W (null = the preset's)."""
    depth: int | None = Field(default=None, ge=1)
    """Transformer blocks (null = the preset's)."""
    heads: int | None = Field(default=None, ge=1)
    """Attention heads (null = the preset's)."""
    mlp_ratio: float | None = Field(default=None, gt=0)
    """MLP hidden size as a multiple of the width (null = the preset's)."""
    drop_path: float | None = Field(default=None, ge=0, lt=1)
    """Stochastic-depth rate of the last block (null = the preset's)."""
    position: str = "slot"
    """`slot` (learned per token slot) or `sincos` (2D sin-cos of the tile centre; any layout)."""
    steps: int = Field(default=2000, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(default=256, ge=2)
    """Global batch in regions per step, split evenly over DDP processes (InfoNCE needs negatives)."""
    lr: float = Field(default=1.5e-4, gt=0)
    """Peak learning rate (AdamW, after linear warmup, then cosine decay to 0)."""
    weight_decay: float = Field(default=0.05, ge=0)
    """AdamW weight decay (not applied to biases, norms and embeddings)."""
    betas: tuple[_Beta, _Beta] = (0.9, 0.95)
    """AdamW betas, as in MAE."""
    warmup_frac: float = Field(default=0.05, ge=0, lt=1)
    """Fraction of the steps used for linear warmup."""
    grad_clip: float = Field(default=1.0, ge=0)
    """Max global gradient L2 norm (0 disables clipping)."""
    mask_ratio: float = Field(default=0.5, gt=0, lt=1)
    """Fraction of valid tokens masked per view."""
    mag_mask_prob: float = Field(default=0.25, ge=0, le=1)
    """Probability that a view masks one whole magnification instead."""
    token_drop_max: float = Field(default=0.5, ge=0, lt=1)
    """Each view drops a uniform 0..token_drop_max fraction of its valid tokens."""
    regions_per_slide: int = Field(default=64, ge=1)
    """Regions sampled per slide per epoch (K)."""
    shuffle_buffer: int = Field(default=4096, ge=1)
    """Regions held in the cross-slide shuffle buffer of the streaming loader."""
    contrastive_weight: float = Field(default=1.0, ge=0)
    """λ of the CMEM InfoNCE term."""
    temperature: float = Field(default=0.1, gt=0)
    """CMEM InfoNCE temperature τ."""
    proj_dim: int = Field(default=256, ge=1)
    """CMEM projection size."""
    loss: str = "mse"
    """Reconstruction loss: `mse` or `cosine`."""
    stats_regions_per_slide: int | None = Field(default=256, ge=1)
    """Regions per slide sampled for the target statistics (null = all)."""
    seed: int = 0
    """Seeds initialisation, data order, masks and drop-path."""
    precision: Precision = Field(default=Precision.AUTO, validate_default=True)
    """auto = bf16 on GPUs with native bf16, else fp16 with a gradient scaler; fp32 on CPU
    (docs/concepts/precision.md)."""
    device: str = Field(default="auto", json_schema_extra=RUNTIME)
    """`auto`, `cpu`, `cuda`, `cuda:1` ... (DDP ranks use cuda:LOCAL_RANK)."""
    threads: int | None = Field(default=None, ge=1, json_schema_extra=RUNTIME)
    """CPU compute threads (null = the usable cores: affinity mask, cgroup quota, Slurm allocation,
    `MIXMAG_THREADS`; docs/performance.md)."""
    num_workers: int = Field(default=2, ge=0, json_schema_extra=RUNTIME)
    """DataLoader processes reading feature files."""
    checkpoint_every: int = Field(default=500, ge=0, json_schema_extra=RUNTIME)
    """Resumable checkpoint every N steps (0 = final only)."""
    keep_checkpoints: int = Field(default=2, ge=1, json_schema_extra=RUNTIME)
    """Intermediate checkpoints kept (older ones are deleted)."""
    open_files: int | None = Field(default=None, ge=1, json_schema_extra=RUNTIME)
    """HDF5 files each data worker keeps open (null = sized to the shuffle buffer)."""
    confirm_above_minutes: float | None = Field(default=60.0, gt=0, json_schema_extra=RUNTIME)
    """Stop before training on when the first steps say the run needs longer than this, unless a
    person at a terminal confirms; batch jobs pass `--yes` (null = never stop; docs/troubleshooting.md)."""

    @field_validator("preset")
    @classmethod
    def _preset(cls, value: str) -> str:
        return PRESET_KEYS.check(value)

    @field_validator("position")
    @classmethod
    def _position(cls, value: str) -> str:
        return one_of(value, POSITIONS, "position encoding")

    @field_validator("loss")
    @classmethod
    def _loss(cls, value: str) -> str:
        return one_of(value, RECONSTRUCTION_LOSSES, "reconstruction loss")

    def architecture(self) -> dict[str, Any]:
        """Overrides passed to :func:`~mixmag.region.model.build_region_encoder`."""
        return {"width": self.width, "depth": self.depth, "heads": self.heads, "mlp_ratio": self.mlp_ratio,
                "drop_path": self.drop_path, "position": self.position}


class PretrainSettings(PretrainOptions):
    """Everything that defines one region-encoder pretraining run: the options and its objective.

    Unknown registry keys (objective, preset) raise :class:`~mixmag.errors.MixmagKeyError` with
    close matches; values out of range raise a ``ValueError`` naming the field.
    """

    model_config = ConfigDict(frozen=True)
    kind: ClassVar[str] = "pretraining"

    objective: str = "mem"
    """`mem`, `cmem` or `random` (the untrained encoder, saved at initialisation)."""

    @model_validator(mode="after")
    def _known_keys(self) -> PretrainSettings:
        # the registries live with the (torch) model code: imported here, not at module import
        from mixmag.region.model import REGION_ENCODERS
        from mixmag.region.objectives import OBJECTIVES, RECONSTRUCTION_LOSSES

        OBJECTIVES.get(self.objective)  # unknown keys raise with close matches
        REGION_ENCODERS.get(self.preset)
        if self.loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(RECONSTRUCTION_LOSSES)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in checkpoints and the run folder)."""
        return self.model_dump(mode="json")

    @property
    def warmup_steps(self) -> int:
        """Linear-warmup length in steps."""
        return int(round(self.warmup_frac * self.steps))


class RegionSettings(PretrainOptions):
    """Region encoder and its self-supervised pretraining (docs/concepts/region-encoder.md)."""

    kind: ClassVar[str] = "region"

    pretrain_on: str = Field(default="auto", pattern="^(auto|all|unlabeled)$")
    """Pretraining corpus: `unlabeled` (only `slides.pretrain_inputs`: no test patient is seen),
    `all` (labeled + unlabeled slides; self-supervised, labels unused, but test patients' slides are
    seen; the report says so), `auto` = `unlabeled` when `slides.pretrain_inputs` is set, else `all`."""
    objectives: list[Annotated[str, AfterValidator(OBJECTIVE_KEYS.check)]] = Field(default_factory=lambda: ["mem", "cmem"])
    """Pretraining objectives to run (each gives one checkpoint): `mem`, `cmem`."""
    # How `mixmag run` starts each pretraining stage: DDP gives the run of one process with the same
    # global batch (mixmag.region.distributed), so these never change a result.
    nproc_per_node: int = Field(default=1, ge=1, json_schema_extra=RUNTIME)
    """Pretraining processes on this node (one per GPU); above 1, or with `nnodes` above 1, `mixmag run`
    launches each training objective with torchrun (docs/cluster.md)."""
    nnodes: int = Field(default=1, ge=1, json_schema_extra=RUNTIME)
    """Nodes taking part in each pretraining stage, `nproc_per_node` processes each; the other nodes
    join by running the stage's `join-command.sh` (docs/cluster.md)."""
    rdzv_endpoint: str | None = Field(default=None, json_schema_extra=RUNTIME)
    """HOST:PORT of the c10d rendezvous (an address of the node running `mixmag run` that the others
    reach, and a free port); required when `nnodes` is above 1 (null = a local one)."""

    @field_validator("rdzv_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_endpoint(value)

    @model_validator(mode="after")
    def _launch(self) -> RegionSettings:
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError(f"nnodes is {self.nnodes}: set region.rdzv_endpoint to HOST:PORT of the node "
                             "that runs `mixmag run` (docs/cluster.md)")
        processes = self.nproc_per_node * self.nnodes
        if self.batch_size % processes:  # checked here, not minutes later in every launched process
            raise ValueError(f"batch_size {self.batch_size} must be divisible by the {processes} pretraining "
                             "processes (nproc_per_node x nnodes): every process takes an equal share")
        return self

    @property
    def launches_torchrun(self) -> bool:
        """True when a training objective runs as more than one process (``mixmag run`` starts torchrun)."""
        return self.nproc_per_node * self.nnodes > 1

    def run_settings(self, objective: str) -> PretrainSettings:
        """The settings of this section's pretraining run for ``objective`` (``mem``, ``cmem``, ``random``)."""
        return PretrainSettings.from_options(
            objective=objective, **{name: getattr(self, name) for name in PretrainOptions.model_fields})


def lr_factor(step: int, *, total: int, warmup: int) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-based): linear warmup, cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
