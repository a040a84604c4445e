"""``mixmag encode``: run a (pre)trained region encoder over a feature store and write region embeddings.

One output file per slide (format in :mod:`mixmag.io.region_embeddings`): the CLS vector of every
region (``mode="cls"``: the compressed, ~21x shorter MIL sequence) or every contextualised token
(``mode="tokens"``). The encoder runs in eval mode without masking, so outputs are deterministic.
Each slide is written atomically and recorded in ``<out>/manifest.csv``; a re-run skips slides whose
file exists with the same checkpoint, mode and source feature file. A feature file that fails its
header checks (:func:`~mixmag.io.features.feature_file_problem`) or holds NaN/inf in a valid token
(found while its regions are encoded, so no extra pass) is recorded as ``error`` with the reason and
the other slides go on; only a run in which every slide fails is an error.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixmag.errors import MixmagRuntimeError, MixmagValueError
from mixmag.io.features import FeatureFile, open_feature_file
from mixmag.io.h5common import FormatError
from mixmag.io.manifest import Manifest, Status
from mixmag.io.region_embeddings import MODES, RegionEmbeddingWriter, is_complete_region_embeddings
from mixmag.io.regions import RegionIndex
from mixmag.region.checkpoints import check_layout, load_region_encoder
from mixmag.region.data import check_finite, feature_paths
from mixmag.region.model import RegionEncoder
from mixmag.utils.atomic import remove_stale_temp_files
from mixmag.utils.device import resolve_amp, resolve_device
from mixmag.utils.hashing import quick_file_hash

logger = logging.getLogger(__name__)

# Feature-store attrs that describe the *tile* encoder; renamed with a tile_ prefix in the output so
# that `encoder`/`embed_dim` of a region-embedding file describe the region embeddings themselves.
_TILE_ATTRS = ("encoder", "embed_dim", "weights_source", "weights_hash", "transform", "pooling", "precision")
_DROPPED_ATTRS = ("artifact", "format_version", "complete", "created_at")


@dataclass(frozen=True)
class EncodeSummary:
    """What :func:`encode_regions` did.

    Attributes:
        out_dir: Output folder.
        manifest: ``manifest.csv`` with one row per slide.
        mode: ``cls`` or ``tokens``.
        checkpoint_hash: SHA-256 of the encoder weights used.
        n_ok, n_skipped, n_empty, n_error: Slides per outcome.
        files: Written (or already complete) region-embedding files.
        errors: ``slide_id -> message`` of failed slides.
    """

    out_dir: Path
    manifest: Path
    mode: str
    checkpoint_hash: str
    n_ok: int = 0
    n_skipped: int = 0
    n_empty: int = 0
    n_error: int = 0
    files: list[Path] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def _output_index(index: RegionIndex) -> RegionIndex:
    attrs = {k: v for k, v in index.attrs.items() if k not in _TILE_ATTRS + _DROPPED_ATTRS}
    attrs.update({f"tile_{k}": index.attrs[k] for k in _TILE_ATTRS if k in index.attrs})
    return RegionIndex(coords=index.coords, tile_valid=index.tile_valid, tissue_fraction=index.tissue_fraction,
                       spec=index.spec, mpp_level0=index.mpp_level0, attrs=attrs)


@torch.no_grad()
def encode_feature_batch(encoder: RegionEncoder, feats: np.ndarray, valid: np.ndarray, *, device: torch.device,
                         dtype: torch.dtype | None) -> tuple[np.ndarray, np.ndarray]:
    """Run the region encoder (eval, no masking) on one batch of regions.

    Args:
        encoder: The region encoder, on ``device`` and in eval mode.
        feats: float32 (B, T, D) tile embeddings.
        valid: bool (B, T) token validity.
        device: Where the encoder runs.
        dtype: Autocast dtype (None = fp32), e.g. ``resolve_amp(precision, device, training=False).dtype``.

    Returns:
        float32 numpy ``(cls (B, W), tokens (B, T, W))``.
    """
    x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)).to(device)
    v = torch.from_numpy(np.ascontiguousarray(valid, dtype=bool)).to(device)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        cls, tokens = encoder.forward_features(x, v)
    return cls.float().cpu().numpy(), tokens.float().cpu().numpy()


def encode_features(encoder: RegionEncoder, features: np.ndarray, valid: np.ndarray, *, batch_size: int = 256,
                    device: torch.device | None = None, dtype: torch.dtype | None = None,
                    slide_id: str = "") -> tuple[np.ndarray, np.ndarray]:
    """In memory: the region embeddings of one slide's tile embeddings (what ``encode_regions`` writes).

    Args:
        encoder: The region encoder (:func:`~mixmag.region.checkpoints.load_region_encoder`).
        features: float (R, T, D) tile embeddings.
        valid: bool (R, T) token validity.
        batch_size: Regions per forward pass.
        device: Where the encoder runs (default: where its parameters are).
        dtype: Autocast dtype (None = fp32).
        slide_id: Named in the error when valid tokens of ``features`` hold NaN/inf.

    Returns:
        float32 ``(cls (R, W), tokens (R, T, W))``.

    Raises:
        FormatError: NaN/inf in a valid token of ``features``.
    """
    if batch_size < 1:
        raise MixmagValueError("batch_size must be >= 1")
    dev = device if device is not None else next(encoder.parameters()).device
    n, t = valid.shape
    check_finite(features, slide_id, np.arange(n), valid)
    cls = np.empty((n, encoder.width), dtype=np.float32)
    tokens = np.empty((n, t, encoder.width), dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        cls[start:stop], tokens[start:stop] = encode_feature_batch(
            encoder, features[start:stop], valid[start:stop], device=dev, dtype=dtype)
    return cls, tokens


def _encode_slide(ff: FeatureFile, path: Path, encoder: RegionEncoder, *, mode: str, batch_size: int,
                  device: torch.device, dtype: torch.dtype | None, attrs: dict[str, Any]) -> int:
    with RegionEmbeddingWriter(path, _output_index(ff.index), mode=mode, width=encoder.width,
                               attrs=attrs) as writer:
        for start in range(0, ff.n_regions, batch_size):
            regions = slice(start, min(start + batch_size, ff.n_regions))
            feats, valid = ff.read(regions)
            check_finite(feats, ff.index.slide_id or ff.path.stem, np.arange(regions.start, regions.stop), valid)
            cls, tokens = encode_feature_batch(encoder, feats, valid, device=device, dtype=dtype)
            writer.write(start, cls=cls, tokens=tokens)
    return ff.n_regions


def encode_regions(
    features: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    mode: str = "cls",
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "fp32",
    resume: bool = True,
    progress: bool = True,
) -> EncodeSummary:
    """Write one region-embedding file per slide of ``features`` into ``out_dir``.

    Args:
        features: Folder of feature files (``mixmag embed`` output) or a list of files.
        checkpoint: Region-encoder checkpoint folder, or a ``mixmag pretrain`` run folder.
        out_dir: Output folder (``<slide_id>.h5`` per slide plus ``manifest.csv``).
        mode: ``"cls"`` (features (R, W)) or ``"tokens"`` (tokens (R, T, W) + flat TRIDENT view).
        batch_size: Regions per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` ...
        precision: ``fp32`` (default: bit-reproducible), ``bf16``, ``fp16`` or ``auto``.
        resume: Skip slides whose output is complete for the same checkpoint, mode and source.
        progress: Show a progress bar over slides.

    Returns:
        An :class:`EncodeSummary`. A failing slide (a feature file that fails its checks, NaN/inf in
        a valid token) is logged, recorded in the manifest as ``error`` with the reason, and the batch
        goes on.

    Raises:
        FormatError: The features do not fit the checkpoint (tile dim or region layout).
        MixmagRuntimeError: Every slide failed (the manifest lists each reason).
    """
    if mode not in MODES:
        raise MixmagValueError(f"unknown mode {mode!r}; use one of {MODES}")
    if batch_size < 1:
        raise MixmagValueError("batch_size must be >= 1")
    dev = resolve_device(device)
    encoder, info = load_region_encoder(checkpoint, map_location=str(dev))
    dtype = resolve_amp(precision, dev, training=False).dtype
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)
    manifest = Manifest(out / "manifest.csv")
    counts = dict.fromkeys(Status, 0)
    files: list[Path] = []
    errors: dict[str, str] = {}
    base_attrs = {
        "checkpoint_hash": info["checkpoint_hash"], "checkpoint_path": info["path"], "objective": info["objective"],
        "checkpoint_step": info["step"], "encoder": f"mixmag-region.{info['objective']}",
        "encoder_config": info["encoder_kwargs"], "training_config": info["config"],
    }
    from tqdm.auto import tqdm

    paths = feature_paths(features)
    for src in tqdm(paths, desc=f"encode ({mode})", unit="slide", disable=not progress):
        t0 = time.perf_counter()
        slide_id = src.stem
        # header checks only: the values are checked as the regions are encoded (no second pass)
        ff, reason = open_feature_file(src, check_values=False)
        if ff is None:
            logger.warning("slide %s skipped: %s", slide_id, reason)
            manifest.update(slide_id, status=Status.ERROR, path=src, error=reason)
            counts[Status.ERROR] += 1
            errors[slide_id] = str(reason)
            continue
        slide_id = ff.index.slide_id or src.stem
        # the checkpoint does not fit this cohort at all: LayoutMismatchError stops with one clear message
        check_layout(info, tile_dim=ff.embed_dim, spec=ff.index.spec, source=str(src))
        dest = out / f"{slide_id}.h5"
        source_hash = quick_file_hash(src)
        attrs = dict(base_attrs, source_feature_file=str(src), source_feature_hash=source_hash,
                     tile_encoder=ff.encoder)
        if resume and is_complete_region_embeddings(dest, {"checkpoint_hash": info["checkpoint_hash"], "mode": mode,
                                                           "source_feature_hash": source_hash}):
            manifest.update(slide_id, status=Status.SKIPPED, path=src, n_items=ff.n_regions, output=dest)
            counts[Status.SKIPPED] += 1
            files.append(dest)
            continue
        try:
            with ff:
                n = _encode_slide(ff, dest, encoder, mode=mode, batch_size=batch_size, device=dev, dtype=dtype,
                                  attrs=attrs)
        except (FormatError, OSError, RuntimeError) as exc:
            logger.warning("slide %s failed: %s", slide_id, exc)
            manifest.update(slide_id, status=Status.ERROR, path=src, error=str(exc), seconds=time.perf_counter() - t0)
            counts[Status.ERROR] += 1
            errors[slide_id] = str(exc)
            continue
        status = Status.OK if n else Status.EMPTY
        manifest.update(slide_id, status=status, path=src, n_items=n, output=dest, seconds=time.perf_counter() - t0)
        counts[status] += 1
        files.append(dest)
    if paths and counts[Status.ERROR] == len(paths):
        first = next(iter(errors.items()))
        raise MixmagRuntimeError(f"every one of the {len(paths)} feature files failed (see {manifest.path}); first: "
                                 f"{first[0]}: {first[1]}")
    return EncodeSummary(out_dir=out, manifest=manifest.path, mode=mode, checkpoint_hash=info["checkpoint_hash"],
                         n_ok=counts[Status.OK], n_skipped=counts[Status.SKIPPED], n_empty=counts[Status.EMPTY],
                         n_error=counts[Status.ERROR], files=files, errors=errors)
