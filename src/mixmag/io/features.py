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

Every reader checks a file once when it opens it: :class:`FeatureFile` refuses a file that is not
HDF5, of another artifact/version, not marked ``complete`` or whose datasets and attrs disagree
(header and shapes only, no feature values read); :func:`feature_file_problem` adds the value check
(NaN/inf among valid tokens, read chunk by chunk) and returns the reason as one line instead of
raising, for the stages that skip and record a bad slide.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from mixmag.geometry import RegionSpec
from mixmag.io.h5common import FormatError, check_format, read_attrs, write_attrs
from mixmag.io.regions import INDEX_DATASETS, RegionIndex, read_index_datasets, write_index_datasets
from mixmag.utils.atomic import atomic_path, atomic_write_text

FEATURE_ARTIFACT = "feature_store"
FEATURE_VERSION = 1
FEATURE_DTYPE = np.float16
#: Regions per read of the value check: (64, T, D) float16 is 3.4 MB at T=21, D=1280.
VALUE_CHECK_REGIONS = 64
_REEMBED = "delete it and rerun `mixmag embed`"
#: Suffixes of a text file listing feature files, one path per line (:func:`read_feature_list`).
FEATURE_LIST_SUFFIXES = (".txt", ".lst", ".csv")


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
                problem = _structure_problem(f)
                if problem is not None:
                    raise FormatError(f"{self.path}: {problem}")
                self.index = read_index_datasets(f, self.path)
                self.attrs = read_attrs(f)
                self.shape: tuple[int, int, int] = tuple(f["tile_features"].shape)  # type: ignore[assignment]
        except OSError as exc:
            raise FormatError(f"{self.path}: not a readable HDF5 file, truncated or not HDF5 ({exc}); "
                              f"{_REEMBED}") from exc
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

    def nonfinite_regions(self, *, chunk_regions: int = VALUE_CHECK_REGIONS) -> np.ndarray:
        """Indices (n,) int64 of regions with a NaN/inf value in a *valid* token's embedding.

        Invalid tokens are not checked: every consumer masks them, whatever they hold. The file is
        read ``chunk_regions`` regions at a time (float16, as stored), so memory stays bounded.
        """
        ds = self._handle()["tile_features"]
        bad: list[np.ndarray] = []
        for start in range(0, self.n_regions, max(int(chunk_regions), 1)):
            block = ds[start : start + chunk_regions]
            bad.append(start + np.flatnonzero(
                (nonfinite_tokens(block) & self.index.tile_valid[start : start + len(block)]).any(axis=1)))
        return np.concatenate(bad) if bad else np.zeros(0, np.int64)

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


