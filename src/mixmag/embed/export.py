"""``export_features``: mixmag feature files -> single-magnification TRIDENT/CLAM patch-feature files.

For a chosen magnification (5x, 10x or 20x = exact 2.0, 1.0, 0.5 µm/px) every region contributes its
tiles of that magnification, region after region, row-major inside a region. Only valid tiles
(enough tissue) are exported unless ``all_tiles``. Coordinates are each tile's own level-0 top-left,
so TRIDENT/CLAM heatmap and MIL code sees an ordinary patch grid.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mixmag.errors import MixmagFileNotFoundError, MixmagValueError
from mixmag.geometry import magnification_label, parse_magnification
from mixmag.io.features import FeatureFile, iter_feature_files
from mixmag.io.h5common import FormatError
from mixmag.io.manifest import Manifest, Status
from mixmag.io.regions import trident_coords_attrs
from mixmag.io.trident import EXPORT_FORMATS, PatchFeatures

logger = logging.getLogger(__name__)

# Provenance copied from the feature file onto exported files (readers ignore unknown attrs).
_CARRIED_ATTRS = ("encoder", "embed_dim", "pooling", "weights_source", "weights_hash", "precision",
                  "slide_hash", "slide_path", "mpp_level0", "transform")


@dataclass
class ExportSummary:
    """Outcome of :func:`export_features`.

    Attributes:
        out_dir: Export folder.
        written: Slide ids exported.
        skipped: Slide ids whose export already existed (``overwrite=False``).
        errors: slide_id -> message.
        n_tiles: Rows written over all slides.
    """

    out_dir: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    n_tiles: int = 0


def slide_patch_features(ff: FeatureFile, mpp: float, *, all_tiles: bool = False) -> PatchFeatures:
    """Flatten one magnification of a feature file into (N, D) features + (N, 2) level-0 coords.

    Raises:
        FormatError: ``mpp`` is not one of the file's magnifications.
    """
    spec = ff.index.spec
    slices = spec.token_slices()
    match = [m for m in slices if abs(m - mpp) < 1e-6]
    if not match:
        raise FormatError(f"{ff.path}: no {magnification_label(mpp)} tiles (file has "
                          f"{', '.join(magnification_label(m) for m in spec.mpps)})")
    sl = slices[match[0]]
    feats, valid = ff.read()
    d = ff.embed_dim
    flat = feats[:, sl, :].reshape(-1, d)
    coords = ff.index.tile_coords_level0(match[0])
    keep = np.ones(len(flat), dtype=bool) if all_tiles else valid[:, sl].reshape(-1)
    attrs = ff.attrs
    tile_level0 = round(spec.tile_px * match[0] / ff.index.mpp_level0)
    coords_attrs = trident_coords_attrs(
        patch_size_px=spec.tile_px, mpp_level0=ff.index.mpp_level0, target_mpp=match[0],
        level0_width=int(attrs.get("level0_width", 0)), level0_height=int(attrs.get("level0_height", 0)),
        name=ff.index.slide_id or ff.path.stem, patch_size_level0=tile_level0,
    )
    carried = {k: attrs[k] for k in _CARRIED_ATTRS if k in attrs}
    carried.update(source_feature_file=str(ff.path.resolve()), magnification=magnification_label(match[0]),
                   mpp=match[0], all_tiles=bool(all_tiles), exported_by="mixmag")
    return PatchFeatures(name=ff.path.stem, features=flat[keep], coords=coords[keep],
                         coords_attrs=coords_attrs, attrs=carried)


def _check_magnification(files: list[Path], mpp: float) -> None:
    """Refuse up front a magnification the folder's features do not have (one region geometry per folder).

    Read from the first file that opens; a folder without one is left to the per-slide errors.
    """
    for path in files:
        try:
            with FeatureFile(path) as ff:
                mpps = ff.index.spec.mpps
        except (FormatError, OSError, KeyError):
            continue
        if not any(abs(m - mpp) < 1e-6 for m in mpps):
            raise MixmagValueError(f"--mag {magnification_label(mpp)}: the features in {path.parent} hold "
                                   f"{', '.join(magnification_label(m) for m in mpps)}; choose one of them")
        return


def export_features(
    feature_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    fmt: str = "trident",
    mag: str | float = "20x",
    all_tiles: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> ExportSummary:
    """Export every feature file of ``feature_dir`` at one magnification.

    Args:
        feature_dir: Folder written by :func:`mixmag.embed.embed_slides`.
        out_dir: Export folder (one file per slide, plus ``manifest.csv``).
        fmt: A key of :data:`mixmag.io.trident.EXPORT_FORMATS` ("trident", "clam").
        mag: "20x", "10x", "5x", or an exact resolution ("0.5mpp") / float µm/px.
        all_tiles: Also export tiles flagged invalid (too little tissue).
        overwrite: Rewrite exports that already exist.
        progress: Show a progress bar over slides.

    Raises:
        FileNotFoundError: No feature files in ``feature_dir``.
        KeyError: Unknown format.
    """
    exporter = EXPORT_FORMATS.get(fmt)
    mpp = float(mag) if isinstance(mag, (int, float)) else parse_magnification(mag)
    files = list(iter_feature_files(feature_dir))
    if not files:
        raise MixmagFileNotFoundError(f"no feature files (*.h5) in {feature_dir}; run `mixmag embed` first")
    _check_magnification(files, mpp)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out / "manifest.csv")
    summary = ExportSummary(out_dir=out)
    for path in tqdm(files, desc=f"export {fmt} {magnification_label(mpp)}", unit="slide", disable=not progress):
        name = path.stem
        if not overwrite and exporter.main_path(out, name).exists():
            summary.skipped.append(name)
            continue
        try:
            with FeatureFile(path) as ff:
                item = slide_patch_features(ff, mpp, all_tiles=all_tiles)
            written = exporter.write(item, out)
        except (FormatError, OSError, KeyError) as exc:
            logger.error("export of %s failed: %s", name, exc)
            summary.errors[name] = str(exc)
            manifest.update(name, status=Status.ERROR, path=path, error=str(exc))
            continue
        summary.written.append(name)
        summary.n_tiles += len(item.features)
        manifest.update(name, status=Status.OK if len(item.features) else Status.EMPTY, path=path,
                        n_items=len(item.features), output=written[0])
    return summary
