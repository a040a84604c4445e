"""Region-level mixing encoder: model, MEM/CMEM pretraining, and region-embedding export.

Public API (heavy modules are imported lazily on first use)::

    RegionEncoder, build_region_encoder, REGION_ENCODERS      mixmag.region.model
    pretrain_region_encoder, PretrainResult                   mixmag.region.pretrain
    PretrainSettings                                          mixmag.region.settings
    encode_regions, EncodeSummary                             mixmag.region.encode
    OBJECTIVES                                                mixmag.region.objectives
    write_synthetic_feature_cohort, SyntheticFeatureModel     mixmag.region.synthetic
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "RegionEncoder": "mixmag.region.model",
    "build_region_encoder": "mixmag.region.model",
    "REGION_ENCODERS": "mixmag.region.model",
    "pretrain_region_encoder": "mixmag.region.pretrain",
    "PretrainResult": "mixmag.region.pretrain",
    "PretrainSettings": "mixmag.region.settings",
    "encode_regions": "mixmag.region.encode",
    "EncodeSummary": "mixmag.region.encode",
    "OBJECTIVES": "mixmag.region.objectives",
    "write_synthetic_feature_cohort": "mixmag.region.synthetic",
    "SyntheticFeatureModel": "mixmag.region.synthetic",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mixmag.region' has no attribute {name!r}")
