"""Writers for single-magnification patch-feature files that TRIDENT/CLAM-style tools read.

``trident`` (anchors-formats E1/E2): one ``<slide>.h5`` with

    features  (N, D) float32   one row per tile of the chosen magnification
    coords    (N, 2) int64     tile top-left (x, y), level-0 px; attrs patch_size, patch_size_level0,
                               level0_magnification, target_magnification, overlap, level0_width,
                               level0_height, name, savetodir (+ mpp_level0_exact, target_mpp_exact)
    file attrs: name, savetodir, encoder (+ mixmag provenance)

``clam`` (E4): ``h5_files/<slide>.h5`` with ``features`` float32 and ``coords`` int32, no attrs on
the datasets, plus ``pt_files/<slide>.pt`` (a float32 tensor (N, D)) used by CLAM's training code.

Both are written atomically. Writers are registered in :data:`EXPORT_FORMATS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mixmag.io.h5common import write_attrs
from mixmag.registry import Registry
from mixmag.utils.atomic import atomic_path


@dataclass(frozen=True)
class PatchFeatures:
    """Single-magnification features of one slide, ready to export.

    Attributes:
        name: Slide id (file stem).
        features: (N, D) float embeddings, one per tile.
        coords: (N, 2) int64 tile top-left (x, y) in level-0 pixels.
        coords_attrs: TRIDENT attribute set for ``coords`` (see :func:`mixmag.io.regions.trident_coords_attrs`).
        attrs: File-level provenance (encoder, pooling, weights hash, source file ...).
    """

    name: str
    features: np.ndarray
    coords: np.ndarray
    coords_attrs: dict[str, Any]
    attrs: dict[str, Any]


@dataclass(frozen=True)
class ExportFormat:
    """One export layout.

    Attributes:
        write: ``(item, out_dir) -> written paths`` (atomic).
        main_path: ``(out_dir, name) -> Path`` of the file whose presence means "done".
        description: One line for docs and ``--help``.
    """

    write: Callable[[PatchFeatures, Path], list[Path]]
    main_path: Callable[[Path, str], Path]
    description: str


EXPORT_FORMATS: Registry[ExportFormat] = Registry("export format")


def write_trident(item: PatchFeatures, out_dir: Path) -> list[Path]:
    """Write ``<out_dir>/<name>.h5`` in TRIDENT's patch-feature layout; returns the written paths."""
    path = out_dir / f"{item.name}.h5"
    d = item.features.shape[1] if item.features.ndim == 2 else 0
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        n = len(item.features)
        f.create_dataset("features", data=item.features.astype(np.float32), maxshape=(None, d),
                                 chunks=(1, d) if n and d else None)
        coords = f.create_dataset("coords", data=item.coords.astype(np.int64), maxshape=(None, 2),
                                  chunks=(1, 2) if n else None)
        write_attrs(coords, dict(item.coords_attrs, savetodir=str(out_dir)))
        write_attrs(f, dict(item.attrs, name=item.name, savetodir=str(out_dir)))
    return [path]


def write_clam(item: PatchFeatures, out_dir: Path) -> list[Path]:
    """Write ``h5_files/<name>.h5`` (features + int32 coords, no attrs) and ``pt_files/<name>.pt``."""
    import torch

    h5_path = out_dir / "h5_files" / f"{item.name}.h5"
    pt_path = out_dir / "pt_files" / f"{item.name}.pt"
    with atomic_path(h5_path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=item.features.astype(np.float32))
        f.create_dataset("coords", data=item.coords.astype(np.int32))
    with atomic_path(pt_path) as tmp:
        torch.save(torch.from_numpy(np.ascontiguousarray(item.features, dtype=np.float32)), tmp)
    return [h5_path, pt_path]


EXPORT_FORMATS.add("trident", ExportFormat(
    write=write_trident, main_path=lambda out, name: out / f"{name}.h5",
    description="TRIDENT patch features: <out>/<slide>.h5 with features (N, D) + coords (N, 2) and TRIDENT attrs",
))
EXPORT_FORMATS.add("clam", ExportFormat(
    write=write_clam, main_path=lambda out, name: out / "h5_files" / f"{name}.h5",
    description="CLAM: <out>/h5_files/<slide>.h5 (features, int32 coords) + <out>/pt_files/<slide>.pt",
))
