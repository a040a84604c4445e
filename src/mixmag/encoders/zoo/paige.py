"""Paige Virchow2 (mixed-magnification ViT-H/14), the tile encoder of the mixmag paper.

Recipe from the model card (hf-hub:paige-ai/Virchow2): timm ``vit_huge_patch14_224`` with a packed
SwiGLU MLP (mlp_ratio 5.3375), SiLU, 4 register tokens, LayerScale 1e-5, no pooling in timm
(``global_pool=""``) and ImageNet normalisation at 224 px. The card's embedding is
``concat(CLS, mean(patch tokens))`` with the 4 registers excluded (tokens ``[:, 5:]``) -> 2560-d.
Some tools store only the 1280-d CLS token; ``virchow2-cls`` reproduces those files.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mixmag.encoders.base import EncoderMeta, register_encoder

_COMMON: dict[str, Any] = dict(
    family="Paige Virchow2",
    input_px=224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    # trained on 5x/10x/20x/40x tiles: no single native resolution
    native_mpp=None,
    license="CC-BY-NC-ND-4.0",
    gated=True,
    hf_repo="paige-ai/Virchow2",
    default_weights="hf-hub:paige-ai/Virchow2",
    paper="Virchow2: Scaling Self-Supervised Mixed Magnification Models in Pathology (arXiv:2408.00738)",
    citation="Zimmermann et al., 2024",
    weights_note="Gated on Hugging Face: accept the licence, then log in or pass a local copy with --weights.",
)


@register_encoder(EncoderMeta(key="virchow2", embed_dim=2560, pooling="cls+mean", **_COMMON))
@register_encoder(EncoderMeta(key="virchow2-cls", embed_dim=1280, pooling="cls", **_COMMON))
def virchow2_backbone(**overrides: Any) -> nn.Module:
    """ViT-H/14 exactly as on the Virchow2 model card (random init here; weights loaded by the factory)."""
    import timm
    import torch

    kwargs: dict[str, Any] = dict(
        img_size=224, init_values=1e-5, num_classes=0, mlp_ratio=5.3375, reg_tokens=4,
        global_pool="", dynamic_img_size=True, mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU,
    )
    kwargs.update(overrides)
    return timm.create_model("vit_huge_patch14_224", pretrained=False, **kwargs)
