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

Every endpoint (docs/concepts/endpoints.md) has a mode whose answer is planted the same way
(``endpoint=``, :data:`SYNTHETIC_ENDPOINTS`). Each patient has a *level* in [0, 1], the amount of
the planted structure: the class (binary: 0 or 1), ``c / (C - 1)`` for multi-class (``rare``
plants instead one rare instance type per class, class c > 0 having direction c - 1), or drawn
uniformly for regression and survival. ``rare`` plants ``round(4 · level)`` witness tiles,
``conjunction`` makes ``round(k · level)`` of the ``k`` A-regions carry B as well (the totals of A
and of B stay ``k``: single magnifications still see nothing). Regression targets are
``10 + 80 · level + N(0, 2²)``; survival times are exponential with hazard
``exp(LOG_HAZARD_RATIO · (level - 1/2)) / 24`` (median ~17 time units at level 1/2),
censored by an independent exponential time of mean 48 (about 40 % of the patients censored).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mixmag.errors import MixmagValueError
from mixmag.geometry import RegionSpec
from mixmag.io.features import FeatureWriter
from mixmag.io.regions import RegionIndex
from mixmag.registry import Registry
from mixmag.utils.atomic import atomic_write_text

#: (rng, n_regions, label, spec, directions (K, D), signal, level) -> (feats (R, T, D), valid (R, T));
#: ``label`` is the class index (-1 for a continuous endpoint), ``level`` the planted amount in [0, 1].
TaskFn = Callable[[np.random.Generator, int, int, RegionSpec, np.ndarray, float, float],
                  tuple[np.ndarray, np.ndarray]]
