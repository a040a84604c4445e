"""Gather the probe inputs: labelled regions of a feature folder, their labels and feature sets.

Two passes over the feature files. The first reads only region indices (coords, validity) and
labels every region; the second reads the embeddings of the regions kept and computes every
feature set in batches, so memory holds (N, F) feature matrices and never the (N, T, D) tiles.

When more than ``max_regions`` regions are labelled, a seeded subsample is kept in which regions
holding at least one property make up to half (all of them if they are fewer): rare properties keep
their positives, and AUROC does not depend on the class balance.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixmag.diagnose.featuresets import FEATURE_SETS, available_feature_sets
from mixmag.diagnose.labels import LabelTable, label_regions, log_unlabelled_slides
from mixmag.errors import MixmagValueError
from mixmag.io.features import FeatureFile
from mixmag.region.checkpoints import check_layout, load_region_encoder
from mixmag.region.data import feature_paths
from mixmag.region.model import RegionEncoder

logger = logging.getLogger(__name__)


@dataclass
class ProbeData:
    """Labelled regions with their features, in slide order.

    Attributes:
        properties: Property names (columns of ``holds``).
        holds: (N, P) bool, region holds the property.
        slide_ids: (N,) slide of each region (the CV groups).
        region_rows: (N,) row of each region in its feature file.
        features: ``{feature set: (N, F) float32}``; NaN rows could not be computed.
        skipped: ``{feature set: reason}`` for sets that were not computed.
    """

    properties: tuple[str, ...]
    holds: np.ndarray
    slide_ids: np.ndarray
    region_rows: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def n_regions(self) -> int:
        """Number of labelled regions N."""
        return int(len(self.slide_ids))


def _select(holds_any: np.ndarray, max_regions: int, seed: int) -> np.ndarray:
    """Sorted indices of the kept regions (see the module docstring)."""
    n = len(holds_any)
    if n <= max_regions:
        return np.arange(n)
    rng = np.random.default_rng([seed, 0xD1A9])
    pos, neg = np.flatnonzero(holds_any), np.flatnonzero(~holds_any)
    n_pos = min(len(pos), max_regions // 2)
    n_neg = min(len(neg), max_regions - n_pos)
    n_pos = min(len(pos), max_regions - n_neg)
    return np.sort(np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)]))


def collect_probe_data(
    features: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    table: LabelTable,
    *,
    checkpoints: Mapping[str, str | os.PathLike[str]] | None = None,
    feature_sets: Sequence[str] | None = None,
    min_overlap: float = 0.5,
    max_regions: int = 20000,
    seed: int = 0,
    batch_size: int = 256,
) -> ProbeData:
    """Label the regions of ``features`` and compute their feature sets.

    Args:
        features: Feature folder, one file or a list of files.
        table: Region labels.
        checkpoints: ``{role: checkpoint}`` region encoders; encoder feature sets are named
            ``<set>.<role>`` (e.g. ``region-cls.mem``).
        feature_sets: Registry keys to compute (default: every one available for the layout).
        min_overlap: Coverage from which a region holds a property.
        max_regions: Most labelled regions kept (seeded subsample above it).
        seed: Seeds the subsample.
        batch_size: Regions per batch when computing features.

    Raises:
        ValueError: No feature file has labelled regions.
    """
    paths = feature_paths(features)
    slide_of: list[str] = []
    per_slide: list[tuple[Path, str, np.ndarray, np.ndarray]] = []  # path, slide, rows, holds
    for path in paths:
        index = FeatureFile(path).index
        sid = index.slide_id or path.stem
        slide_of.append(sid)
        labels = label_regions(table, index, slide_id=sid, min_overlap=min_overlap)
        if labels is None:
            continue
        rows = np.flatnonzero(labels.labelled & index.tile_valid.any(axis=1))
        per_slide.append((path, sid, rows, labels.holds[rows]))
    log_unlabelled_slides(table, slide_of)
    if not per_slide or not sum(len(r) for _, _, r, _ in per_slide):
        raise MixmagValueError(f"no labelled region with tissue in {len(paths)} feature files; check that the "
                               "slide_id values and the coordinate frame of the region labels match the features")
    holds = np.concatenate([h for *_, h in per_slide])
    owner = np.concatenate([np.full(len(r), i) for i, (_, _, r, _) in enumerate(per_slide)])
    rows = np.concatenate([r for _, _, r, _ in per_slide])
    keep = _select(np.asarray(holds.any(axis=1)), max_regions, seed)
    if len(keep) < len(holds):
        logger.info("probes: %d of %d labelled regions kept (max_regions)", len(keep), len(holds))
    holds, owner, rows = holds[keep], owner[keep], rows[keep]
    data = ProbeData(properties=table.properties, holds=holds,
                     slide_ids=np.array([per_slide[i][1] for i in owner], dtype=object), region_rows=rows)
    _compute_features(data, [(p, owner == i) for i, (p, *_) in enumerate(per_slide)], checkpoints or {},
                      feature_sets, batch_size)
    return data


def _compute_features(data: ProbeData, slides: list[tuple[Path, np.ndarray]],
                      checkpoints: Mapping[str, str | os.PathLike[str]], wanted: Sequence[str] | None,
                      batch_size: int) -> None:
    """Fill ``data.features`` (and ``data.skipped``) slide by slide, batch by batch."""
    first = FeatureFile(slides[0][0])
    spec = first.index.spec
    keys, skipped = available_feature_sets(spec, with_encoder=bool(checkpoints))
    if wanted is not None:
        for key in wanted:
            FEATURE_SETS.get(key)  # unknown names fail with close matches
        skipped = {k: v for k, v in skipped.items() if k in wanted}
        keys = [k for k in keys if k in wanted]
    data.skipped.update(skipped)
    encoders: dict[str, RegionEncoder] = {}
    for role, ckpt in checkpoints.items():
        encoder, info = load_region_encoder(ckpt)
        check_layout(info, tile_dim=first.embed_dim, spec=spec, source=str(first.path))
        encoders[role] = encoder
    jobs: list[tuple[str, str | None]] = [(k, None) for k in keys if not FEATURE_SETS.meta(k).needs_encoder]
    jobs += [(k, role) for k in keys if FEATURE_SETS.meta(k).needs_encoder for role in encoders]
    chunks: dict[str, list[np.ndarray]] = {_name(k, r): [] for k, r in jobs}
    for path, sel in slides:
        with FeatureFile(path) as ff:
            if ff.index.spec != spec or ff.embed_dim != first.embed_dim:
                raise MixmagValueError(f"{path} has another region layout or embedding size than {first.path}")
            region_rows = data.region_rows[sel]
            for start in range(0, len(region_rows), batch_size):
                x, valid = ff.read(region_rows[start:start + batch_size])
                for key, tag in jobs:
                    fn = FEATURE_SETS.get(key)
                    chunks[_name(key, tag)].append(fn(x, valid, spec, encoders[tag] if tag else None))
    data.features = {name: np.concatenate(parts).astype(np.float32) for name, parts in chunks.items()}


def _name(key: str, role: str | None) -> str:
    return key if role is None else f"{key}.{role}"
