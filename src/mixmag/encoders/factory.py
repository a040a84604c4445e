"""``build_encoder``: registry key + weights source -> a ready, eval-mode :class:`TileEncoder`."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from mixmag.encoders.base import ENCODERS, EncoderMeta, TileEncoder
from mixmag.encoders.weights import fit_state_dict, load_state_dict_file, resolve_weights
from mixmag.errors import MixmagValueError
from mixmag.utils.device import resolve_amp, resolve_device
from mixmag.utils.seed import torch_rng_scope

logger = logging.getLogger(__name__)

# Random initialisation is seeded so that two processes (or a resumed run) build the same model:
# files stamped weights_hash="random" are then comparable and resumable.
RANDOM_INIT_SEED = 0


def encoder_meta(key: str) -> EncoderMeta:
    """Metadata of a registry entry (raises ``KeyError`` with close matches for unknown keys)."""
    return ENCODERS.meta(key)


def build_encoder(
    key: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    random_weights: bool = False,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    arch_overrides: dict[str, Any] | None = None,
) -> TileEncoder:
    """Build a registered tile encoder in eval mode, channels-last, on ``device``.

    Args:
        key: Registry key (``mixmag list encoders``).
        weights: Local file/folder or hub id; None uses the entry's default source (hub id, the
            packaged file, or random for test entries).
        random_weights: Random initialisation under a fixed seed (testing/benchmarks; stamped "random").
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` ...
        precision: ``fp32``, ``fp16``, ``bf16`` or ``auto`` (fp16 on GPU, bf16 on CPUs with native
            bf16, else fp32; :func:`~mixmag.utils.device.resolve_amp` for inference); used as
            autocast dtype by :meth:`TileEncoder.encode`.
        arch_overrides: Keyword overrides for the backbone builder (e.g. ``{"depth": 2}`` for
            depth-reduced smoke tests of a large architecture). Published weights will not fit a
            modified architecture, so this requires random weights.

    Raises:
        KeyError: Unknown key.
        WeightsError: Weights unavailable or not matching the architecture (message says how to fix).
    """
    entry = ENCODERS.entry(key)
    meta: EncoderMeta = entry.meta
    recipe = entry.obj
    if arch_overrides and not random_weights:
        raise MixmagValueError("arch_overrides change the architecture; combine them with random_weights=True")
    resolved = resolve_weights(meta, recipe, weights, random_weights=random_weights)
    with torch_rng_scope(RANDOM_INIT_SEED, torch.device("cpu")):
        backbone = recipe.build_backbone(**(arch_overrides or {}))
    if not resolved.is_random:
        assert resolved.path is not None
        logger.info("loading %s weights from %s", key, resolved.source)
        fit_state_dict(backbone, load_state_dict_file(resolved.path), recipe, key=key, source=resolved.path)
    else:
        logger.info("%s: random weights (seed %d); embeddings are meaningless except for tests/benchmarks",
                    key, RANDOM_INIT_SEED)
    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    encoder = TileEncoder(backbone=backbone, meta=meta, autocast_dtype=resolve_amp(precision, dev, training=False).dtype,
                          weights_source=resolved.source, weights_hash=resolved.sha256)
    encoder.cpu_max_batch = recipe.cpu_max_batch
    encoder.eval().requires_grad_(False)
    # channels-last roughly doubles CPU conv throughput (oneDNN) and helps tensor cores on GPU.
    encoder.to(device=dev)
    return encoder.to(memory_format=torch.channels_last)
