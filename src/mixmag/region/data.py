"""Streaming training data for region pretraining: cohort scan, target statistics, region stream.

Nothing here loads a cohort into memory. :func:`scan_feature_cohort` opens each feature file once to
validate it and keeps, per slide, only the indices of its usable regions (those with at least one
valid token: 4 bytes per region). A file that fails its checks (not HDF5, incomplete, shapes that
disagree ...) is skipped and listed in :attr:`FeatureCohort.skipped`, never fatal to the others.

Feature *values* are checked where they are read, not at the scan (that would read the whole cohort
once more before the first step): a valid token whose embedding holds NaN/inf is treated as invalid
(zeroed and masked, :func:`mask_nonfinite`) and reported. Masking is a pure function of the file's
contents, so the data stream stays exactly reproducible across resumes, ranks and workers; skipping
the whole slide at that point would change the epoch plan mid-run and break that.

Training batches are read region-chunk by region-chunk from the HDF5 files by
:class:`RegionStream`, an ``IterableDataset`` that can run in several DataLoader worker processes,
each with its own small LRU cache of open files.

The order in which regions are visited is a pure function of ``(seed, epoch)`` (see
:func:`epoch_plan`), computed from region *indices* only. Global step ``s`` consumes positions
``[s * B, (s + 1) * B)`` of the concatenated epochs, and rank ``r`` of ``N`` takes the ``r``-th
slice of ``B / N`` of them. Hence a run resumed at any step, or split over any number of processes
and workers, sees exactly the batches of the uninterrupted single-process run.
"""

from __future__ import annotations

import logging
import math
import os
import resource
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mixmag.errors import MixmagFileNotFoundError, MixmagValueError
from mixmag.geometry import RegionSpec
from mixmag.io.features import (
    FeatureFile,
    is_feature_list,
    iter_feature_files,
    nonfinite_tokens,
    open_feature_file,
    read_feature_list,
)
from mixmag.io.h5common import FormatError
from mixmag.region.masking import make_batch_views
from mixmag.utils.hashing import sha256_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideEntry:
    """One usable slide of the cohort.

    Attributes:
        path: Feature file.
        slide_id: Slide identifier (file stem unless the file says otherwise).
        n_regions: All regions in the file.
        usable: (n,) int32 indices of regions with at least one valid token.
    """

    path: Path
    slide_id: str
    n_regions: int
    usable: np.ndarray


@dataclass(frozen=True)
class FeatureCohort:
    """Validated set of feature files sharing one tile encoder and one region layout.

    Attributes:
        slides: Usable slides, sorted by path.
        tile_dim: Tile embedding dimension D.
        spec: Region layout shared by every slide.
        encoder: Tile-encoder key recorded in the files.
        skipped: ``(slide_id, path, status, reason)`` for files left out: ``error`` (the file failed its
            checks, :func:`~mixmag.io.features.feature_file_problem`) or ``empty`` (no usable region).
    """

    slides: tuple[SlideEntry, ...]
    tile_dim: int
    spec: RegionSpec
    encoder: str
    skipped: tuple[tuple[str, str, str, str], ...] = field(default=())

    @property
    def n_regions(self) -> int:
        """Usable regions over all slides."""
        return int(sum(s.usable.size for s in self.slides))

    def fingerprint(self) -> str:
        """Identity of the cohort for resume checks (slide ids, region counts, D, layout)."""
        text = repr((self.tile_dim, self.spec.to_dict(), [(s.slide_id, s.n_regions, s.usable.size)
                                                           for s in self.slides]))
        return sha256_text(text)[:16]


