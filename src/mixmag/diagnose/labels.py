"""Region labels from annotations: which regions of a feature file hold which property.

Two CSV (or TSV) layouts are accepted; the layout is recognised by its columns:

* **boxes** - ``slide_id, x0, y0, x1, y1`` plus property columns: annotation rectangles in level-0
  pixels of the slide's own frame (``x0 < x1``, ``y0 < y1``, x to the right, y down). A region's
  *coverage* of a property is the fraction of its area covered by the boxes whose property is 1.
  Boxes of one slide are assumed not to overlap each other, so areas add up; the sum is clipped to
  [0, 1] in case they do. Every region of a listed slide is labelled (no box = coverage 0).
* **regions** - ``slide_id, x, y`` plus property columns: one row per tiled region, ``(x, y)`` its
  level-0 top-left exactly as in the feature file's ``coords``. The 0/1 value is the coverage.
  Regions without a row are *unlabelled* and left out of every diagnostic.

Property columns are named explicitly, or else are every other column holding only 0/1 values
(empty = unknown, treated as 0 for boxes and as unlabelled for regions); other columns (ids such
as ``patient_id``, text such as ``architecture``) are ignored with a log line. A region *holds* a
property when its coverage is at least ``min_overlap``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mixmag.errors import MixmagFileNotFoundError, MixmagValueError, reading_user_file
from mixmag.io.regions import RegionIndex

logger = logging.getLogger(__name__)

BOX_COLUMNS = ("x0", "y0", "x1", "y1")
REGION_COLUMNS = ("x", "y")
DEFAULT_MIN_OVERLAP = 0.5
_CHUNK = 4096  # regions per vectorised box-intersection block: bounds memory to CHUNK x boxes floats


@dataclass(frozen=True)
class LabelTable:
    """A validated region-labels CSV.

    Attributes:
        kind: ``"boxes"`` or ``"regions"``.
        properties: Property column names, in file order.
        rows: The table (``slide_id`` as str, coordinates as float/int, properties as float 0/1/NaN).
        path: Where it was read from (empty for in-memory tables).
    """

    kind: str
    properties: tuple[str, ...]
    rows: pd.DataFrame
    path: str = ""

    @property
    def slide_ids(self) -> set[str]:
        """Slides with at least one row."""
        return set(self.rows["slide_id"].unique())


@dataclass(frozen=True)
class RegionLabels:
    """Labels of one slide's regions, aligned with its feature file's region order.

    Attributes:
        slide_id: The slide.
        properties: Property names (columns of ``coverage``).
        coverage: (R, P) float fraction of each region covered by the property, in [0, 1];
            NaN where a region is unlabelled.
        min_overlap: Coverage from which a region holds a property.
    """

    slide_id: str
    properties: tuple[str, ...]
    coverage: np.ndarray
    min_overlap: float

    @property
    def labelled(self) -> np.ndarray:
        """(R,) bool: the region has a known value for every property."""
        return ~np.isnan(self.coverage).any(axis=1)

    @property
    def holds(self) -> np.ndarray:
        """(R, P) bool: coverage >= ``min_overlap`` (False for unlabelled regions)."""
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(self.coverage, nan=0.0) >= self.min_overlap


def _is_binary(column: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(column) and column.dropna().isin([0, 1]).all())


def _pick_properties(df: pd.DataFrame, candidates: list[str], wanted: Sequence[str] | None, source: str) -> list[str]:
    """The property columns: ``wanted`` (checked) or every 0/1 column among ``candidates``."""
    if wanted is not None:
        missing = [c for c in wanted if c not in candidates]
        if missing:
            raise MixmagValueError(f"{source}: no property column {', '.join(missing)} (columns: {', '.join(candidates)})")
        bad = [c for c in wanted if not _is_binary(df[c])]
        if bad:
            raise MixmagValueError(f"{source}: property columns must hold 0/1 (empty = unknown); {', '.join(bad)} do not")
        return list(wanted)
    properties = [c for c in candidates if _is_binary(df[c])]
    ignored = [c for c in candidates if c not in properties]
    if ignored:
        logger.info("%s: columns %s are not 0/1 and are not used as properties", source, ", ".join(ignored))
    if not properties:
        raise MixmagValueError(f"{source}: no 0/1 property column besides the id/coordinate columns; add columns "
                               "such as 'ring' or 'atypical' holding 0 or 1")
    return properties


def label_table_from_frame(df: pd.DataFrame, *, properties: Sequence[str] | None = None,
                           source: str = "region labels") -> LabelTable:
    """Validate an in-memory labels table and recognise its layout (see the module docstring).

    Args:
        df: The table.
        properties: Property columns to use (default: every other 0/1 column).
        source: Name used in messages (the file path).
    """
    cols = [str(c).strip() for c in df.columns]
    df = df.set_axis(cols, axis=1)
    if "slide_id" not in cols:
        raise MixmagValueError(f"{source}: needs a 'slide_id' column (columns: {', '.join(cols)})")
    coord_cols: tuple[str, ...]
    if set(BOX_COLUMNS) <= set(cols):
        kind, coord_cols = "boxes", BOX_COLUMNS
    elif set(REGION_COLUMNS) <= set(cols):
        kind, coord_cols = "regions", REGION_COLUMNS
    else:
        raise MixmagValueError(f"{source}: needs box columns {', '.join(BOX_COLUMNS)} or region columns "
                               f"{', '.join(REGION_COLUMNS)} (level-0 px); found {', '.join(cols)}")
    candidates = [c for c in cols if c != "slide_id" and c not in coord_cols]
    properties = _pick_properties(df, candidates, properties, source)
    rows = df[["slide_id", *coord_cols, *properties]].copy()
    rows["slide_id"] = rows["slide_id"].astype(str)
    if rows[list(coord_cols)].isna().any().any():
        raise MixmagValueError(f"{source}: empty coordinates in {int(rows[list(coord_cols)].isna().any(axis=1).sum())} rows")
    rows[list(properties)] = rows[list(properties)].astype(float)
    if kind == "boxes":
        rows[list(coord_cols)] = rows[list(coord_cols)].astype(float)
        flipped = (rows["x1"] <= rows["x0"]) | (rows["y1"] <= rows["y0"])
        if flipped.any():
            raise MixmagValueError(f"{source}: {int(flipped.sum())} boxes have x1 <= x0 or y1 <= y0 (first at row "
                                   f"{int(np.flatnonzero(flipped.to_numpy())[0])}); boxes are x0, y0 (top-left), x1, y1")
    else:
        rows[list(coord_cols)] = rows[list(coord_cols)].astype(np.int64)
    return LabelTable(kind=kind, properties=tuple(properties), rows=rows, path=source)


def read_label_table(path: str | os.PathLike[str], *, properties: Sequence[str] | None = None) -> LabelTable:
    """Read a region-labels CSV or TSV (delimiter sniffed) and recognise its layout.

    Args:
        path: The file.
        properties: Property columns to use (default: every 0/1 column besides ids and coordinates).
    """
    p = Path(path)
    if not p.is_file():
        raise MixmagFileNotFoundError(f"region-labels file {p} does not exist")
    with reading_user_file(p):
        frame = pd.read_csv(p, sep=None, engine="python")
    return label_table_from_frame(frame, properties=properties, source=str(p))


def box_coverage(boxes: np.ndarray, coords: np.ndarray, region_size: float) -> np.ndarray:
    """Fraction of each square region covered by a set of non-overlapping boxes.

    Args:
        boxes: (N, 4) x0, y0, x1, y1 in level-0 px.
        coords: (R, 2) region top-left (x, y) in level-0 px.
        region_size: Region side in level-0 px (exact, may be fractional).

    Returns:
        (R,) float64 in [0, 1]: summed intersection area / region area, clipped.
    """
    out = np.zeros(len(coords), dtype=np.float64)
    if len(boxes) == 0 or len(coords) == 0:
        return out
    b = np.asarray(boxes, dtype=np.float64)
    for start in range(0, len(coords), _CHUNK):
        c = np.asarray(coords[start:start + _CHUNK], dtype=np.float64)
        w = np.minimum(c[:, None, 0] + region_size, b[None, :, 2]) - np.maximum(c[:, None, 0], b[None, :, 0])
        h = np.minimum(c[:, None, 1] + region_size, b[None, :, 3]) - np.maximum(c[:, None, 1], b[None, :, 1])
        area = (np.clip(w, 0, None) * np.clip(h, 0, None)).sum(axis=1)
        out[start:start + len(c)] = area / (region_size * region_size)
    return np.clip(out, 0.0, 1.0)


def label_regions(table: LabelTable, index: RegionIndex, *, slide_id: str | None = None,
                  min_overlap: float = DEFAULT_MIN_OVERLAP) -> RegionLabels | None:
    """Labels of every region of one slide, or None when the table has no row for it.

    Args:
        table: The labels table.
        index: The slide's region index (``FeatureFile(path).index``).
        slide_id: Slide id to look up (default: ``index.slide_id``).
        min_overlap: Coverage from which a region holds a property, in (0, 1].
    """
    if not 0.0 < min_overlap <= 1.0:
        raise MixmagValueError(f"min_overlap must lie in (0, 1], got {min_overlap}")
    sid = slide_id or index.slide_id
    rows = table.rows[table.rows["slide_id"] == sid]
    if rows.empty:
        return None
    props = list(table.properties)
    if table.kind == "boxes":
        boxes = rows[list(BOX_COLUMNS)].to_numpy()
        values = rows[props].fillna(0.0).to_numpy()
        coverage = np.stack([box_coverage(boxes[values[:, k] == 1], index.coords, index.region_size_level0)
                             for k in range(len(props))], axis=1)
    else:
        coverage = np.full((index.n_regions, len(props)), np.nan)
        lookup = {(int(x), int(y)): r for r, (x, y) in enumerate(index.coords)}
        keys = list(zip(rows["x"].tolist(), rows["y"].tolist(), strict=True))
        hit = np.array([k in lookup for k in keys], dtype=bool)
        if not hit.all():
            logger.warning("slide %s: %d labelled regions match no region top-left in the feature file "
                           "(x, y must equal its coords exactly)", sid, int((~hit).sum()))
        region_rows = [lookup[k] for k, h in zip(keys, hit, strict=True) if h]
        coverage[region_rows] = rows.loc[hit, props].to_numpy(dtype=np.float64)
    return RegionLabels(slide_id=sid, properties=tuple(props), coverage=coverage, min_overlap=min_overlap)


def log_unlabelled_slides(table: LabelTable, slide_ids: Iterable[str]) -> list[str]:
    """Log (once) the slides without any label row and the labelled slides without features; return the former."""
    ids = list(slide_ids)
    absent = sorted(set(ids) - table.slide_ids)
    if absent:
        logger.info("%d of %d slides have no row in %s and are skipped: %s%s", len(absent), len(ids),
                    table.path or "the region labels", ", ".join(absent[:5]), " ..." if len(absent) > 5 else "")
    orphans = sorted(table.slide_ids - set(ids))
    if orphans:
        logger.warning("%d slides of %s have no feature file: %s%s", len(orphans), table.path or "the region labels",
                       ", ".join(orphans[:5]), " ..." if len(orphans) > 5 else "")
    return absent
