"""mixmag: mixed-magnification region aggregation for computational pathology.

The public API a notebook needs (docs/python-api.md)::

    import mixmag as mm
    mm.list_encoders()                                   # the tile-encoder zoo (DataFrame)
    emb = mm.embed_slide("slide.svs", "uni")             # one slide, in memory: features (R, 21, D)
    mm.tile_slides(["slides/"], "run/tiles")             # the stages, folder to folder
    mm.embed_slides("run/tiles", "run/features/uni", encoder="uni")
    mm.pretrain_region_encoder("run/features/uni", "run/pretrain/mem", objective="mem")
    mm.encode_regions("run/features/uni", "run/pretrain/mem", "run/regions")
    mm.train_mil("run/features/uni", "labels.csv", "run/mil", pretrained={"mem": "run/pretrain/mem"})
    mm.compare_runs(["run/mil"], "run/evaluate")
    mm.build_report("run")
    mm.predict("run", ["external/slides"], "run/external")   # apply the models to a new cohort
    mm.run_study("study.yaml")                           # or all of it from one config

Pipeline: whole-slide images -> linked 5x/10x/20x tiles per region (:mod:`mixmag.tiling`) ->
foundation-model tile embeddings (:mod:`mixmag.embed`) -> region-level mixing transformer pretrained
with MEM/CMEM (:mod:`mixmag.region`) -> AB-MIL biomarker prediction and evaluation
(:mod:`mixmag.mil`, :mod:`mixmag.evaluate`) -> heatmaps and a report (:mod:`mixmag.report`).

Every public name but ``__version__`` and :class:`MixmagError` is imported on first access, so
``import mixmag`` loads neither numpy nor torch. Every error mixmag raises for a person to act on
derives from :class:`MixmagError` (see :mod:`mixmag.errors`).
"""

from __future__ import annotations

from mixmag._version import __version__
from mixmag.errors import MixmagError
from mixmag.utils.lazy import lazy_getattr

# public name -> module that defines it (imported on first attribute access)
_LAZY: dict[str, str] = {
    # stages, folder to folder
    "tile_slides": "mixmag.tiling.tile",
    "embed_slides": "mixmag.embed.engine",
    "pretrain_region_encoder": "mixmag.region.pretrain",
    "encode_regions": "mixmag.region.encode",
    "train_mil": "mixmag.api",
    "compare_runs": "mixmag.evaluate.compare",
    "build_report": "mixmag.api",
    "predict": "mixmag.api",
    "run_study": "mixmag.api",
    # discovery and the in-memory path for one slide
    "list_encoders": "mixmag.encoders.catalog",
    "embed_slide": "mixmag.api",
    # types
    "SlideEmbedding": "mixmag.api",
    "RegionSpec": "mixmag.geometry",
    "PipelineConfig": "mixmag.config",
    "StudyResult": "mixmag.pipeline.study",
}

# exactly the names above plus MixmagError and __version__ (tests/test_public_api.py checks it)
__all__ = [
    "MixmagError",
    "PipelineConfig",
    "RegionSpec",
    "SlideEmbedding",
    "StudyResult",
    "__version__",
    "build_report",
    "compare_runs",
    "embed_slide",
    "embed_slides",
    "encode_regions",
    "list_encoders",
    "predict",
    "pretrain_region_encoder",
    "run_study",
    "tile_slides",
    "train_mil",
]


__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__() -> list[str]:
    """The public API only (``dir(mixmag)``, tab completion): exactly :data:`__all__`."""
    return list(__all__)
