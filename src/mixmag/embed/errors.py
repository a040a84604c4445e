"""Errors of an embedding run (kept in their own module so every ``mixmag.embed`` module can raise them)."""

from __future__ import annotations

from mixmag.errors import MixmagRuntimeError, MixmagValueError

__all__ = ["EmbedConfigError", "SlideEmbeddingError"]


class EmbedConfigError(MixmagValueError):
    """The run's settings conflict with what an output folder already holds."""


class SlideEmbeddingError(MixmagRuntimeError):
    """A slide failed and ``fail_fast`` was requested."""
