"""Single-tile ceiling: how well could a model that scores *single tiles* of one magnification do?

AB-MIL over 20x tiles (``abmil-20x``) pools per-tile scores over a whole slide: it cannot combine
the tiles of one region before scoring them. The region feature sets of the probes average the
tiles of a region first, which can recover an arrangement that no single tile shows (all sixteen
20x tiles of a region showing runs of nests at one angle). This module gives the number that
matches the single-magnification baseline instead: the slide ceiling of
:mod:`mixmag.diagnose.ceiling` computed over **individual tiles**, each labelled by the boxes that
cover it, and slides scored by their best tile (``max``) and best three tiles (``top3``).

Tiles are subsampled at one rate for every slide (never by label: a label-dependent subsample
would change how many chances a negative slide has to hold a high-scoring tile). A label table of
region rows (not boxes) gives every tile its region's label.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mixmag.diagnose.ceiling import CEILING_COLUMNS, run_ceiling
from mixmag.diagnose.labels import BOX_COLUMNS, LabelTable, box_coverage, label_regions
from mixmag.errors import MixmagValueError
from mixmag.geometry import RegionSpec, magnification_label
from mixmag.io.features import FeatureFile
from mixmag.io.regions import RegionIndex
from mixmag.region.data import feature_paths

logger = logging.getLogger(__name__)

DEFAULT_MAX_TILES = 12000


def single_tile_feature_set(mpp: float, children_mpp: float | None = None) -> str:
    """Name of the single-tile rows in ``ceiling.csv``: ``single-tiles-20x``, or
    ``single-tiles-10x+20x`` for 10x tiles with the mean of their 20x children."""
    name = f"single-tiles-{magnification_label(mpp)}"
    return name if children_mpp is None else f"{name}+{magnification_label(children_mpp)}"


@functools.lru_cache(maxsize=16)
def _children(spec: RegionSpec, mpp: float) -> dict[int, np.ndarray]:
    """``{token of mpp: tokens of the finest magnification inside its tile}``."""
    layout = spec.layout()
    fine = np.flatnonzero(np.isclose(layout.mpps, spec.finest_mpp))
    factor = spec.tiles_per_side(spec.finest_mpp) // spec.tiles_per_side(mpp)
    return {int(t): fine[np.all(layout.grid_rc[fine] // factor == layout.grid_rc[t], axis=1)]
            for t in np.flatnonzero(np.isclose(layout.mpps, mpp))}


def _tile_labels(table: LabelTable, index: RegionIndex, slide_id: str, tokens: np.ndarray,
                 min_overlap: float) -> np.ndarray | None:
    """(R, t, P) bool: tile ``tokens[j]`` of region ``r`` holds property ``p`` (None: slide unlabelled)."""
    spec, props = index.spec, list(table.properties)
    rows = table.rows[table.rows["slide_id"] == slide_id]
    if rows.empty:
        return None
    if table.kind != "boxes":  # region rows: every tile inherits its region's label
        labels = label_regions(table, index, slide_id=slide_id, min_overlap=min_overlap)
        assert labels is not None
        holds = labels.holds & labels.labelled[:, None]
        return np.repeat(holds[:, None, :], len(tokens), axis=1)
    layout = spec.layout()
    scale = index.region_size_level0 / spec.region_um  # level-0 px per µm
    boxes = rows[list(BOX_COLUMNS)].to_numpy()
    values = rows[props].fillna(0.0).to_numpy()
    out = np.zeros((index.n_regions, len(tokens), len(props)), dtype=bool)
    for j, t in enumerate(tokens):
        coords = index.coords + layout.offset_um[t] * scale
        size = float(layout.size_um[t] * scale)
        for k in range(len(props)):
            out[:, j, k] = box_coverage(boxes[values[:, k] == 1], coords, size) >= min_overlap
    return out


def collect_tile_data(
    features: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], table: LabelTable, *, mpp: float,
    min_overlap: float = 0.5, max_tiles: int = DEFAULT_MAX_TILES, seed: int = 0, with_children: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings and labels of the valid tiles of one magnification on labelled slides.

    Args:
        features: Feature folder, one file or a list of files.
        table: Region labels (boxes, or region rows).
        mpp: Target resolution of the tiles (e.g. 0.5 for 20x); must be one of the layout's.
        min_overlap: Coverage of a tile from which it holds a property.
        max_tiles: Most tiles kept, by one uniform rate for every slide.
        seed: Seeds the subsample.
        with_children: Append to each tile the mean embedding of the valid finest-magnification
            tiles inside it (a 10x tile and its four 20x tiles: does the finer scale, *at the same
            place*, add to the coarser one?). Tiles without a valid child are left out.

    Returns:
        ``(x (N, D) float32, or (N, 2D) with children, holds (N, P) bool, slide_ids (N,))``.

    Raises:
        ValueError: No labelled slide, or the layout has no tiles at ``mpp``.
    """
    paths = feature_paths(features)
    found: list[tuple[FeatureFile, str, np.ndarray, np.ndarray, np.ndarray]] = []  # file, slide, rows, tokens, holds
    total = 0
    for path in paths:
        ff = FeatureFile(path)
        index = ff.index
        spec = index.spec
        hit = [i for i, m in enumerate(spec.mpps) if np.isclose(m, mpp)]
        if not hit:
            raise MixmagValueError(f"{path}: the region layout has no tiles at {mpp:g} µm/px (it has {spec.mpps})")
        tokens = np.flatnonzero(spec.layout().mag_index == hit[0])
        sid = index.slide_id or path.stem
        holds = _tile_labels(table, index, sid, tokens, min_overlap)
        if holds is None:
            continue
        valid = index.tile_valid[:, tokens]  # (R, t)
        if with_children:
            kids = _children(spec, mpp)
            valid = valid & np.stack([index.tile_valid[:, kids[int(t)]].any(axis=1) for t in tokens], axis=1)
        r, j = np.nonzero(valid)
        found.append((ff, sid, r, tokens[j], holds[r, j]))
        total += len(r)
    if not total:
        raise MixmagValueError(f"no labelled tile in {len(paths)} feature files; check slide ids and coordinates")
    rate = min(1.0, max_tiles / total)
    rng = np.random.default_rng([seed, 0x711E])
    xs, hs, ids = [], [], []
    for ff, sid, r, t, h in found:
        keep = np.flatnonzero(rng.random(len(r)) < rate) if rate < 1.0 else np.arange(len(r))
        if not len(keep):
            continue
        rows = np.unique(r[keep])
        with ff:
            x, v = ff.read(rows)  # (len(rows), T, D)
        pos, tok = np.searchsorted(rows, r[keep]), t[keep]
        feat = x[pos, tok]
        if with_children:
            kids = _children(ff.index.spec, mpp)
            child = np.stack([kids[int(k)] for k in tok])  # (n, c) token ids
            w = v[pos[:, None], child].astype(np.float32)  # (n, c)
            mean = np.einsum("nc,ncd->nd", w, x[pos[:, None], child]) / w.sum(axis=1, keepdims=True)
            feat = np.concatenate([feat, mean], axis=1)
        xs.append(feat.astype(np.float32))
        hs.append(h[keep])
        ids.append(np.full(len(keep), sid, dtype=object))
    if rate < 1.0:
        logger.info("single-tile ceiling: %d of %d tiles at %g µm/px kept (max_tiles)",
                    sum(len(h) for h in hs), total, mpp)
    return np.concatenate(xs), np.concatenate(hs), np.concatenate(ids)


