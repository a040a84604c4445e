"""Settings of tile embedding: every option declared once (default, constraint, doc).

:class:`EmbedSettings` is the ``embed:`` section of a study config and what
:func:`~mixmag.embed.engine.embed_slides` takes as ``settings=``; ``mixmag embed`` builds its
options from it. ``device``, ``workers``, ``backend`` and the ``ray_*`` settings carry the
:data:`~mixmag.utils.settings.RUNTIME` mark: where the tiles are decoded and the model runs never
changes a feature file's provenance.
This module imports no torch: ``encoder`` is checked against :data:`ENCODER_KEYS` (the built-in
zoo's keys, the live registry only for other keys) and ``weights`` only for its form (whether a
local file exists is a question for :func:`mixmag.preflight.preflight`, not for a saved config).
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from mixmag.cluster.settings import Backend, RayAddress
from mixmag.registry import KnownKeys
from mixmag.utils.settings import RUNTIME, Precision, StageSettings

#: Keys of the tile-encoder registry (:data:`mixmag.encoders.ENCODERS`, which needs torch).
ENCODER_KEYS = KnownKeys(
    "tile encoder",
    ("efficientnet-lite0-imagenet", "h-optimus-0", "h-optimus-1", "phikon-v2", "prov-gigapath", "tiny.d16",
     "tiny.vit-d32", "uni", "uni2-h", "virchow2", "virchow2-cls", "vit-small-random"),
    "mixmag.encoders.base:ENCODERS", entry_point_group="mixmag.encoders")

#: ``weights`` values that name no file: the entry's packaged weights or random initialisation.
WEIGHT_WORDS = ("package", "random")
#: Prefixes of a hub id (``hf-hub:org/name``); the bare ``org/name`` is one too.
HUB_PREFIXES = ("hf-hub:", "hf_hub:")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: File suffixes that make a ``weights`` value a local file, never a hub id.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def weights_kind(spec: str) -> Literal["word", "hub", "path"]:
    """How a ``weights`` value is read: a word (``random``, ``package``), a hub id or a local path.

    A value with a weights-file suffix, a backslash, more than one ``/``, or starting with ``/``,
    ``.`` or ``~`` is a local path, as is any value that is not ``org/name`` (a bare ``uni_weights``
    can only be a file or folder); so a missing local file is reported as missing instead of being
    looked up on the hub. :func:`mixmag.encoders.weights.resolve_weights` applies the same rule.
    """
    if spec in WEIGHT_WORDS:
        return "word"
    if spec.startswith(HUB_PREFIXES):
        return "hub"
    local = ("\\" in spec or spec.startswith(("/", ".", "~")) or spec.count("/") > 1
             or spec.lower().endswith(WEIGHT_SUFFIXES) or not _HUB_ID.match(spec))
    return "path" if local else "hub"


class EmbedSettings(StageSettings):
    """Tile embedding with a foundation model (docs/encoders.md)."""

    kind: ClassVar[str] = "embedding"

    encoder: str = "efficientnet-lite0-imagenet"
    """Encoder registry key (`mixmag list encoders`)."""
    weights: str | None = None
    """Local weights file/folder or hub id (docs/encoders.md); null uses the encoder's default source."""
    random_weights: bool = False
    """Build with random weights (testing only; stamped as 'random' in every file)."""
    batch_size: int = Field(default=32, ge=1)
    """Tiles per forward pass (tiles of several regions and slides are batched together)."""
    precision: Precision = Field(default=Precision.AUTO, validate_default=True)
    """auto = fp16 on GPU, bf16 on CPUs with native bf16 if the first 16 tiles match fp32 to cosine
    >= 0.999, else fp32; or force fp32/bf16/fp16 (docs/concepts/precision.md)."""
    device: str = Field(default="auto", json_schema_extra=RUNTIME)
    """`auto` (`cuda` if available, else `cpu`), `cpu`, `cuda`, `cuda:1` ..."""
    threads: int | None = Field(default=None, ge=1, json_schema_extra=RUNTIME)
    """CPU compute threads (null = the usable cores: affinity mask, cgroup quota, Slurm allocation,
    `MIXMAG_THREADS`; docs/performance.md)."""
    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(default="auto", json_schema_extra=RUNTIME)
    """Region decoding: `auto` (inline between forward passes on a CPU, up to 8 worker processes
    next to a GPU), 0 (inline, one thread per core) or a number of worker processes."""
    backend: Backend = Field(default=Backend.LOCAL, json_schema_extra=RUNTIME)
    """`local` (this process; several may share the folder) or `ray` (Ray workers on a cluster, each
    loading the model once and embedding one slide after another; docs/cluster.md)."""
    ray_address: RayAddress = Field(default="auto", json_schema_extra=RUNTIME)
    """Ray cluster to join (backend ray): `auto` (`RAY_ADDRESS`, else the cluster started on this
    machine by `ray start`) or `HOST:PORT` of its head node."""
    ray_workers: int | None = Field(default=None, ge=1, json_schema_extra=RUNTIME)
    """Ray workers, each holding one copy of the model (backend ray; null = as many as the cluster's
    GPUs, or CPUs, can hold)."""
    ray_gpus_per_worker: float | None = Field(default=None, ge=0, json_schema_extra=RUNTIME)
    """GPUs of each Ray worker (backend ray; 0.5 = two workers share a GPU; null = 1 when the
    cluster has GPUs, else 0: CPU workers)."""
    ray_cpus_per_worker: int | None = Field(default=None, ge=1, json_schema_extra=RUNTIME)
    """CPU cores of each Ray worker (backend ray): a CPU worker's compute threads; next to a GPU,
    all but one decode regions (null = 1 on a CPU; next to a GPU the cluster's CPUs per GPU, at most 9)."""
    ray_max_retries: int = Field(default=2, ge=0, json_schema_extra=RUNTIME)
    """Times a slide is tried again after its Ray worker died (killed, out of memory, node lost),
    before it is recorded as `error` (backend ray)."""

    @field_validator("encoder")
    @classmethod
    def _encoder(cls, value: str) -> str:
        return ENCODER_KEYS.check(value)

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value  # a local path as given

    @field_validator("weights")
    @classmethod
    def _weights_form(cls, value: str | None) -> str | None:
        if value is not None and value.startswith(HUB_PREFIXES):
            repo = value.split(":", 1)[1]
            if not _HUB_ID.match(repo):
                raise ValueError(f"{value!r} is not a hub id: write hf-hub:org/name (e.g. hf-hub:MahmoodLab/UNI), "
                                 "or give a local weights file or folder")
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        # a number given as text ("2", from the command line) is that number; anything else that is
        # not `auto` gets the message of the decoding plan
        if isinstance(value, str) and value != "auto":
            try:
                value = int(value)
            except ValueError:
                raise ValueError(f"workers must be 'auto' or a number >= 0, got {value!r}") from None
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"workers must be 'auto' or a number >= 0, got {value!r}")
        return value
