"""Region-embedding files: per-slide output of ``mixmag encode``, readable by TRIDENT-style loaders.

Format ``region_embeddings`` v1 (documented in ``docs/formats/region-embeddings.md``). Both modes
carry the region index of the source feature file (``token_mag``, ``token_mpp``,
``token_offset_level0``, ``token_size_level0``, ``tile_valid``, ``tissue_fraction``, slide attrs) and::

    mode "cls" (one vector per region)
      features       (R, W) float32      CLS embedding of each region
      coords         (R, 2) int64        region top-left (x, y), level-0 px; TRIDENT attrs
      region_coords  hard link to coords
      valid          (R,) bool           region has at least one valid token

    mode "tokens" (contextualised tokens)
      tokens         (R, T, W) float16   encoder output per token, chunks (1, T, W)
      features       (R*T, W) float16    the same data as a flat TRIDENT-style view (an HDF5 virtual
                                         dataset onto `tokens`: no extra storage), region-major
      coords         (R*T, 2) int64      top-left of each token's own tile, level-0 px
      region_coords  (R, 2) int64        region top-left, level-0 px; TRIDENT attrs
      valid          (R*T,) bool         token's tile holds tissue (filter rows with it)

    attrs: artifact="region_embeddings", format_version, mode, embed_dim (W), n_tokens,
           checkpoint_hash, checkpoint_path, objective, checkpoint_step, encoder_config (JSON),
           training_config (JSON), tile_encoder, source_feature_file, source_feature_hash,
           complete=True, plus the slide attrs of the region index

In ``tokens`` mode the rows of ``coords`` mix tile sizes (a 5x tile is 4x the side of a 20x tile);
its TRIDENT attrs describe the finest magnification, and ``token_size_level0[row % T]`` gives each
row's true size.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from mixmag.errors import MixmagValueError
from mixmag.geometry import RegionSpec
from mixmag.io.h5common import FormatError, check_format, read_attrs, write_attrs
from mixmag.io.regions import RegionIndex, trident_coords_attrs, write_index_datasets
from mixmag.utils.atomic import atomic_path

REGION_EMBEDDINGS_ARTIFACT = "region_embeddings"
REGION_EMBEDDINGS_VERSION = 1
MODES = ("cls", "tokens")


class RegionEmbeddingWriter(AbstractContextManager["RegionEmbeddingWriter"]):
    """Stream one slide's region embeddings into a file, atomically.

    Usage::

        with RegionEmbeddingWriter(path, index, mode="tokens", width=768, attrs={...}) as w:
            w.write(0, cls=cls_batch, tokens=token_batch)   # (n, W), (n, T, W)

    Args:
        path: Final file path.
        index: The slide's region index (from its feature file).
        mode: ``"cls"`` or ``"tokens"``.
        width: Embedding width W.
        attrs: Provenance attrs (checkpoint hash, objective, configs, source file ...).
    """

    def __init__(self, path: str | os.PathLike[str], index: RegionIndex, *, mode: str, width: int,
                 attrs: dict[str, Any]) -> None:
        if mode not in MODES:
            raise MixmagValueError(f"unknown region-embedding mode {mode!r}; use one of {MODES}")
        self.path, self.index, self.mode, self.width = Path(path), index, mode, int(width)
        self.attrs = dict(attrs)
        self._written = np.zeros(index.n_regions, dtype=bool)
        self._stack = ExitStack()
        self._file: h5py.File | None = None

    def __enter__(self) -> RegionEmbeddingWriter:
        tmp = self._stack.enter_context(atomic_path(self.path))
        f = self._file = self._stack.enter_context(h5py.File(tmp, "w"))
        idx = self.index
        r, t, w = idx.n_regions, idx.spec.n_tokens, self.width
        write_index_datasets(f, idx)  # region index incl. `coords` (regions) with TRIDENT attrs
        if self.mode == "cls":
            f["region_coords"] = f["coords"]  # hard link: one dataset, two names
            f.create_dataset("features", shape=(r, w), dtype=np.float32, chunks=(1, w) if r else None)
            f.create_dataset("valid", data=idx.tile_valid.any(axis=1))
            return self
        f.move("coords", "region_coords")
        offsets = idx.token_offsets_level0()  # (T, 2)
        token_coords = (idx.coords[:, None, :] + offsets[None]).reshape(-1, 2)
        coords = f.create_dataset("coords", data=token_coords, dtype=np.int64)
        finest = idx.spec.finest_mpp
        write_attrs(coords, trident_coords_attrs(
            patch_size_px=idx.spec.tile_px, mpp_level0=idx.mpp_level0, target_mpp=finest,
            level0_width=int(idx.attrs.get("level0_width", 0)), level0_height=int(idx.attrs.get("level0_height", 0)),
            name=idx.slide_id))
        coords.attrs["rows"] = "token tiles, region-major; sizes per row in token_size_level0[row % n_tokens]"
        f.create_dataset("tokens", shape=(r, t, w), dtype=np.float16, chunks=(1, t, w) if r else None)
        layout = h5py.VirtualLayout(shape=(r * t, w), dtype=np.float16)
        # one mapping: HDF5 matches selections element-wise in row-major order, i.e. a reshape
        layout[:] = h5py.VirtualSource(".", "tokens", shape=(r, t, w))
        f.create_virtual_dataset("features", layout)
        f.create_dataset("valid", data=idx.tile_valid.reshape(-1))
        return self

    def write(self, start: int, *, cls: np.ndarray | None = None, tokens: np.ndarray | None = None) -> None:
        """Store regions ``start .. start+n-1``: ``cls`` (n, W) in cls mode, ``tokens`` (n, T, W) in tokens mode."""
        assert self._file is not None, "use RegionEmbeddingWriter as a context manager"
        data = cls if self.mode == "cls" else tokens
        name = "features" if self.mode == "cls" else "tokens"
        if data is None:
            raise ValueError(f"mode {self.mode!r} needs the `{'cls' if self.mode == 'cls' else 'tokens'}` array")
        data = np.asarray(data)
        expected = self._file[name].shape[1:]
        if data.shape[1:] != expected:
            raise FormatError(f"expected {name} rows of shape {expected}, got {data.shape[1:]}")
        if not np.isfinite(data).all():
            raise FormatError(f"non-finite region embeddings for regions {start}..{start + len(data) - 1}")
        self._file[name][start : start + len(data)] = data.astype(self._file[name].dtype)
        self._written[start : start + len(data)] = True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool | None:
        if exc_type is None and self._file is not None:
            if not self._written.all():
                err = FormatError(f"{int((~self._written).sum())} regions were never written to {self.path}")
                self._stack.__exit__(type(err), err, None)
                raise err
            write_attrs(self._file, dict(self.attrs, mode=self.mode, embed_dim=self.width,
                                         n_tokens=self.index.spec.n_tokens, complete=True))
            self._file.attrs["artifact"] = REGION_EMBEDDINGS_ARTIFACT
            self._file.attrs["format_version"] = REGION_EMBEDDINGS_VERSION
        return self._stack.__exit__(exc_type, exc, tb)


class RegionEmbeddingFile:
    """Reader of one region-embedding file.

    Attributes:
        attrs: File attributes (provenance).
        mode: ``"cls"`` or ``"tokens"``.
        spec: Region layout.
        region_coords: (R, 2) int64 region top-left, level-0 px.
        tile_valid: (R, T) bool token validity.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FormatError(f"region-embedding file {self.path} does not exist; run `mixmag encode` first")
        try:
            with h5py.File(self.path, "r") as f:
                check_format(f, self.path, REGION_EMBEDDINGS_ARTIFACT, (REGION_EMBEDDINGS_VERSION,))
                self.attrs = read_attrs(f)
                self.region_coords = f["region_coords"][()]
                self.tile_valid = f["tile_valid"][()]
        except OSError as exc:
            raise FormatError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        self.mode = str(self.attrs["mode"])
        self.spec = RegionSpec.from_dict(self.attrs["region_spec"])

    @property
    def n_regions(self) -> int:
        """Number of regions R."""
        return int(self.region_coords.shape[0])

    @property
    def width(self) -> int:
        """Embedding width W."""
        return int(self.attrs["embed_dim"])

    def read(self, regions: slice | np.ndarray | list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and validity of the selected regions (float32).

        Returns:
            cls mode: ``(features (n, W), valid (n,))``; tokens mode: ``(tokens (n, T, W), valid (n, T))``.
        """
        sel: slice | np.ndarray
        if regions is None or isinstance(regions, slice):
            sel = slice(None) if regions is None else regions
        else:
            sel = np.asarray(regions, dtype=np.int64)
        valid = self.tile_valid[sel]
        name = "features" if self.mode == "cls" else "tokens"
        with h5py.File(self.path, "r") as f:
            ds = f[name]
            if isinstance(sel, slice):
                data = ds[sel]
            else:  # h5py needs increasing unique indices
                unique, inverse = np.unique(sel, return_inverse=True)
                data = ds[unique][inverse]
        return data.astype(np.float32), (valid.any(axis=1) if self.mode == "cls" else valid)


def is_complete_region_embeddings(path: str | os.PathLike[str], expected: dict[str, Any] | None = None) -> bool:
    """True when ``path`` is a complete region-embedding file whose attrs match ``expected``."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("artifact") != REGION_EMBEDDINGS_ARTIFACT:
                return False
            if int(f.attrs.get("format_version", -1)) != REGION_EMBEDDINGS_VERSION:
                return False
            attrs = read_attrs(f)
    except (OSError, KeyError):
        return False
    return bool(attrs.get("complete")) and all(attrs.get(k) == v for k, v in (expected or {}).items())
