"""Tile embedding: region indexes -> per-slide feature files (and TRIDENT/CLAM exports).

Public API::

    from mixmag.embed import embed_slides, export_features
    summary = embed_slides("runs/tiles", "runs/features/virchow2", encoder="virchow2")
    export_features("runs/features/virchow2", "runs/trident20x", fmt="trident", mag="20x")
"""

from __future__ import annotations

from mixmag.embed.engine import EmbedSummary, embed_slides
from mixmag.embed.errors import EmbedConfigError, SlideEmbeddingError
from mixmag.embed.export import ExportSummary, export_features
from mixmag.embed.jobs import SlideJob, discover_jobs, parse_shard

__all__ = [
    "EmbedConfigError",
    "EmbedSummary",
    "ExportSummary",
    "SlideEmbeddingError",
    "SlideJob",
    "discover_jobs",
    "embed_slides",
    "export_features",
    "parse_shard",
]
