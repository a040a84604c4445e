"""Tile embedding: region indexes -> per-slide feature files (and TRIDENT/CLAM exports).

Public API (loaded on first access: ``import mixmag.embed`` and its settings import no torch)::

    from mixmag.embed import embed_slides, export_features
    summary = embed_slides("runs/tiles", "runs/features/virchow2", encoder="virchow2")
    export_features("runs/features/virchow2", "runs/trident20x", fmt="trident", mag="20x")

:class:`EmbedSettings` (``mixmag.embed.settings``) declares every embedding setting once.
"""

from __future__ import annotations

from mixmag.utils.lazy import lazy_getattr

_LAZY: dict[str, str] = {
    "EmbedConfigError": "mixmag.embed.errors",
    "EmbedSettings": "mixmag.embed.settings",
    "EmbedSummary": "mixmag.embed.core",
    "ExportSummary": "mixmag.embed.export",
    "SlideEmbeddingError": "mixmag.embed.errors",
    "EmbedJob": "mixmag.embed.jobs",
    "discover_jobs": "mixmag.embed.jobs",
    "embed_slides": "mixmag.embed.engine",
    "export_features": "mixmag.embed.export",
    "parse_shard": "mixmag.embed.jobs",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
