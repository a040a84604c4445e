"""mixmag: mixed-magnification region aggregation for computational pathology.

Pipeline: whole-slide images -> linked 5x/10x/20x tiles per region (:mod:`mixmag.tiling`) ->
foundation-model tile embeddings (:mod:`mixmag.embed`) -> region-level mixing transformer pretrained
with MEM/CMEM (:mod:`mixmag.region`) -> AB-MIL biomarker prediction and evaluation
(:mod:`mixmag.mil`, :mod:`mixmag.evaluate`) -> heatmaps and a report (:mod:`mixmag.report`).

Heavy sub-packages are imported lazily: ``import mixmag`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from mixmag._version import __version__
from mixmag.tiling.spec import RegionSpec

# public name -> module that defines it (imported on first attribute access)
_LAZY: dict[str, str] = {
    "RegionIndex": "mixmag.io.regions",
    "read_region_index": "mixmag.io.regions",
    "FeatureFile": "mixmag.io.features",
    "PipelineConfig": "mixmag.config",
    "load_config": "mixmag.config",
    "build_encoder": "mixmag.encoders",
    "embed_slides": "mixmag.embed",
    "export_features": "mixmag.embed",
}

__all__ = ["RegionSpec", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mixmag' has no attribute {name!r}")
