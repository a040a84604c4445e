"""Settings of tile embedding: every option declared once (default, constraint, doc).

:class:`EmbedSettings` is the ``embed:`` section of a study config and what
:func:`~mixmag.embed.engine.embed_slides` takes as ``settings=``; ``mixmag embed`` builds its
options from it. ``device`` and ``workers`` carry the :data:`~mixmag.utils.settings.RUNTIME` mark:
where the tiles are decoded and the model runs never changes a feature file's provenance.
This module imports no torch.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from mixmag.utils.settings import RUNTIME, Precision, StageSettings


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
    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(default="auto", json_schema_extra=RUNTIME)
    """Region decoding: `auto` (inline between forward passes on a CPU, up to 8 worker processes
    next to a GPU), 0 (inline, one thread per core) or a number of worker processes."""

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value  # a local path as given

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
