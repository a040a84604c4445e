"""Bioptimus H-optimus-0 and H-optimus-1 (ViT-g/14 with 4 registers, DINOv2-style; CLS token).

Model-card recipe: timm ``vit_giant_patch14_reg4_dinov2`` at 224 px with LayerScale 1e-5, no
dynamic image size, and Bioptimus' own normalisation constants (not ImageNet's).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mixmag.encoders.base import EncoderMeta, register_encoder

_BIOPTIMUS: dict[str, Any] = dict(
    family="Bioptimus H-optimus", embed_dim=1536, pooling="cls", input_px=224, native_mpp=0.5,
    mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517),
    citation="Saillard et al., 2024", paper="H-optimus-0 (Bioptimus technical report, 2024)",
)


@register_encoder(EncoderMeta(key="h-optimus-0", license="Apache-2.0", gated=True,
                              hf_repo="bioptimus/H-optimus-0", default_weights="hf-hub:bioptimus/H-optimus-0",
                              weights_note="Apache-2.0 weights behind a Hugging Face access form.", **_BIOPTIMUS))
@register_encoder(EncoderMeta(key="h-optimus-1", license="H-optimus-1 licence (non-commercial)", gated=True,
                              hf_repo="bioptimus/H-optimus-1", default_weights="hf-hub:bioptimus/H-optimus-1",
                              weights_note="Gated; same architecture and normalisation as H-optimus-0.",
                              **_BIOPTIMUS))
def hoptimus_backbone(**overrides: Any) -> nn.Module:
    """ViT-g/14 (embed 1536, depth 40) with 4 registers, SwiGLU, LayerScale 1e-5, 224 px."""
    import timm

    kwargs: dict[str, Any] = dict(img_size=224, init_values=1e-5, num_classes=0, dynamic_img_size=False)
    kwargs.update(overrides)
    return timm.create_model("vit_giant_patch14_reg4_dinov2", pretrained=False, **kwargs)
