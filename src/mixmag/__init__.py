"""mixmag: mixed-magnification region aggregation for computational pathology.

Pipeline: whole-slide images -> linked 5x/10x/20x tiles per region (:mod:`mixmag.tiling`) ->
foundation-model tile embeddings (:mod:`mixmag.embed`) -> region-level mixing transformer pretrained
with MEM/CMEM (:mod:`mixmag.region`) -> AB-MIL biomarker prediction and evaluation
(:mod:`mixmag.mil`, :mod:`mixmag.evaluate`) -> heatmaps and a report (:mod:`mixmag.report`).

Heavy sub-packages are imported lazily: ``import mixmag`` is cheap. Every error mixmag raises for a
person to act on derives from :class:`MixmagError` (see :mod:`mixmag.errors`).
"""

from __future__ import annotations

from mixmag._version import __version__
from mixmag.errors import MixmagError
from mixmag.geometry import RegionSpec
from mixmag.utils.lazy import lazy_getattr

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
    "tile_slides": "mixmag.tiling.tile",
    "open_slide": "mixmag.slides",
    "pretrain_region_encoder": "mixmag.region.pretrain",
    "encode_regions": "mixmag.region.encode",
    "load_region_encoder": "mixmag.region.checkpoints",
    "train_methods": "mixmag.mil.experiment",
    "MILClassifier": "mixmag.mil.estimator",
    "compare_runs": "mixmag.evaluate.compare",
    "run_study": "mixmag.pipeline.study",
    "make_synthetic_cohort": "mixmag.synth.cohort",
}

__all__ = ["MixmagError", "RegionSpec", "__version__", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY)