SYNTHETIC_TASKS: Registry[TaskFn] = Registry("synthetic MIL task")
#: Endpoints a synthetic cohort can be written for (its labels.csv columns: ``label``, ``value`` or
#: ``os_time``/``os_event``).
SYNTHETIC_ENDPOINTS = ("classification", "regression", "survival")
#: Most witness tiles the ``rare`` task plants (at level 1 of a continuous endpoint).
MAX_WITNESSES = 4
#: Survival: baseline hazard per time unit (at level 1/2) and the hazard of censoring.
BASE_HAZARD, CENSOR_HAZARD = 1 / 24, 1 / 48
#: Survival: log hazard ratio between level 1 and level 0 (exp(6): about 400-fold hazard; a strong,
#: clearly learnable effect: the C-index of the true level is about 0.85).
LOG_HAZARD_RATIO = 6.0


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
                       directions: np.ndarray, signal: float, level: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Class c > 0 holds 1-2 20x tiles of rare type c - 1 (binary: positives, direction 0); class 0
    none. Continuous endpoints (``label`` -1): ``round(MAX_WITNESSES · level)`` tiles of type 0."""
    feats, valid = _base(rng, n_regions, spec, directions)
    n_witness = int(round(MAX_WITNESSES * level)) if label < 0 else (int(rng.integers(1, 3)) if label else 0)
    if n_witness:
        sl = spec.token_slices()[spec.finest_mpp]
        direction = directions[max(label, 1) - 1]
        for region in rng.choice(n_regions, size=min(n_witness, n_regions), replace=False):
            _plant(feats, valid, int(region), sl, direction, signal, rng)
    return feats, valid


@SYNTHETIC_TASKS.register("conjunction")
def conjunction_task(rng: np.random.Generator, n_regions: int, label: int, spec: RegionSpec,
                     directions: np.ndarray, signal: float, level: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A on the coarse (5x, 10x) tokens, B on the 20x tokens: together in ``round(k · level)`` regions."""
    feats, valid = _base(rng, n_regions, spec, directions)
    fine = spec.token_slices()[spec.finest_mpp]
    coarse = slice(0, fine.start)
    k = max(1, n_regions // 3)
    regions = rng.permutation(n_regions)[: 2 * k]
    # level 1 (positives): k regions with A and B, k plain; level 0 (negatives): k regions with A
    # only, k with B only; in between, m of the A-regions carry B and k - m B-regions lack A
    m = int(round(k * level))
    a_regions = regions[:k]
    b_regions = np.r_[regions[:m], regions[k:2 * k - m]]
    feats[a_regions, coarse] += signal * directions[0]
    feats[b_regions, fine] += signal * directions[1]
    return feats, valid


@dataclass(frozen=True)
class SyntheticCohort:
    """Paths and ground truth of a written synthetic cohort.

    Attributes:
        labels: The rows of ``labels.csv`` (``patient_id, slide_id`` and the target columns).
        levels: The planted level of each patient (index ``patient_id``), in [0, 1].
    """

    features_dir: Path
    labels_csv: Path
    labels: pd.DataFrame
    levels: pd.Series | None = None


def _patient_targets(rng: np.random.Generator, endpoint: str, n_patients: int, n_classes: int,
                     positive_frac: float) -> tuple[np.ndarray, np.ndarray, list[dict[str, object]]]:
    """(class index or -1, level in [0, 1], labels.csv columns) of every patient."""
    if endpoint == "classification" and n_classes == 2:
        n_pos = round(positive_frac * n_patients)
        labels = rng.permutation(np.r_[np.ones(n_pos, int), np.zeros(n_patients - n_pos, int)])
        return labels, labels.astype(np.float64), [{"label": int(v)} for v in labels]
    if endpoint == "classification":
        labels = rng.permutation(np.arange(n_patients) % n_classes)
        return labels, labels / (n_classes - 1), [{"label": int(v)} for v in labels]
    level = rng.random(n_patients)
    if endpoint == "regression":
        value = 10.0 + 80.0 * level + rng.normal(0.0, 2.0, n_patients)
        return np.full(n_patients, -1), level, [{"value": round(float(v), 2)} for v in value]
    if endpoint != "survival":
        raise MixmagValueError(f"unknown synthetic endpoint {endpoint!r}; use one of {', '.join(SYNTHETIC_ENDPOINTS)}")
    hazard = BASE_HAZARD * np.exp(LOG_HAZARD_RATIO * (level - 0.5))
    event_time = rng.exponential(1.0 / hazard)
    censor_time = rng.exponential(1.0 / CENSOR_HAZARD, n_patients)
    time = np.maximum(np.minimum(event_time, censor_time), 0.1).round(1)
    event = (event_time <= censor_time).astype(int)
    return np.full(n_patients, -1), level, [{"os_time": float(t), "os_event": int(e)}
                                            for t, e in zip(time, event, strict=True)]


def write_synthetic_cohort(out_dir: str | os.PathLike[str], *, task: str = "rare", n_patients: int = 40,
                           slides_per_patient: int = 1, regions: tuple[int, int] = (8, 12),
                           tile_dim: int = 16, signal: float = 8.0, positive_frac: float = 0.5,
                           spec: RegionSpec | None = None, seed: int = 0, concept_seed: int | None = None,
                           encoder: str | None = None, endpoint: str = "classification",
                           n_classes: int = 2) -> SyntheticCohort:
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
        endpoint: ``classification`` (``label`` column), ``regression`` (``value``) or ``survival``
            (``os_time``, ``os_event``); see the module docstring for what is planted.
        n_classes: Classes of a classification cohort (> 2: multi-class, balanced; ``positive_frac``
            then unused).

    Returns:
        The cohort (labels table: ``patient_id, slide_id`` and the target columns).
    """
    fn = SYNTHETIC_TASKS.get(task)
    spec = spec or RegionSpec()
    rng = np.random.default_rng(seed)
    n_directions = max(2, n_classes - 1)
    if n_directions > tile_dim:
        raise MixmagValueError(f"{n_classes} classes need tile_dim >= {n_directions}")
    directions = np.linalg.qr(rng.standard_normal((tile_dim, tile_dim)))[0][:n_directions]  # orthonormal rows
    if concept_seed is not None:  # drawn after the line above, so a cohort without it is unchanged
        concept = np.random.default_rng(concept_seed).standard_normal((tile_dim, tile_dim))
        directions = np.linalg.qr(concept)[0][:n_directions]
    out = Path(out_dir)
    feat_dir = out / "features"
    labels, levels, columns = _patient_targets(rng, endpoint, n_patients, n_classes, positive_frac)
    mpp0 = 0.25
    step = round(spec.region_size_level0(mpp0))
    rows = []
    for p, (label, level) in enumerate(zip(labels, levels, strict=True)):
        for s in range(slides_per_patient):
            slide_id = f"P{p:03d}-S{s}"
            r = int(rng.integers(regions[0], regions[1] + 1))
            feats, valid = fn(rng, r, int(label), spec, directions, signal, float(level))
            coords = np.stack([np.arange(r) % 8 * step, np.arange(r) // 8 * step], axis=1)
            index = RegionIndex(coords=coords, tile_valid=valid, tissue_fraction=valid.astype(np.float32),
                                spec=spec, mpp_level0=mpp0,
                                attrs={"slide_id": slide_id, "level0_width": 8 * step,
                                       "level0_height": (r // 8 + 1) * step})
            with FeatureWriter(feat_dir / f"{slide_id}.h5", index, embed_dim=tile_dim,
                               attrs={"encoder": encoder or f"synthetic.{task}", "weights_hash": "synthetic",
                                      "pooling": "synthetic", "precision": "fp16"}) as w:
                w.write(0, feats)
            rows.append({"patient_id": f"P{p:03d}", "slide_id": slide_id, **columns[p]})
    table = pd.DataFrame(rows)
    atomic_write_text(out / "labels.csv", table.to_csv(index=False))
    levels_by_patient = pd.Series(levels, index=[f"P{p:03d}" for p in range(n_patients)], name="level")
    return SyntheticCohort(feat_dir, out / "labels.csv", table, levels_by_patient)