def feature_paths(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Feature files named by a folder, a single file, a text file listing files or a list of files (sorted).

    A ``.txt``/``.lst``/``.csv`` file lists feature files one per line
    (:func:`~mixmag.io.features.read_feature_list`); listed files that are missing stay in the list
    and are reported as failed slides by the cohort scan.
    """
    if isinstance(sources, (str, os.PathLike)):
        folder = Path(sources)
        if is_feature_list(folder):
            listed = read_feature_list(folder)
            if not listed:
                raise MixmagValueError(f"the feature list {folder} names no feature file (one path per line)")
            return sorted(listed)
        if folder.is_file():
            return [folder]
        if not folder.is_dir():
            raise MixmagFileNotFoundError(f"feature folder {folder} does not exist; run `mixmag embed` first")
        paths = list(iter_feature_files(folder))
        if not paths:
            raise MixmagFileNotFoundError(f"no *.h5 feature files in {folder}; run `mixmag embed` first")
        return paths
    return sorted(Path(p) for p in sources)


def scan_feature_cohort(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> FeatureCohort:
    """Open every feature file once, validate the cohort and index its usable regions.

    Each file gets the header checks of :func:`~mixmag.io.features.feature_file_problem` (attrs and
    shapes; the values are checked as regions are read). A failing file and a slide without usable
    regions are skipped with a warning naming the slide and the reason (and listed in ``skipped``);
    files that disagree with each other (dimension, layout) are an error.

    Args:
        sources: A folder of per-slide feature files, one file, a text file listing files (one per
            line), or a list of files.

    Raises:
        FormatError: Mixed embedding dimensions or region layouts across slides.
        ValueError: No slide has a usable region.
    """
    slides: list[SlideEntry] = []
    skipped: list[tuple[str, str, str, str]] = []
    dims: dict[int, list[str]] = {}
    specs: dict[str, list[str]] = {}
    encoders: set[str] = set()
    spec: RegionSpec | None = None
    for path in feature_paths(sources):
        ff, reason = open_feature_file(path, check_values=False)
        if ff is None:
            logger.warning("skipping slide %s: %s", path.stem, reason)
            skipped.append((path.stem, str(path), "error", str(reason)))
            continue
        slide_id = ff.index.slide_id or path.stem
        dims.setdefault(ff.embed_dim, []).append(slide_id)
        specs.setdefault(repr(ff.index.spec.to_dict()), []).append(slide_id)
        encoders.add(ff.encoder)
        spec = spec or ff.index.spec
        usable = np.flatnonzero(ff.index.tile_valid.any(axis=1)).astype(np.int32)
        if ff.n_regions == 0 or usable.size == 0:
            reason = "no regions" if ff.n_regions == 0 else "every region has only invalid tiles"
            logger.warning("skipping slide %s: %s", slide_id, reason)
            skipped.append((slide_id, str(path), "empty", reason))
            continue
        slides.append(SlideEntry(path=path, slide_id=slide_id, n_regions=ff.n_regions, usable=usable))
    if len(dims) > 1:
        listing = "; ".join(f"D={d}: {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}" for d, ids in dims.items())
        raise FormatError(f"feature files have different embedding dimensions ({listing}); features of "
                          "different tile encoders cannot be mixed: point at one encoder's feature folder")
    if len(specs) > 1:
        listing = "; ".join(f"{s}: {', '.join(ids[:3])}" for s, ids in specs.items())
        raise FormatError(f"feature files use different region layouts ({listing}); re-tile the cohort "
                          "with one region spec")
    if len(encoders) > 1:
        logger.warning("feature files come from several tile encoders %s with the same dimension",
                       sorted(encoders))
    if not slides:
        listing = "; ".join(f"{sid}: {reason}" for sid, _, _, reason in skipped[:3])
        raise MixmagValueError(f"no usable regions in {len(skipped)} feature file(s): every slide is empty or "
                               f"failed its checks ({listing}{' ...' if len(skipped) > 3 else ''}); re-embed "
                               "the broken files or check the tiling/tissue settings")
    assert spec is not None
    return FeatureCohort(slides=tuple(slides), tile_dim=next(iter(dims)), spec=spec,
                         encoder=sorted(encoders)[0], skipped=tuple(skipped))


@dataclass
class TargetMoments:
    """Running per-dimension sums of tile embeddings (float64), mergeable across ranks.

    The one definition of "cohort statistics" in mixmag: pretraining uses it for the MEM targets
    and the encoder's inputs, MIL for the tile standardisation of each fold.
    """

    count: float
    total: np.ndarray
    total_sq: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> TargetMoments:
        """Zero sums for D = ``dim``."""
        return cls(0.0, np.zeros(dim), np.zeros(dim))

    def add(self, rows: np.ndarray) -> None:
        """Accumulate (N, D) embeddings."""
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, self.total.shape[0])
        self.count += rows.shape[0]
        self.total += rows.sum(axis=0)
        self.total_sq += np.square(rows).sum(axis=0)

    def finalize(self, *, min_std: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
        """(mean (D,), std (D,)) float32; constant dimensions get std 1 (they carry no signal)."""
        if self.count < 2:
            raise MixmagValueError("fewer than two embeddings: cannot compute standardisation statistics")
        mean = self.total / self.count
        var = np.maximum(self.total_sq / self.count - mean**2, 0.0)
        std = np.sqrt(var)
        std = np.where(std < min_std, 1.0, std)
        return mean.astype(np.float32), std.astype(np.float32)


def check_finite(feats: np.ndarray, slide_id: str, regions: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Raise :class:`FormatError` naming the slide and regions when ``feats`` (n, T, D) holds NaN/inf.

    With ``valid`` (n, T), only valid tokens count (invalid ones are masked by every consumer).
    """
    bad_tokens = nonfinite_tokens(feats) if valid is None else nonfinite_tokens(feats) & valid
    bad = bad_tokens.any(axis=1)
    if bad.any():
        raise FormatError(f"slide {slide_id}: NaN/inf tile features in regions {regions[bad][:5].tolist()}; "
                          "the feature file is corrupt: delete it and re-run `mixmag embed`")


def mask_nonfinite(feats: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Zero every token of ``feats`` (n, T, D) holding NaN/inf and mark it invalid in ``valid`` (n, T), in place.

    A non-finite *valid* token then neither feeds the encoder nor serves as a MEM target: the
    region is trained on its finite tokens (or, with none left, contributes nothing).

    Returns:
        (n,) bool: regions in which a *valid* token was masked (those to report).
    """
    bad = nonfinite_tokens(feats)
    if not bad.any():
        return np.zeros(len(feats), dtype=bool)
    flagged = (bad & valid).any(axis=1)
    feats[bad] = 0
    valid &= ~bad
    return flagged


def accumulate_target_moments(cohort: FeatureCohort, slide_indices: Sequence[int], *,
                              regions_per_slide: int | None, seed: int,
                              nonfinite: dict[int, set[int]] | None = None) -> TargetMoments:
    """Sum valid-token embeddings of (a sample of) regions of the given slides.

    Valid tokens holding NaN/inf are left out (:func:`mask_nonfinite`), with a warning per slide.

    Args:
        cohort: The scanned cohort.
        slide_indices: Which slides this process reads (ranks split the cohort).
        regions_per_slide: Usable regions sampled per slide (None = all of them).
        seed: Seeds the region sample (one generator per slide, independent of the split).
        nonfinite: When given, receives ``{slide index: {region indices}}`` of the masked regions.
    """
    d = cohort.tile_dim
    moments = TargetMoments.empty(d)
    for i in slide_indices:
        entry = cohort.slides[i]
        regions = entry.usable
        if regions_per_slide is not None and regions.size > regions_per_slide:
            rng = np.random.default_rng([seed, 0x57A7, i])
            regions = np.sort(rng.choice(regions, size=regions_per_slide, replace=False))
        bad: list[int] = []
        with FeatureFile(entry.path) as ff:
            for start in range(0, regions.size, 256):  # bounded memory per read
                chunk = regions[start : start + 256]
                feats, valid = ff.read(chunk)
                bad += chunk[mask_nonfinite(feats, valid)].tolist()
                moments.add(feats[valid])  # (n_valid_tokens, D)
        if bad:
            logger.warning("slide %s: NaN/inf tile features in %d sampled regions (first: %s); those tokens are "
                           "treated as invalid; the file is corrupt: delete it and re-run `mixmag embed`",
                           entry.slide_id, len(bad), bad[:5])
            if nonfinite is not None:
                nonfinite.setdefault(int(i), set()).update(bad)
    return moments


def epoch_plan(cohort: FeatureCohort, epoch: int, *, seed: int, regions_per_slide: int,
               shuffle_buffer: int) -> np.ndarray:
    """Order of (slide, region) pairs visited in one epoch.

    Slides are visited in a random order; from each, ``K = regions_per_slide`` usable regions are
    drawn without replacement (all of them if fewer), so large slides do not dominate. The pairs
    pass through a bounded shuffle buffer: consecutive samples then mix regions of the last
    ~``shuffle_buffer / K`` slides, which keeps reads local to a few open files while decorrelating
    the batches.

    Returns:
        (N, 2) int64 array of (slide index, region index); N = sum over slides of min(K, usable).
    """
    rng = np.random.default_rng([seed, 0xE70C, epoch])
    sizes = np.array([min(regions_per_slide, s.usable.size) for s in cohort.slides])
    total = int(sizes.sum())
    uniform = rng.random(total)  # pre-drawn: one per emitted sample
    out = np.empty((total, 2), dtype=np.int64)
    capacity = max(int(shuffle_buffer), 1)
    buf = np.empty((capacity + int(sizes.max()), 2), dtype=np.int64)
    n = o = 0

    def emit() -> None:
        nonlocal n, o
        j = int(uniform[o] * n)
        out[o] = buf[j]
        buf[j] = buf[n - 1]
        n -= 1
        o += 1

    for s in rng.permutation(len(cohort.slides)):
        k = int(sizes[s])
        buf[n : n + k, 0] = s
        buf[n : n + k, 1] = rng.choice(cohort.slides[s].usable, size=k, replace=False)
        n += k
        while n >= capacity:
            emit()
    while n:
        emit()
    return out


class _OpenSlide:
    """An open feature file with its `tile_features` dataset and (small) validity table at hand."""

    def __init__(self, path: Path) -> None:
        # Each region chunk is read once per epoch, so HDF5's chunk cache would only cost memory:
        # a tiny cache keeps hundreds of open files cheap.
        self.file = h5py.File(path, "r", rdcc_nbytes=64 * 1024)
        self.features = self.file["tile_features"]
        self.valid = self.file["tile_valid"][()]  # (R, T) bool: R*T bytes

    def close(self) -> None:
        self.file.close()


class _OpenFiles:
    """Per-process LRU cache of open feature files (opened lazily, so each worker owns its own).

    Dataset look-ups and validity tables are cached with the handle: h5py's per-call overhead, not
    disk I/O, dominates small reads, and a batch touches up to ``shuffle_buffer / K`` slides.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(int(capacity), 1)
        self._files: OrderedDict[Path, _OpenSlide] = OrderedDict()

    def get(self, path: Path) -> _OpenSlide:
        f = self._files.pop(path, None)
        if f is None:
            f = _OpenSlide(path)
            while len(self._files) >= self.capacity:
                self._files.popitem(last=False)[1].close()
        self._files[path] = f
        return f

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


class RegionStream(IterableDataset):
    """Rank-local training batches for steps ``start_step .. total_steps - 1``.

    Each item is one batch (use ``DataLoader(stream, batch_size=None)``): a dict with ``step``,
    ``index`` (B,) global sample positions, ``x`` (B, T, D) float32 raw FM embeddings, ``valid``
    (B, T) bool, per view ``keep`` / ``mask`` (V, B, T) bool, and ``nonfinite`` (k, 2) int64
    (slide index, region index) of regions whose NaN/inf valid tokens were masked
    (:func:`mask_nonfinite`; usually empty). With W DataLoader workers, worker w
    produces the steps ``s`` with ``s % W == w``; the DataLoader returns them in step order.

    Args:
        cohort: The scanned cohort.
        batch_size: Global batch size B (regions per optimizer step over all ranks).
        rank, world_size: This process's slice of every global batch.
        start_step, total_steps: Step range to produce.
        seed: Run seed (region order and masks).
        n_views, mask_ratio, mag_mask_prob, token_drop_max: View generation (see masking).
        regions_per_slide, shuffle_buffer: Epoch sampling (see :func:`epoch_plan`).
        open_files: Open HDF5 handles kept per worker; None sizes the cache to the number of
            slides the shuffle buffer mixes (see :meth:`auto_open_files`).
    """

    def __init__(self, cohort: FeatureCohort, *, batch_size: int, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, total_steps: int, seed: int, n_views: int, mask_ratio: float,
                 mag_mask_prob: float, token_drop_max: float, regions_per_slide: int,
                 shuffle_buffer: int, open_files: int | None = None) -> None:
        super().__init__()
        if batch_size % world_size:
            raise MixmagValueError(f"batch size {batch_size} must be divisible by the number of processes {world_size}")
        self.cohort = cohort
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.local_batch = batch_size // world_size
        self.start_step, self.total_steps = start_step, total_steps
        self.seed, self.n_views = seed, n_views
        self.view_kwargs = {"mask_ratio": mask_ratio, "mag_mask_prob": mag_mask_prob,
                            "token_drop_max": token_drop_max}
        self.regions_per_slide, self.shuffle_buffer = regions_per_slide, shuffle_buffer
        self.open_files = open_files
        self.mag_index = cohort.spec.layout().mag_index
        self.epoch_size = int(sum(min(regions_per_slide, s.usable.size) for s in cohort.slides))
        self._plans: OrderedDict[int, np.ndarray] = OrderedDict()

    def auto_open_files(self, n_workers: int) -> int:
        """Handle-cache size that covers the slides the shuffle buffer is drawing from.

        With K regions per slide and a buffer of S regions, about ``(S / K) * H_K`` slides (H_K the
        K-th harmonic number) still have regions in the buffer; a cache smaller than that reopens
        files constantly (3-4x slower reads). Capped so that every worker together stays within
        half of the process's open-file limit.
        """
        k = max(self.epoch_size / len(self.cohort.slides), 1.0)
        harmonic = float(np.sum(1.0 / np.arange(1, math.ceil(k) + 1)))
        wanted = math.ceil(self.shuffle_buffer / k * harmonic) + 8
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        budget = (soft_limit if soft_limit > 0 else 1024) // (2 * (n_workers + 1))
        return int(max(min(wanted, budget, 1024), 8))

    def _plan(self, epoch: int) -> np.ndarray:
        if epoch not in self._plans:
            self._plans[epoch] = epoch_plan(self.cohort, epoch, seed=self.seed,
                                            regions_per_slide=self.regions_per_slide,
                                            shuffle_buffer=self.shuffle_buffer)
            while len(self._plans) > 2:  # a batch spans at most two epochs
                self._plans.popitem(last=False)
        return self._plans[epoch]

    def sample_ids(self, positions: np.ndarray) -> np.ndarray:
        """(n, 2) (slide, region) pairs at global stream ``positions`` (n,)."""
        epochs, offsets = np.divmod(positions, self.epoch_size)
        out = np.empty((len(positions), 2), dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._plan(int(e))[offsets[sel]]
        return out

    def _read(self, ids: np.ndarray, files: _OpenFiles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t, d = self.cohort.spec.n_tokens, self.cohort.tile_dim
        x = np.empty((len(ids), t, d), dtype=np.float32)
        valid = np.empty((len(ids), t), dtype=bool)
        nonfinite: list[tuple[int, int]] = []
        for s in np.unique(ids[:, 0]):
            rows = np.flatnonzero(ids[:, 0] == s)
            regions, inverse = np.unique(ids[rows, 1], return_inverse=True)  # h5py needs increasing indices
            entry = self.cohort.slides[int(s)]
            f = files.get(entry.path)
            # a single region (the common case with a well-mixed buffer) takes h5py's fast slice path
            block = f.features[regions[0] : regions[0] + 1] if regions.size == 1 else f.features[regions]
            feats = block.astype(np.float32)
            region_valid = f.valid[regions]  # a copy (fancy indexing): masking leaves the cache intact
            flagged = mask_nonfinite(feats, region_valid)
            nonfinite += [(int(s), int(r)) for r in regions[flagged]]
            x[rows] = feats[inverse]
            valid[rows] = region_valid[inverse]
        return x, valid, np.asarray(nonfinite, dtype=np.int64).reshape(-1, 2)

    def batch(self, step: int, files: _OpenFiles) -> dict[str, Any]:
        """Build this rank's share of global batch ``step``."""
        first = step * self.batch_size + self.rank * self.local_batch
        positions = np.arange(first, first + self.local_batch, dtype=np.int64)
        x, valid, nonfinite = self._read(self.sample_ids(positions), files)
        keep, mask = make_batch_views(valid, self.mag_index, positions, seed=self.seed,
                                      n_views=self.n_views, **self.view_kwargs)
        return {"step": step, "index": torch.from_numpy(positions), "x": torch.from_numpy(x),
                "valid": torch.from_numpy(valid), "keep": torch.from_numpy(keep), "mask": torch.from_numpy(mask),
                "nonfinite": torch.from_numpy(nonfinite)}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        files = _OpenFiles(self.open_files or self.auto_open_files(n_workers))
        try:
            for step in range(self.start_step + wid, self.total_steps, n_workers):
                yield self.batch(step, files)
        finally:
            files.close()
