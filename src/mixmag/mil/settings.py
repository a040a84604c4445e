"""Settings of MIL training: every option declared once (default, constraint, doc).

:class:`MilSettings` is the ``mil:`` section of a study config and what
:func:`~mixmag.mil.experiment.train_methods` takes as ``settings=``; ``mixmag train`` builds its
options from it. Defaults and why: docs/concepts/evaluation.md#training-defaults.

Fields marked :data:`ESTIMATOR` are the parameters of every fitted model
(:class:`~mixmag.mil.estimator.MILClassifier`, :class:`~mixmag.mil.train.TrainParams`); they are
stored, in declaration order, in each run's config hash (docs/formats/mil-run.md), so a changed
value retrains the run and an unchanged one resumes it. Fields marked
:data:`~mixmag.utils.settings.RUNTIME` never change a result. This module imports no torch:
``methods`` are checked against :data:`METHOD_KEYS`, the keys of :data:`mixmag.mil.methods.METHODS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, Field, field_validator

from mixmag.region.settings import PRESET_KEYS, one_of
from mixmag.registry import KnownKeys
from mixmag.utils.settings import RUNTIME, Precision, StageSettings, marked_fields

#: ``json_schema_extra`` of a field that is a hyper-parameter of every fitted model.
ESTIMATOR: dict[str, Any] = {"estimator": True}

#: The paper's comparison, in its table order.
PAPER_METHODS: tuple[str, ...] = (
    "abmil-5x", "abmil-10x", "abmil-20x", "mix-random", "mix-mem", "mix-cmem", "mix-mem-cls")

#: Keys of the method registry (:data:`mixmag.mil.methods.METHODS`, which needs torch); methods
#: added at runtime with ``METHODS.add`` are accepted once that module is imported.
METHOD_KEYS = KnownKeys("MIL method", (*PAPER_METHODS, "mix-mem-mean", "abmil-ms-concat", "mix-random-mean",
                                       "abmil-20x-context", "mix-mem-frozen", "mix-cmem-frozen", "transmil-20x"),
                        "mixmag.mil.methods:METHODS")
#: What one bag is (:data:`mixmag.mil.labels.BAG_LEVELS`).
BAG_LEVELS = ("patient", "slide")
#: Endpoints a label column can declare (docs/concepts/endpoints.md); ``binary`` and ``multiclass``
#: are classification that also checks the number of classes (exactly 2, at least 3).
TARGET_TYPES = ("classification", "binary", "multiclass", "regression", "survival")
#: Losses of regression targets (:data:`mixmag.mil.endpoints.REGRESSION_LOSSES`).
REGRESSION_LOSSES = ("mse", "huber")
#: The settings of the regression and survival endpoints. They are not ESTIMATOR fields: runs of
#: those endpoints record the ones they use in their config hash, so the config (and hash) of a
#: classification run is what it was before endpoints existed; at their defaults they are also
#: left out of the study's train fingerprint (finished studies stay reusable).
ENDPOINT_SETTINGS = ("target_types", "survival_columns", "regression_loss", "survival_batch", "risk_groups")
#: A method name, checked against :data:`METHOD_KEYS`.
MethodKey = Annotated[str, AfterValidator(METHOD_KEYS.check)]


def estimator_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """Names of the fields of ``model`` marked :data:`ESTIMATOR`, in declaration order."""
    return marked_fields(model, ESTIMATOR)


class MilSettings(StageSettings):
    """AB-MIL biomarker models and their training (docs/concepts/evaluation.md)."""

    kind: ClassVar[str] = "MIL"

    labels: Path | None = None
    """CSV/TSV with patient_id, slide_id and label columns."""
    targets: list[str] = Field(default_factory=list)
    """Label columns to predict (default: every column except patient_id/slide_id)."""
    methods: list[MethodKey] = Field(default_factory=lambda: list(PAPER_METHODS))
    """Methods to compare (docs/cli/train.md lists them; default: the paper's seven)."""
    bag_level: str = "patient"
    """`patient` (pool a patient's slides into one bag) or `slide`."""
    # The estimator's hyper-parameters. Their order is part of every run's config hash: append new
    # ones at the end of this block.
    hidden_dim: int = Field(default=512, ge=1, json_schema_extra=ESTIMATOR)
    """AB-MIL instance embedding width."""
    attention_dim: int = Field(default=256, ge=1, json_schema_extra=ESTIMATOR)
    """AB-MIL attention hidden size."""
    dropout: float = Field(default=0.25, ge=0, lt=1, json_schema_extra=ESTIMATOR)
    """AB-MIL dropout."""
    epochs: int = Field(default=30, ge=1, json_schema_extra=ESTIMATOR)
    """Maximum epochs per fold (one pass over the training bags each)."""
    patience: int = Field(default=8, ge=1, json_schema_extra=ESTIMATOR)
    """Epochs without validation improvement before early stopping."""
    lr: float = Field(default=2e-4, gt=0, json_schema_extra=ESTIMATOR)
    """AdamW learning rate of the AB-MIL head."""
    encoder_lr_scale: float = Field(default=0.1, ge=0, json_schema_extra=ESTIMATOR)
    """Encoder learning rate = `lr` × this (0 freezes the encoder)."""
    weight_decay: float = Field(default=1e-4, ge=0, json_schema_extra=ESTIMATOR)
    """AdamW weight decay."""
    freeze_encoder: bool = Field(default=False, json_schema_extra=ESTIMATOR)
    """Keep region encoders fixed (eval mode, no gradients)."""
    max_instances: int = Field(default=4096, ge=1, json_schema_extra=ESTIMATOR)
    """Tiles per bag per training step for `abmil-*` (random subset; all at evaluation)."""
    max_regions: int = Field(default=256, ge=1, json_schema_extra=ESTIMATOR)
    """Regions per bag per training step for `mix-*` (random subset; all at evaluation)."""
    batch_size: int = Field(default=1, ge=1, json_schema_extra=ESTIMATOR)
    """Bags per forward pass, padded to the longest (1 = classic one-bag AB-MIL steps)."""
    grad_accum: int = Field(default=1, ge=1, json_schema_extra=ESTIMATOR)
    """Forward passes per optimiser update."""
    standardize: bool = Field(default=True, json_schema_extra=ESTIMATOR)
    """Standardise `abmil-*` tile features per dimension with training-fold statistics."""
    precision: Precision = Field(default=Precision.AUTO, validate_default=True, json_schema_extra=ESTIMATOR)
    """Training and its validation/test predictions: auto = bf16 on GPUs with native bf16, else fp16
    with a gradient scaler; fp32 on CPU (docs/concepts/precision.md)."""
    checkpoints: dict[str, Path] = Field(default_factory=dict)
    """Region-encoder checkpoint per role: `mem`, `cmem`, `random` (a method without its role is
    skipped); in a study these replace the study's own pretrained encoders."""
    target_types: dict[str, str] = Field(default_factory=dict)
    """Endpoint of each label column: `classification` (or `binary`, `multiclass`), `regression` or
    `survival`; a column not listed is inferred, with a log line: a `<name>_time` / `<name>_event`
    pair is survival, a numeric column with more than 10 distinct values regression, else
    classification (docs/concepts/endpoints.md)."""
    survival_columns: dict[str, list[str]] = Field(default_factory=dict)
    """`{target: [time column, event column]}` of survival targets whose columns are not named
    `<target>_time` and `<target>_event` (event: 1 = observed, 0 = censored)."""
    regression_loss: str = "mse"
    """Loss of regression targets on the standardised value (training-fold mean and sd): `mse`, or
    `huber` (quadratic within 1 sd, linear beyond: robust to outliers)."""
    survival_batch: int = Field(default=32, ge=2)
    """Bags per Cox partial-likelihood step of survival targets: the risk set one optimiser update
    sees (drawn stratified by event; `batch_size` bags per forward pass within it)."""
    risk_groups: int = Field(default=2, ge=2, le=3)
    """Predicted-risk groups of a survival target's Kaplan-Meier plot and log-rank test: 2 = median
    split, 3 = tertiles (cut within each test fold)."""
    region_preset: str = "base"
    """Architecture of a fresh `mix-random` encoder when no checkpoint is given at all."""
    allow_missing_slides: bool = False
    """Exclude (and record, with the reason) labelled slides without usable features (no file, or one
    failing the feature-file checks: incomplete, inconsistent shapes, NaN/inf) instead of failing."""
    seed: int = 0
    """Seed of the splits, initialisation, bag order, subsampling and bootstrap (fold k: seed + k)."""
    refit_all: bool = False
    """After cross-validation, train one model per method on all labelled patients for deployment
    (`<run>/final/model.pt`; `mixmag predict` uses it); its epochs are the median best epoch of the
    CV folds."""
    cache_gb: float = Field(default=4.0, ge=0, json_schema_extra=RUNTIME)
    """In-memory feature cache shared by all methods of a run."""
    device: str = Field(default="auto", json_schema_extra=RUNTIME)
    """`auto`, `cpu`, `cuda`, `cuda:1` ..."""
    threads: int | None = Field(default=None, ge=1, json_schema_extra=RUNTIME)
    """CPU compute threads (null = the usable cores: affinity mask, cgroup quota, Slurm allocation,
    `MIXMAG_THREADS`; docs/performance.md)."""

    @field_validator("bag_level")
    @classmethod
    def _bag_level(cls, value: str) -> str:
        return one_of(value, BAG_LEVELS, "bag level")

    @field_validator("target_types")
    @classmethod
    def _target_types(cls, value: dict[str, str]) -> dict[str, str]:
        return {target: one_of(kind, TARGET_TYPES, f"target type of {target!r}") for target, kind in value.items()}

    @field_validator("survival_columns")
    @classmethod
    def _survival_columns(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for target, columns in value.items():
            if len(columns) != 2:
                raise ValueError(f"survival_columns of {target!r} must be [time column, event column], "
                                 f"got {columns}")
        return value

    @field_validator("regression_loss")
    @classmethod
    def _regression_loss(cls, value: str) -> str:
        return one_of(value, REGRESSION_LOSSES, "regression loss")

    @field_validator("region_preset")
    @classmethod
    def _region_preset(cls, value: str) -> str:
        return PRESET_KEYS.check(value)

    def estimator_params(self) -> dict[str, Any]:
        """The :data:`ESTIMATOR` fields as plain JSON values, in declaration order."""
        values = self.model_dump(mode="json")
        return {name: values[name] for name in estimator_fields(type(self))}


#: Every default, for engine-level signatures that must keep plain keyword arguments.
MIL_DEFAULTS = MilSettings()
