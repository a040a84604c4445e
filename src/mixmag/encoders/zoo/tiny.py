"""Tiny random encoders for tests and docs: deterministic (seeded init), fast on one CPU thread.

``tiny.d16`` is a 3-layer conv net (16-d, global average pool); ``tiny.vit-d32`` is a 2-block timm
ViT with one register token (32-d CLS), so the token-layout code paths of the big ViTs are
exercised in milliseconds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mixmag.encoders.base import EncoderMeta, register_encoder

_TINY: dict[str, Any] = dict(family="Test models", native_mpp=None, license="Apache-2.0 (this package)",
             default_weights="random", weights_note="Random weights: for tests only.")


class TinyConvNet(nn.Module):
    """Conv(3->8, s4) -> ReLU -> Conv(8->16, s4) -> ReLU -> Conv(16->width, s2) -> global mean.

    Args:
        width: Output embedding length.
    """

    def __init__(self, *, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=4, stride=4), nn.ReLU(),
            nn.Conv2d(8, 16, kernel_size=4, stride=4), nn.ReLU(),
            nn.Conv2d(16, width, kernel_size=3, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, width)."""
        return self.features(x).mean(dim=(2, 3))


@register_encoder(EncoderMeta(key="tiny.d16", embed_dim=16, pooling="avgpool", **_TINY))
def tiny_conv_backbone(**overrides: Any) -> nn.Module:
    """16-d tiny conv net."""
    return TinyConvNet(**{"width": 16, **overrides})


@register_encoder(EncoderMeta(key="tiny.vit-d32", embed_dim=32, pooling="cls", **_TINY))
def tiny_vit_backbone(**overrides: Any) -> nn.Module:
    """timm ViT: 224 px, 32-px patches, width 32, depth 2, 2 heads, 1 register token."""
    from timm.models.vision_transformer import VisionTransformer

    kwargs: dict[str, Any] = dict(img_size=224, patch_size=32, embed_dim=32, depth=2, num_heads=2,
                                  reg_tokens=1, num_classes=0, global_pool="")
    kwargs.update(overrides)
    return VisionTransformer(**kwargs)
