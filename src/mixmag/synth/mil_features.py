"""Synthetic MIL cohorts with a known answer, written as real feature files (tests, docs, benchmarks).

Two tasks (``SYNTHETIC_TASKS``), both Gaussian noise tile embeddings plus planted unit directions:

- ``rare``: a positive bag has 1-2 valid 20x tiles of a rare instance type (a fixed direction);
  AB-MIL over 20x tiles should find it (the classic MIL witness problem).
- ``conjunction``: a region may carry property A (a low-magnification pattern on its 5x and 10x
  tokens) and/or property B (a cellular pattern on its 20x tokens), like "lymphocytes (20x) inside
  tumour (5x context)". Every bag has exactly ``k`` A-regions and ``k`` B-regions, so the tokens
  of each magnification are identically distributed in positives and negatives; only in positives
  do A and B occur *in the same region*. Single-magnification AB-MIL therefore sees no signal at
  all (chance level), while a region encoder that mixes a region's 5x and 20x tokens can.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mixmag.geometry import RegionSpec
from mixmag.io.features import FeatureWriter
from mixmag.io.regions import RegionIndex
from mixmag.registry import Registry
from mixmag.utils.atomic import atomic_write_text

#: (rng, n_regions, label, spec, directions (K, D), signal) -> (feats (R, T, D), valid (R, T))
TaskFn = Callable[[np.random.Generator, int, int, RegionSpec, np.ndarray, float], tuple[np.ndarray, np.ndarray]]
SYNTHETIC_TASKS: Registry[TaskFn] = Registry("synthetic MIL task")


def _base(rng: np.random.Generator, n_regions: int, spec: RegionSpec, directions: np.ndarray,
          invalid_frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Unit-variance Gaussian embeddings and ~10 % invalid tokens (the 5x token always valid)."""
    feats = rng.standard_normal((n_regions, spec.n_tokens, directions.shape[1])).astype(np.float32)
    valid = rng.random((n_regions, spec.n_tokens)) >= invalid_frac
    valid[:, 0] = True  # the coarsest tile decides whether a region is kept at all (docs/concepts/resolution.md#which-regions-are-kept-which-tokens-are-valid)
    return feats, valid


def _plant(feats: np.ndarray, valid: np.ndarray, region: int, sl: slice, direction: np.ndarray,
           signal: float, rng: np.random.Generator) -> None:
    """Add ``signal * direction`` to one valid token of ``region`` within slice ``sl``."""
    slots = np.arange(sl.start, sl.stop)
    choices = slots[valid[region, sl]]
    slot = int(rng.choice(choices if len(choices) else slots))
    valid[region, slot] = True
    feats[region, slot] += signal * direction


@SYNTHETIC_TASKS.register("rare")
def rare_instance_task(rng: np.random.Generator, n_regions: int, label: int, spec: RegionSpec,
                       directions: np.ndarray, signal: float) -> tuple[np.ndarray, np.ndarray]:
    """Positive bags hold 1-2 20x tiles of a rare type (direction 0); negatives none."""
    feats, valid = _base(rng, n_regions, spec, directions)
    if label:
        sl = spec.token_slices()[spec.finest_mpp]
        for region in rng.choice(n_regions, size=min(int(rng.integers(1, 3)), n_regions), replace=False):
            _plant(feats, valid, int(region), sl, directions[0], signal, rng)
    return feats, valid


