"""Mahmood Lab UNI and UNI2-h (timm ViTs; CLS token embeddings).

Recipes from the model cards (hf-hub:MahmoodLab/UNI, hf-hub:MahmoodLab/UNI2-h). CONCH v1.5 is not
registered: its vision tower needs the attentional-pooler code shipped with TITAN
(``trust_remote_code``), which cannot be reproduced faithfully offline from the card alone.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mixmag.encoders.base import EncoderMeta, register_encoder

_LAB: dict[str, Any] = dict(family="Mahmood Lab UNI", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), native_mpp=0.5,
            license="CC-BY-NC-ND-4.0", gated=True, citation="Chen et al., Nature Medicine 2024",
            paper="Towards a general-purpose foundation model for computational pathology (UNI)")


@register_encoder(EncoderMeta(
    key="uni2-h", embed_dim=1536, pooling="cls", hf_repo="MahmoodLab/UNI2-h",
    default_weights="hf-hub:MahmoodLab/UNI2-h",
    weights_note="Gated; ViT-H/14 with 8 register tokens, SwiGLU, no class-token position embedding.",
    **_LAB,
))
def uni2h_backbone(**overrides: Any) -> nn.Module:
    """UNI2-h: ViT-H/14-style (embed 1536, depth 24, 24 heads), SwiGLUPacked, SiLU, 8 registers."""
    import timm
    import torch

    kwargs: dict[str, Any] = dict(
        img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
        mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True, mlp_layer=timm.layers.SwiGLUPacked,
        act_layer=torch.nn.SiLU, reg_tokens=8, dynamic_img_size=True,
    )
    kwargs.update(overrides)
    return timm.create_model("vit_giant_patch14_224", pretrained=False, **kwargs)


@register_encoder(EncoderMeta(
    key="uni", embed_dim=1024, pooling="cls", hf_repo="MahmoodLab/UNI", default_weights="hf-hub:MahmoodLab/UNI",
    weights_note="Gated; DINOv2-trained ViT-L/16 at 224 px.", **_LAB,
))
def uni_backbone(**overrides: Any) -> nn.Module:
    """UNI (v1): timm ViT-L/16, LayerScale 1e-5, 224 px, CLS token."""
    import timm

    kwargs: dict[str, Any] = dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
                                  dynamic_img_size=True)
    kwargs.update(overrides)
    return timm.create_model("vit_large_patch16_224", pretrained=False, **kwargs)
