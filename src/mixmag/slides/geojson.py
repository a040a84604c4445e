"""Export a tissue mask as GeoJSON polygons in level-0 pixel coordinates (QuPath-readable).

One ``Feature`` per connected tissue piece: a ``Polygon`` whose first ring is the outer boundary
and whose further rings are holes. Properties follow QuPath's GeoJSON import
(``objectType: annotation``, ``classification: {name, color}``), so File > Import objects shows
the detected tissue as annotations on the slide.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours

from mixmag.slides.tissue import TissueMask
from mixmag.utils.atomic import atomic_write_text

TISSUE_CLASS = {"name": "Tissue", "color": [0, 170, 0]}


def _ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def tissue_geojson(tissue: TissueMask, *, tolerance_px: float = 0.75) -> dict[str, Any]:
    """GeoJSON ``FeatureCollection`` of the tissue outlines, coordinates in level-0 px (x, y).

    Args:
        tissue: The detected mask and its level-0 mapping.
        tolerance_px: Douglas-Peucker simplification tolerance, in mask pixels.

    Returns:
        A JSON-serialisable dict.
    """
    sx, sy = tissue.scale
    labels, n = ndimage.label(tissue.mask, structure=np.ones((3, 3), dtype=bool))
    features: list[dict[str, Any]] = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        component = np.pad(labels[box] == index, 1)  # padding closes contours touching the border
        rings = []
        for contour in find_contours(component.astype(np.float32), 0.5):
            simplified = approximate_polygon(contour, tolerance=tolerance_px)
            if len(simplified) < 4:
                continue
            # contour (row, col) in padded-crop pixel-centre units -> level-0 (x, y) of pixel edges
            rows = simplified[:, 0] - 1 + box[0].start + 0.5
            cols = simplified[:, 1] - 1 + box[1].start + 0.5
            ring = np.stack([cols / sx, rows / sy], axis=1)
            rings.append(ring)
        if not rings:
            continue
        rings.sort(key=lambda r: abs(_ring_area(r)), reverse=True)  # exterior is the largest ring
        coordinates = [np.round(r, 1).tolist() for r in rings]
        for ring in coordinates:
            if ring[0] != ring[-1]:
                ring.append(ring[0])
        features.append({
            "type": "Feature",
            "id": f"tissue-{index}",
            "geometry": {"type": "Polygon", "coordinates": coordinates},
            "properties": {
                "objectType": "annotation",
                "name": f"Tissue {index}",
                "classification": TISSUE_CLASS,
                "isLocked": False,
                "area_level0_px": float(abs(_ring_area(rings[0])) - sum(abs(_ring_area(r)) for r in rings[1:])),
            },
        })
    return {"type": "FeatureCollection", "features": features}


def write_tissue_geojson(path: str | os.PathLike[str], tissue: TissueMask) -> Path:
    """Atomically write :func:`tissue_geojson` of ``tissue`` to ``path``."""
    # compact separators: indented JSON would put every coordinate on its own line
    atomic_write_text(path, json.dumps(tissue_geojson(tissue), separators=(",", ":")) + "\n")
    return Path(path)