@SYNTHETIC_TASKS.register("conjunction")
def conjunction_task(rng: np.random.Generator, n_regions: int, label: int, spec: RegionSpec,
                     directions: np.ndarray, signal: float) -> tuple[np.ndarray, np.ndarray]:
    """A on the coarse (5x, 10x) tokens, B on the 20x tokens: in the same regions only in positives."""
    feats, valid = _base(rng, n_regions, spec, directions)
    fine = spec.token_slices()[spec.finest_mpp]
    coarse = slice(0, fine.start)
    k = max(1, n_regions // 3)
    regions = rng.permutation(n_regions)[: 2 * k]
    # positives: k regions with A and B, k plain; negatives: k regions with A only, k with B only
    a_regions = regions[:k]
    b_regions = regions[:k] if label else regions[k:]
    feats[a_regions, coarse] += signal * directions[0]
    feats[b_regions, fine] += signal * directions[1]
    return feats, valid


@dataclass(frozen=True)
class SyntheticCohort:
    """Paths and ground truth of a written synthetic cohort."""

    features_dir: Path
    labels_csv: Path
    labels: pd.DataFrame


def write_synthetic_cohort(out_dir: str | os.PathLike[str], *, task: str = "rare", n_patients: int = 40,
                           slides_per_patient: int = 1, regions: tuple[int, int] = (8, 12),
                           tile_dim: int = 16, signal: float = 8.0, positive_frac: float = 0.5,
                           spec: RegionSpec | None = None, seed: int = 0, concept_seed: int | None = None,
                           encoder: str | None = None) -> SyntheticCohort:
    """Write feature files ``<out>/features/<slide>.h5`` and ``<out>/labels.csv``.

    Args:
        out_dir: Output folder.
        task: Key of ``SYNTHETIC_TASKS``.
        n_patients: Number of patients (label 1 for ``round(positive_frac * n)`` of them).
        slides_per_patient: Slides per patient (all carry the patient's label).
        regions: Inclusive range of regions per slide.
        tile_dim: Embedding dimension D.
        signal: Length of the planted directions (noise has unit variance per dimension).
        positive_frac: Fraction of positive patients.
        spec: Region geometry (default 5x/10x/20x, 21 tokens).
        seed: Seed of everything.
        concept_seed: Seed of the planted directions alone (the "biology"); two cohorts with one
            ``concept_seed`` and different ``seed`` are two hospitals with the same signal (external
            validation). None: drawn from ``seed``.
        encoder: Encoder name stamped in the files (default ``synthetic.<task>``).

    Returns:
        The cohort (labels table: ``patient_id, slide_id, label``).
    """
    fn = SYNTHETIC_TASKS.get(task)
    spec = spec or RegionSpec()
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.standard_normal((tile_dim, tile_dim)))[0][:2]  # orthonormal rows
    if concept_seed is not None:  # drawn after the line above, so a cohort without it is unchanged
        concept = np.random.default_rng(concept_seed).standard_normal((tile_dim, tile_dim))
        directions = np.linalg.qr(concept)[0][:2]
    out = Path(out_dir)
    feat_dir = out / "features"
    n_pos = round(positive_frac * n_patients)
    labels = rng.permutation(np.r_[np.ones(n_pos, int), np.zeros(n_patients - n_pos, int)])
    mpp0 = 0.25
    step = round(spec.region_size_level0(mpp0))
    rows = []
    for p, label in enumerate(labels):
        for s in range(slides_per_patient):
            slide_id = f"P{p:03d}-S{s}"
            r = int(rng.integers(regions[0], regions[1] + 1))
            feats, valid = fn(rng, r, int(label), spec, directions, signal)
            coords = np.stack([np.arange(r) % 8 * step, np.arange(r) // 8 * step], axis=1)
            index = RegionIndex(coords=coords, tile_valid=valid, tissue_fraction=valid.astype(np.float32),
                                spec=spec, mpp_level0=mpp0,
                                attrs={"slide_id": slide_id, "level0_width": 8 * step,
                                       "level0_height": (r // 8 + 1) * step})
            with FeatureWriter(feat_dir / f"{slide_id}.h5", index, embed_dim=tile_dim,
                               attrs={"encoder": encoder or f"synthetic.{task}", "weights_hash": "synthetic",
                                      "pooling": "synthetic", "precision": "fp16"}) as w:
                w.write(0, feats)
            rows.append({"patient_id": f"P{p:03d}", "slide_id": slide_id, "label": int(label)})
    table = pd.DataFrame(rows)
    atomic_write_text(out / "labels.csv", table.to_csv(index=False))
    return SyntheticCohort(feat_dir, out / "labels.csv", table)