def run_tile_ceiling(
    features: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], table: LabelTable, *,
    mpps: Sequence[float] | None = None, slide_labels: Mapping[str, int] | None = None, min_overlap: float = 0.5,
    max_tiles: int = DEFAULT_MAX_TILES, seed: int = 0,
) -> pd.DataFrame:
    """Slide ceiling of the linear probe over single tiles, one block of rows per magnification.

    Every magnification coarser than the finest gets a second block, its tiles with the mean of
    their finest-magnification children (``single-tiles-10x+20x``).

    Args:
        features: Feature folder, one file or a list of files.
        table: Region labels.
        mpps: Tile resolutions to evaluate (e.g. ``[1.0, 0.5]`` for 10x and 20x); default every
            magnification with more than one tile per region (a single tile is the region).
        slide_labels: ``{slide_id: 0/1}``; default "any tile holds the property".
        min_overlap: Coverage of a tile from which it holds a property.
        max_tiles: Most tiles per magnification.
        seed: Seeds the subsample and the probes.

    Returns:
        Rows in the format of :func:`~mixmag.diagnose.ceiling.run_ceiling`, feature sets named by
        :func:`single_tile_feature_set`.
    """
    spec = FeatureFile(feature_paths(features)[0]).index.spec
    finest = spec.finest_mpp
    if mpps is None:
        mpps = [m for m in spec.mpps if spec.tiles_per_side(m) > 1]
    parts = []
    for mpp in mpps:
        for children in (False, True) if mpp > finest else (False,):
            x, holds, ids = collect_tile_data(features, table, mpp=mpp, min_overlap=min_overlap,
                                              max_tiles=max_tiles, seed=seed, with_children=children)
            name = single_tile_feature_set(mpp, finest if children else None)
            parts.append(run_ceiling({name: x}, holds, table.properties, ids, slide_labels=slide_labels,
                                     seed=seed))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(CEILING_COLUMNS))
