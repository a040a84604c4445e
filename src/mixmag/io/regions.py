"""Region index: per-slide HDF5 listing the kept regions and their linked 5x/10x/20x tiles.

Format ``region_index`` v1 (documented in ``docs/formats/region-index.md``)::

    coords               (R, 2) int64   region top-left (x, y), level-0 px; TRIDENT attrs on the dataset
    token_mag            (T,)  float32  nominal magnification per token (5, 10, 10, 10, 10, 20 x16)
    token_mpp            (T,)  float64  target µm/px per token
    token_offset_level0  (T, 2) int64   tile top-left relative to region top-left, level-0 px
    token_size_level0    (T,)  int64    tile side, level-0 px (rounded; exact = size_um / mpp_level0)
    tile_valid           (R, T) bool    token's own tile has >= valid_min_tissue tissue
    tissue_fraction      (R, T) float32 tissue fraction of each tile from the thumbnail mask
    attrs: artifact, format_version, slide_id, slide_path, slide_hash, reader, mpp_level0,
           mpp_source, region_spec (JSON), target_mpps, achieved_mpps, read_level, read_downsample,
           region_size_um, region_size_level0 (exact float), region_size_level0_px, tile_px,
           level0_width, level0_height, tissue_params (JSON), mixmag_version, created_at
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mixmag._version import __version__
from mixmag.geometry import MPP_AT_10X, RegionSpec
from mixmag.io.h5common import FormatError, check_format, read_attrs, write_attrs
from mixmag.utils.atomic import atomic_path

REGION_INDEX_ARTIFACT = "region_index"
REGION_INDEX_VERSION = 1
INDEX_DATASETS = ("coords", "token_mag", "token_mpp", "token_offset_level0", "token_size_level0",
                  "tile_valid", "tissue_fraction")


@dataclass
class RegionIndex:
    """In-memory region index of one slide (see module docstring for the field meanings).

    Attributes:
        coords: (R, 2) int64 region top-left (x, y) in level-0 pixels.
        tile_valid: (R, T) bool per-token validity.
        tissue_fraction: (R, T) float32 per-token tissue fraction in [0, 1].
        spec: The region geometry.
        mpp_level0: Slide level-0 resolution, µm/px, as resolved (override, metadata, ...).
        attrs: Provenance attributes (slide_id, slide_path, slide_hash, reader, mpp_source, ...).
    """

    coords: np.ndarray
    tile_valid: np.ndarray
    tissue_fraction: np.ndarray
    spec: RegionSpec
    mpp_level0: float
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.coords = np.asarray(self.coords, dtype=np.int64).reshape(-1, 2)
        t = self.spec.n_tokens
        self.tile_valid = np.asarray(self.tile_valid, dtype=bool).reshape(-1, t)
        self.tissue_fraction = np.asarray(self.tissue_fraction, dtype=np.float32).reshape(-1, t)
        if not (len(self.coords) == len(self.tile_valid) == len(self.tissue_fraction)):
            raise FormatError("coords, tile_valid and tissue_fraction disagree on the number of regions")

    @property
    def n_regions(self) -> int:
        """Number of regions R."""
        return int(self.coords.shape[0])

    @property
    def slide_id(self) -> str:
        """Slide identifier (file stem unless given)."""
        return str(self.attrs.get("slide_id", ""))

    @property
    def region_size_level0(self) -> float:
        """Exact region side in level-0 pixels."""
        return self.spec.region_size_level0(self.mpp_level0)

    def token_offsets_level0(self) -> np.ndarray:
        """(T, 2) int64 tile top-left offsets inside a region, level-0 px."""
        return np.rint(self.spec.layout().offset_um / self.mpp_level0).astype(np.int64)

    def token_sizes_level0(self) -> np.ndarray:
        """(T,) int64 tile sides in level-0 px (rounded)."""
        return np.rint(self.spec.layout().size_um / self.mpp_level0).astype(np.int64)

    def tile_coords_level0(self, mpp: float) -> np.ndarray:
        """(R * n*n, 2) int64 top-left of every tile at ``mpp``, region-major then row-major."""
        sl = self.spec.token_slices()[mpp]
        offs = self.token_offsets_level0()[sl]
        return (self.coords[:, None, :] + offs[None, :, :]).reshape(-1, 2)


def trident_coords_attrs(
    *, patch_size_px: int, mpp_level0: float, target_mpp: float, level0_width: int, level0_height: int,
    name: str, patch_size_level0: int | None = None,
) -> dict[str, Any]:
    """Attributes TRIDENT/CLAM loaders expect on a ``coords`` dataset (anchors-formats E1/E14).

    TRIDENT derives sizes from nominal magnifications; we write nominal values that reproduce the
    exact level-0 size (``patch_size_level0`` is computed from exact mpps) plus the exact mpps.
    """
    if patch_size_level0 is None:
        patch_size_level0 = round(patch_size_px * target_mpp / mpp_level0)
    return {
        "patch_size": int(patch_size_px),
        "patch_size_level0": int(patch_size_level0),
        "level0_magnification": float(MPP_AT_10X / mpp_level0),
        "target_magnification": float(MPP_AT_10X / target_mpp),
        "overlap": 0,
        "level0_width": int(level0_width),
        "level0_height": int(level0_height),
        "name": name,
        "savetodir": "None",
        "mpp_level0_exact": float(mpp_level0),
        "target_mpp_exact": float(target_mpp),
    }


def write_index_datasets(f: h5py.File, index: RegionIndex) -> None:
    """Write the index datasets and attrs of ``index`` into an open file (shared by feature files)."""
    spec = index.spec
    layout = spec.layout()
    attrs = dict(index.attrs)
    coords = f.create_dataset("coords", data=index.coords, dtype=np.int64, maxshape=(None, 2))
    write_attrs(coords, trident_coords_attrs(
        patch_size_px=spec.region_px_at_finest, mpp_level0=index.mpp_level0, target_mpp=spec.finest_mpp,
        level0_width=int(attrs.get("level0_width", 0)), level0_height=int(attrs.get("level0_height", 0)),
        name=index.slide_id, patch_size_level0=round(index.region_size_level0),
    ))
    f.create_dataset("token_mag", data=np.asarray(spec.magnifications, np.float32)[layout.mag_index])
    f.create_dataset("token_mpp", data=layout.mpps)
    f.create_dataset("token_offset_level0", data=index.token_offsets_level0())
    f.create_dataset("token_size_level0", data=index.token_sizes_level0())
    f.create_dataset("tile_valid", data=index.tile_valid, dtype=bool)
    f.create_dataset("tissue_fraction", data=index.tissue_fraction, dtype=np.float32)
    attrs.update({
        "mpp_level0": float(index.mpp_level0),
        "region_spec": spec.to_dict(),
        "target_mpps": list(spec.mpps),
        "region_size_um": float(spec.region_um),
        "region_size_level0": float(index.region_size_level0),
        "region_size_level0_px": int(round(index.region_size_level0)),
        "tile_px": int(spec.tile_px),
        "n_tokens": int(spec.n_tokens),
    })
    attrs.setdefault("mixmag_version", __version__)
    attrs.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_attrs(f, attrs)


def read_index_datasets(f: h5py.File, path: str | Path) -> RegionIndex:
    """Rebuild a :class:`RegionIndex` from an open region-index or feature file."""
    missing = [d for d in INDEX_DATASETS if d not in f]
    if missing:
        raise FormatError(f"{path}: missing datasets {missing}; the file is incomplete or not a mixmag file")
    attrs = read_attrs(f)
    spec = RegionSpec.from_dict(attrs["region_spec"])
    index = RegionIndex(
        coords=f["coords"][()], tile_valid=f["tile_valid"][()], tissue_fraction=f["tissue_fraction"][()],
        spec=spec, mpp_level0=float(attrs["mpp_level0"]), attrs=attrs,
    )
    return index


def write_region_index(path: str | os.PathLike[str], index: RegionIndex) -> Path:
    """Atomically write ``index`` to ``path`` (temp file + rename). Returns the final path."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        write_index_datasets(f, index)
        f.attrs["artifact"] = REGION_INDEX_ARTIFACT
        f.attrs["format_version"] = REGION_INDEX_VERSION
    return Path(path)


def count_region_tiles(path: str | os.PathLike[str]) -> int:
    """Tiles of a region index (regions x tokens per region) from its shape alone; 0 if unreadable.

    For estimates before a run: no tile data is read, and a missing or broken file counts 0 (the
    run itself reports it, with the message of :func:`read_region_index`).
    """
    try:
        with h5py.File(path, "r") as f:
            return int(f["tile_valid"].size)
    except (OSError, KeyError):
        return 0


def read_region_index(path: str | os.PathLike[str]) -> RegionIndex:
    """Read a region index written by :func:`write_region_index` (validates artifact + version)."""
    p = Path(path)
    if not p.exists():
        raise FormatError(f"region index {p} does not exist; run `mixmag tile` first")
    try:
        with h5py.File(p, "r") as f:
            check_format(f, p, REGION_INDEX_ARTIFACT, (REGION_INDEX_VERSION,))
            return read_index_datasets(f, p)
    except OSError as exc:
        raise FormatError(f"{p}: not a readable HDF5 file ({exc}); delete it and re-run `mixmag tile`") from exc
