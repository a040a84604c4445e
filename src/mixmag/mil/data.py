"""Bags of regions read from a feature store, with a byte-bounded in-memory cache.

Every MIL method starts from the same thing: the regions of a bag's slides, ``(R, T, D)`` tile
embeddings plus the ``(R, T)`` validity mask
(docs/concepts/resolution.md#which-regions-are-kept-which-tokens-are-valid). The method's
instance source (:mod:`mixmag.mil.instances`) then picks what becomes an instance. Caching whole slides once (as
float16, the storage precision, so no information is lost) lets all methods of a comparison share
one read of each file.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixmag.errors import MixmagFileNotFoundError, MixmagValueError
from mixmag.geometry import RegionSpec
from mixmag.io.features import FeatureFile, iter_feature_files, open_feature_file
from mixmag.mil.labels import Bag

logger = logging.getLogger(__name__)

#: Feature-file attrs that say how the features were made (encoder, weights, tiling, slide reading):
#: :attr:`FeatureStore.reference_attrs` keeps these, and each MIL run records them in its config.json.
PROVENANCE_ATTRS: tuple[str, ...] = (
    "encoder", "embed_dim", "pooling", "weights_source", "weights_hash", "precision", "transform",
    "encoder_native_mpp", "region_spec", "tissue_params", "resample", "reader", "mpp_level0")


@dataclass
class BagRegions:
    """All regions of one bag, slides concatenated, on CPU.

    Attributes:
        feats: (R, T, D) tile embeddings (float16 from the store, or float32).
        valid: (R, T) bool, True where the token's tile has tissue.
        coords: (R, 2) int64 region top-left (x, y) in level-0 pixels of its own slide.
        slide_index: (R,) int64 index into ``slide_ids`` of each region's slide.
        slide_ids: The bag's slides.
        spec: Region geometry (token order, magnifications).
    """

    feats: np.ndarray
    valid: np.ndarray
    coords: np.ndarray
    slide_index: np.ndarray
    slide_ids: tuple[str, ...]
    spec: RegionSpec

    @property
    def n_regions(self) -> int:
        """Number of regions R."""
        return int(self.feats.shape[0])

    @classmethod
    def from_array(cls, feats: np.ndarray, valid: np.ndarray | None = None, *,
                   spec: RegionSpec | None = None, slide_id: str = "bag") -> BagRegions:
        """Wrap an in-memory ``(R, T, D)`` array (all tokens valid unless ``valid`` is given)."""
        feats = np.asarray(feats)
        spec = spec or RegionSpec()
        if feats.ndim != 3 or feats.shape[1] != spec.n_tokens:
            raise ValueError(f"expected features of shape (R, {spec.n_tokens}, D), got {feats.shape}")
        r = feats.shape[0]
        valid = np.ones(feats.shape[:2], dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        return cls(feats, valid, np.zeros((r, 2), np.int64), np.zeros(r, np.int64), (slide_id,), spec)


def _some(slide_ids: Sequence[str], show: int = 3) -> str:
    """``'a', 'b', 'c' ... (7 slides)`` for a message."""
    shown = ", ".join(repr(s) for s in slide_ids[:show])
    return f"{shown}{' ...' if len(slide_ids) > show else ''} ({len(slide_ids)} slides)"


class FeatureStore:
    """The feature files of one folder, keyed by slide id (file stem), read through an LRU cache.

    Args:
        folder: Folder of ``<slide_id>.h5`` feature files (one encoder).
        cache_bytes: Upper bound of cached float16 arrays; 0 disables caching.
    """

    def __init__(self, folder: str | os.PathLike[str], *, cache_bytes: int = 4 << 30) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MixmagFileNotFoundError(f"features folder {self.folder} does not exist")
        self.paths: dict[str, Path] = {p.stem: p for p in iter_feature_files(self.folder)}
        if not self.paths:
            raise MixmagFileNotFoundError(f"no feature files (*.h5) in {self.folder}; run `mixmag embed` first")
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._cached = 0
        self.spec: RegionSpec | None = None
        self.tile_dim: int | None = None
        self.encoder: str | None = None
        self.reference_attrs: dict[str, Any] = {}

    def check(self, slide_ids: Iterable[str], *, check_values: bool = True) -> dict[str, str]:
        """Open each slide's file once, check it, and check the files agree on geometry and encoder.

        Each file gets every check of :func:`~mixmag.io.features.feature_file_problem`: readable
        HDF5, format, ``complete``, shapes against ``coords``/``tile_valid``/``region_spec``/``embed_dim``,
        an encoder stamp and, with ``check_values``, no NaN/inf among valid tokens (one pass over the
        features, chunk by chunk). Sets :attr:`spec`, :attr:`tile_dim`, :attr:`encoder` and
        :attr:`reference_attrs` (:meth:`provenance_of`) from the first usable file.

        Returns:
            ``{slide_id: reason}`` for slides whose file is absent ("no feature file"), unusable
            (the one-line reason) or has no regions (the caller decides whether that is an error;
            nothing is dropped here).

        Files that disagree with the majority on region geometry, embedding dimension or encoder
        are unusable too (features of different encoders must never be mixed in one bag or
        comparison); the majority's file sets the reference.

        Raises:
            MixmagValueError: No majority: as many usable files of one kind as of another.
        """
        problems: dict[str, str] = {}
        # (geometry, dim, encoder) -> the slides whose files were made that way, and the first one's provenance
        kinds: dict[tuple[Any, int, str], list[str]] = {}
        provenance: dict[tuple[Any, int, str], dict[str, Any]] = {}
        for sid in sorted(set(slide_ids)):
            path = self.paths.get(sid)
            if path is None:
                problems[sid] = "no feature file"
                continue
            ff, reason = open_feature_file(path, check_values=check_values)
            if ff is None:
                problems[sid] = reason or "unusable feature file"
                continue
            with ff:
                if ff.n_regions == 0:
                    problems[sid] = "feature file has no regions (no tissue found)"
                    continue
                kind = (ff.index.spec, ff.embed_dim, ff.encoder)
                kinds.setdefault(kind, []).append(sid)
                provenance.setdefault(kind, self.provenance_of(ff))
        if not kinds:
            return problems
        ranked = sorted(kinds.items(), key=lambda kv: -len(kv[1]))
        (spec, dim, encoder), members = ranked[0]
        if len(ranked) > 1 and len(ranked[1][1]) == len(members):  # no majority to keep: the user must choose
            (spec2, dim2, enc2), others = ranked[1]
            raise MixmagValueError(
                f"{self.folder}: as many slides have {encoder!r} features of dim {dim} with {spec} "
                f"({_some(members)}) as have {enc2!r} features of dim {dim2} with {spec2} ({_some(others)}); "
                "keep one encoder and one region geometry per features folder")
        self.spec, self.tile_dim, self.encoder = spec, dim, encoder
        self.reference_attrs = provenance[(spec, dim, encoder)]
        for (other_spec, other_dim, other_encoder), odd in ranked[1:]:
            # features of different encoders must never be mixed in one bag or comparison
            differ = [f"{what} {mine!r} where the {len(members)} other slides have {theirs!r}"
                      for what, mine, theirs in (("encoder", other_encoder, encoder), ("dim", other_dim, dim),
                                                 ("region geometry", other_spec, spec)) if mine != theirs]
            for sid in odd:
                problems[sid] = (f"features of {'; '.join(differ)}; re-embed it with the folder's encoder and "
                                 "region geometry")
        return problems

    @staticmethod
    def provenance_of(ff: FeatureFile) -> dict[str, Any]:
        """The :data:`PROVENANCE_ATTRS` that ``ff`` has, as plain JSON values.

        Values are as :class:`~mixmag.io.features.FeatureFile` decodes them: attrs stored as JSON
        text (``region_spec``, ``tissue_params``, ``transform``) are dicts, numpy values are numbers/lists.
        """
        return {k: _plain(ff.attrs[k]) for k in PROVENANCE_ATTRS if k in ff.attrs}

    def slide(self, slide_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(feats (R, T, D) float16, valid (R, T) bool, coords (R, 2) int64)`` of one slide."""
        hit = self._cache.get(slide_id)
        if hit is not None:
            self._cache.move_to_end(slide_id)
            return hit
        with FeatureFile(self.paths[slide_id]) as ff:
            feats, valid = ff.read()
            item = (feats.astype(np.float16), valid, ff.index.coords)
        size = item[0].nbytes
        if size <= self.cache_bytes:
            while self._cached + size > self.cache_bytes and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cached -= old[0].nbytes
            self._cache[slide_id] = item
            self._cached += size
        return item

    def bag(self, bag: Bag) -> BagRegions:
        """Concatenate the regions of ``bag``'s slides."""
        parts = [self.slide(s) for s in bag.slide_ids]
        assert self.spec is not None, "call FeatureStore.check() first"
        return BagRegions(
            feats=np.concatenate([p[0] for p in parts]),
            valid=np.concatenate([p[1] for p in parts]),
            coords=np.concatenate([p[2] for p in parts]),
            slide_index=np.concatenate([np.full(len(p[0]), i, np.int64) for i, p in enumerate(parts)]),
            slide_ids=bag.slide_ids,
            spec=self.spec,
        )


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars/arrays and bytes made plain JSON types (containers recursively)."""
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class BagDataset(Sequence[BagRegions]):
    """Lazy sequence of :class:`BagRegions`, one per :class:`Bag` (what the estimator fits on)."""

    def __init__(self, store: FeatureStore, bags: Sequence[Bag]) -> None:
        self.store = store
        self.bags = list(bags)

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, i: int) -> BagRegions:  # type: ignore[override]
        return self.store.bag(self.bags[i])

    @property
    def labels(self) -> np.ndarray:
        """(n,) class index per bag."""
        return np.asarray([b.label for b in self.bags], dtype=np.int64)
