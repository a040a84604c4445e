"""Feature store: per-slide, per-encoder HDF5 with the embeddings of every region's tiles.

Format ``feature_store`` v1 (documented in ``docs/formats/feature-store.md``): all region-index
datasets and attrs (see :mod:`mixmag.io.regions`) plus::

    tile_features  (R, T, D) float16  FM embedding of each token's tile; chunks (1, T, D) so one
                                      region is one read; rows of invalid tokens are still filled
    attrs: artifact="feature_store", format_version, encoder, embed_dim, weights_source,
           weights_hash ("random" for random init), transform (JSON), pooling, precision,
           source_region_index, complete=True

Files are written region-chunk by region-chunk into a temporary file which is renamed into place
only when complete, so a killed extraction never leaves a file that looks finished.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from mixmag.io.h5common import FormatError, check_format, read_attrs, write_attrs
from mixmag.io.regions import RegionIndex, read_index_datasets, write_index_datasets
from mixmag.utils.atomic import atomic_path

FEATURE_ARTIFACT = "feature_store"
FEATURE_VERSION = 1
FEATURE_DTYPE = np.float16


class FeatureWriter(AbstractContextManager["FeatureWriter"]):
    """Stream ``tile_features`` of one slide into a feature file, atomically.

    Usage::

        with FeatureWriter(path, index, embed_dim=1280, attrs={...}) as w:
            w.write(0, feats_for_regions_0_to_31)   # (n, T, D) float
            ...
        # path now exists, complete; on an exception nothing is left behind

    Args:
        path: Final file path.
        index: Region index of the slide (its datasets and attrs are copied).
        embed_dim: Embedding dimension D.
        attrs: Encoder provenance attrs (encoder, weights_source, weights_hash, transform, pooling, precision).
    """

    def __init__(self, path: str | os.PathLike[str], index: RegionIndex, *, embed_dim: int,
                 attrs: dict[str, Any]) -> None:
        self.path = Path(path)
        self.index = index
        self.embed_dim = int(embed_dim)
        self.attrs = dict(attrs)
        self._written = np.zeros(index.n_regions, dtype=bool)
        self._stack = ExitStack()
        self._file: h5py.File | None = None

    def __enter__(self) -> FeatureWriter:
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._file = self._stack.enter_context(h5py.File(tmp, "w"))
        write_index_datasets(self._file, self.index)
        t = self.index.spec.n_tokens
        self._file.create_dataset(
            "tile_features", shape=(self.index.n_regions, t, self.embed_dim), dtype=FEATURE_DTYPE,
            chunks=(1, t, self.embed_dim) if self.index.n_regions else None,
        )
        return self

    def write(self, start: int, features: np.ndarray) -> None:
        """Store ``features`` (n, T, D) for regions ``start .. start+n-1``.

        Raises:
            FormatError: wrong shape, or non-finite values (NaN/inf would poison every later stage).
        """
        assert self._file is not None, "use FeatureWriter as a context manager"
        feats = np.asarray(features)
        t = self.index.spec.n_tokens
        if feats.ndim != 3 or feats.shape[1:] != (t, self.embed_dim):
            raise FormatError(f"expected features of shape (n, {t}, {self.embed_dim}), got {feats.shape}")
        if not np.isfinite(feats).all():
            raise FormatError(
                f"encoder produced NaN/inf embeddings for regions {start}..{start + len(feats) - 1}; "
                "check the weights and precision (try --precision fp32)"
            )
        f16 = feats.astype(FEATURE_DTYPE)
        if not np.isfinite(f16).all():
            raise FormatError("embeddings overflow float16 (|x| > 65504); the encoder output is not normalised")
        self._file["tile_features"][start : start + len(feats)] = f16
        self._written[start : start + len(feats)] = True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool | None:
        if exc_type is None and self._file is not None:
            if not self._written.all():
                missing = int((~self._written).sum())
                exc = FormatError(f"{missing} regions were never written to {self.path}")
                self._stack.__exit__(type(exc), exc, None)
                raise exc
            attrs = dict(self.attrs, embed_dim=self.embed_dim, complete=True)
            write_attrs(self._file, attrs)
            self._file.attrs["artifact"] = FEATURE_ARTIFACT
            self._file.attrs["format_version"] = FEATURE_VERSION
        return self._stack.__exit__(exc_type, exc, tb)


class FeatureFile:
    """Lazy reader of one feature file; regions are read on demand (one chunk per region).

    Args:
        path: Feature file written by :class:`FeatureWriter`.

    Attributes:
        index: The slide's region index (coords, validity, spec, provenance).
        attrs: All file attributes (encoder provenance included).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FormatError(f"feature file {self.path} does not exist; run `mixmag embed` first")
        try:
            with h5py.File(self.path, "r") as f:
                check_format(f, self.path, FEATURE_ARTIFACT, (FEATURE_VERSION,))
                self.index = read_index_datasets(f, self.path)
                self.attrs = read_attrs(f)
                self.shape: tuple[int, int, int] = tuple(f["tile_features"].shape)  # type: ignore[assignment]
        except OSError as exc:
            raise FormatError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        self._h5: h5py.File | None = None

    @property
    def n_regions(self) -> int:
        """Number of regions R."""
        return self.shape[0]

    @property
    def embed_dim(self) -> int:
        """Tile embedding dimension D."""
        return self.shape[2]

    @property
    def encoder(self) -> str:
        """Registry key of the encoder that produced the features."""
        return str(self.attrs.get("encoder", ""))

    def _handle(self) -> h5py.File:
        # opened lazily and kept open: DataLoader workers each get their own handle after fork
        if self._h5 is None:
            self._h5 = h5py.File(self.path, "r")
        return self._h5

    def read(self, regions: slice | np.ndarray | list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(features (n, T, D) float32, valid (n, T) bool)`` for the selected regions."""
        ds = self._handle()["tile_features"]
        if regions is None:
            regions = slice(None)
        if isinstance(regions, slice):
            feats = ds[regions]
            valid = self.index.tile_valid[regions]
        else:
            idx = np.asarray(regions, dtype=np.int64)
            order = np.argsort(idx)  # h5py fancy indexing needs increasing indices
            sorted_idx = idx[order]
            unique, inverse = np.unique(sorted_idx, return_inverse=True)
            block = ds[unique][inverse]
            feats = np.empty_like(block)
            feats[order] = block
            valid = self.index.tile_valid[idx]
        return feats.astype(np.float32), valid

    def close(self) -> None:
        """Close the underlying HDF5 handle (reopened on the next read)."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __len__(self) -> int:
        return self.n_regions

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:  # picklable for DataLoader workers
        state = dict(self.__dict__)
        state["_h5"] = None
        return state


def iter_feature_files(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Sorted ``*.h5`` feature files in ``folder`` (temporary files of running writers excluded)."""
    yield from sorted(p for p in Path(folder).glob("*.h5") if not p.name.startswith("."))


def is_complete_feature_file(path: str | os.PathLike[str], expected: dict[str, Any] | None = None) -> bool:
    """True when ``path`` is a complete feature file whose attrs match ``expected`` (provenance resume check)."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("artifact") != FEATURE_ARTIFACT or int(f.attrs.get("format_version", -1)) != FEATURE_VERSION:
                return False
            if not bool(f.attrs.get("complete", False)):
                return False
            attrs = read_attrs(f)
    except (OSError, KeyError):
        return False
    return all(attrs.get(k) == v for k, v in (expected or {}).items())