def is_feature_list(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a text file listing feature files (``.txt``, ``.lst`` or ``.csv``)."""
    p = Path(path)
    return p.suffix in FEATURE_LIST_SUFFIXES and p.is_file()


def read_feature_list(path: str | os.PathLike[str]) -> list[Path]:
    """Feature-file paths listed in a text file, one per line, in the listed order.

    Blank lines, ``#`` comments and a ``path`` header line are ignored; a relative path is relative
    to the list's folder (as in the region-file lists of ``mixmag embed``). Paths are not checked
    here: a listed file that is missing is recorded as a failed slide by the stage that reads it.
    """
    p = Path(path)
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    return [Path(ln) if Path(ln).is_absolute() else p.parent / ln
            for ln in lines if ln and not ln.startswith("#") and ln != "path"]


def write_feature_list(paths: Iterable[str | os.PathLike[str]], path: str | os.PathLike[str]) -> Path:
    """Write ``paths`` (made absolute) one per line to the list file ``path``, atomically; returns ``path``."""
    atomic_write_text(path, "".join(f"{Path(x).resolve()}\n" for x in paths))
    return Path(path)


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


def nonfinite_tokens(feats: np.ndarray) -> np.ndarray:
    """(n, T) bool: tokens of ``feats`` (n, T, D) whose embedding holds a NaN or inf.

    float16 (the stored dtype) is tested on its bit pattern (exponent all ones), which is several
    times faster than ``np.isfinite`` on float16.
    """
    feats = np.asarray(feats)
    if feats.dtype == np.float16:
        return ((feats.view(np.uint16) & 0x7C00) == 0x7C00).any(axis=-1)
    return ~np.isfinite(feats).all(axis=-1)


def _structure_problem(f: h5py.File) -> str | None:
    """What is wrong with an open feature file's attrs and dataset shapes (no feature value is read).

    The caller has checked ``artifact``/``format_version`` (:func:`~mixmag.io.h5common.check_format`).
    """
    if not bool(f.attrs.get("complete", False)):
        return "incomplete (a killed embedding run?): the `complete` attr is missing or False; rerun `mixmag embed`"
    missing = [d for d in ("tile_features", *INDEX_DATASETS) if d not in f]
    if missing:
        return f"missing dataset(s) {missing}; {_REEMBED}"
    shape = tuple(f["tile_features"].shape)
    if len(shape) != 3:
        return f"tile_features has shape {shape}, expected 3-D (regions, tokens, dim); {_REEMBED}"
    r, t, d = shape
    coords = tuple(f["coords"].shape)
    if coords != (r, 2):
        return f"tile_features has {r} regions but coords has shape {coords} (expected ({r}, 2)); {_REEMBED}"
    attrs = read_attrs(f)
    try:
        spec = RegionSpec.from_dict(attrs["region_spec"])
    except (KeyError, TypeError, ValueError):
        return f"the region_spec attr is missing or unreadable ({attrs.get('region_spec')!r}); {_REEMBED}"
    if t != spec.n_tokens:
        return f"tile_features has {t} tokens per region but its region_spec has {spec.n_tokens}; {_REEMBED}"
    for name in ("tile_valid", "tissue_fraction"):
        found = tuple(f[name].shape)
        if found != (r, t):
            return f"{name} has shape {found} but tile_features has {r} regions x {t} tokens; {_REEMBED}"
    embed_dim = attrs.get("embed_dim")
    if not isinstance(embed_dim, int) or isinstance(embed_dim, bool) or embed_dim != d:
        return f"tile_features has dimension {d} but the embed_dim attr is {embed_dim!r}; {_REEMBED}"
    if not str(attrs.get("encoder") or "").strip():
        return f"no encoder stamp (the `encoder` attr is missing or empty); {_REEMBED}"
    return None


def open_feature_file(path: str | os.PathLike[str], *,
                      check_values: bool = True) -> tuple[FeatureFile | None, str | None]:
    """Open ``path`` after every check of :func:`feature_file_problem`: ``(file, None)`` or ``(None, reason)``.

    For callers that go on to use the file (no second open); close the returned file when done.
    """
    p = Path(path)
    try:
        ff = FeatureFile(p)
    except FormatError as exc:
        return None, str(exc).removeprefix(f"{p}: ")
    if check_values and ff.n_regions:
        try:
            bad = ff.nonfinite_regions()
        except (OSError, RuntimeError) as exc:  # a damaged chunk: h5py/filter errors while reading
            ff.close()
            return None, f"features unreadable ({exc}); {_REEMBED}"
        if bad.size:
            ff.close()
            return None, (f"non-finite (NaN/inf) values in valid tokens of {bad.size} of {ff.n_regions} regions "
                          f"(first: {bad[:5].tolist()}); the file is corrupt: {_REEMBED}")
    return ff, None


def feature_file_problem(path: str | os.PathLike[str], *, check_values: bool = True) -> str | None:
    """Why ``path`` cannot be used as a feature file, in one line; None when it can.

    Checked, in this order: the file exists and is HDF5 (a truncated file is not); ``artifact`` and
    ``format_version``; the ``complete`` attr; ``tile_features`` is 3-D (R, T, D) with R the rows
    of ``coords``, (R, T) the shape of ``tile_valid`` and ``tissue_fraction``, T the token count of
    the ``region_spec`` attr and D the ``embed_dim`` attr; an ``encoder`` stamp (all these are what
    :class:`FeatureFile` refuses); and with ``check_values`` that no valid token holds NaN/inf.

    Args:
        path: A feature file.
        check_values: Also read every feature value, :data:`VALUE_CHECK_REGIONS` regions at a time.
            The header checks read attrs and the small index datasets (~5 ms a file); the value
            check is one more pass over the features (~5-10 ms for 500 regions x 21 tokens x 1280
            dims, 27 MB, from the page cache, about a tenth of reading it for training; from disk,
            the time to read the file).

    Returns:
        The reason (without the path: callers name the slide), or None.
    """
    ff, reason = open_feature_file(path, check_values=check_values)
    if ff is not None:
        ff.close()
    return reason
