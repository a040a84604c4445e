"""Microsoft / Providence Prov-GigaPath tile encoder (ViT-g, DINOv2-trained; CLS token, 1536-d).

Architecture as in the hub config of ``hf_hub:prov-gigapath/prov-gigapath``: timm
``vit_giant_patch14_dinov2`` built at 224 px with 16-px patches and LayerScale 1e-5. The published
transform resizes 256-px tiles to 256 and centre-crops 224; mixmag tiles are already 224 px at
0.5 µm/px, so they go in unresized (the crop would discard 22 % of the tile).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mixmag.encoders.base import EncoderMeta, register_encoder


@register_encoder(EncoderMeta(
    key="prov-gigapath", family="Prov-GigaPath", embed_dim=1536, pooling="cls", native_mpp=0.5,
    license="Prov-GigaPath licence (research use)", gated=True, hf_repo="prov-gigapath/prov-gigapath",
    default_weights="hf-hub:prov-gigapath/prov-gigapath",
    paper="A whole-slide foundation model for digital pathology from real-world data (Nature 2024)",
    citation="Xu et al., Nature 2024",
    weights_note="Gated; tile encoder only (the LongNet slide encoder is not part of this entry).",
))
def gigapath_backbone(**overrides: Any) -> nn.Module:
    """ViT-g (embed 1536, depth 40, 24 heads, SwiGLU) at 224 px with 16-px patches."""
    import timm

    kwargs: dict[str, Any] = dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0)
    kwargs.update(overrides)
    return timm.create_model("vit_giant_patch14_dinov2", pretrained=False, **kwargs)
