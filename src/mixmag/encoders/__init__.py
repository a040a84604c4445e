"""Tile encoders (foundation models): registry, metadata, weights handling, built-in zoo.

``import mixmag.encoders`` registers every built-in entry cheaply (vendor libraries load inside
the builders). Third-party packages add entries through the ``mixmag.encoders`` entry-point group.

Example::

    from mixmag.encoders import build_encoder
    enc = build_encoder("efficientnet-lite0-imagenet")      # packaged ImageNet weights, offline
    emb = enc.encode(tiles_uint8_nhwc)                       # (B, 1280) float32
"""

from __future__ import annotations

from mixmag.encoders import zoo as _zoo  # noqa: F401  (registers the built-in entries)
from mixmag.encoders.base import (
    ENCODERS,
    POOLINGS,
    EncoderMeta,
    EncoderRecipe,
    TileEncoder,
    TileTransform,
    register_encoder,
)
from mixmag.encoders.factory import build_encoder, encoder_meta
from mixmag.encoders.weights import WeightsError, load_state_dict_file, resolve_weights

__all__ = [
    "ENCODERS",
    "POOLINGS",
    "EncoderMeta",
    "EncoderRecipe",
    "TileEncoder",
    "TileTransform",
    "WeightsError",
    "build_encoder",
    "encoder_meta",
    "load_state_dict_file",
    "register_encoder",
    "resolve_weights",
]
