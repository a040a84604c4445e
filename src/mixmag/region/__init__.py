"""Region-level mixing encoder: model, MEM/CMEM pretraining, and region-embedding export.

Public API (heavy modules are imported lazily on first use)::

    RegionEncoder, build_region_encoder, REGION_ENCODERS      mixmag.region.model
    pretrain_region_encoder, PretrainResult                   mixmag.region.pretrain
    PretrainSettings, RegionSettings                          mixmag.region.settings
    encode_regions, EncodeSummary                             mixmag.region.encode
    OBJECTIVES                                                mixmag.region.objectives
"""

from __future__ import annotations

from mixmag.utils.lazy import lazy_getattr

_LAZY: dict[str, str] = {
    "RegionEncoder": "mixmag.region.model",
    "build_region_encoder": "mixmag.region.model",
    "REGION_ENCODERS": "mixmag.region.model",
    "pretrain_region_encoder": "mixmag.region.pretrain",
    "PretrainResult": "mixmag.region.pretrain",
    "PretrainSettings": "mixmag.region.settings",
    "RegionSettings": "mixmag.region.settings",
    "encode_regions": "mixmag.region.encode",
    "EncodeSummary": "mixmag.region.encode",
    "OBJECTIVES": "mixmag.region.objectives",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
