"""Owkin Phikon-v2: DINOv2-trained ViT-L/16 published as a Hugging Face ``Dinov2Model`` (CLS, 1024-d).

mixmag runs it as the equivalent timm ViT-L/16 (GELU MLP, LayerScale, qkv bias, LayerNorm eps
1e-6) so that no ``transformers`` dependency is needed; :func:`dinov2_hf_to_timm` renames the
published checkpoint's tensors (and fuses the separate q/k/v projections) onto timm's layout. The
card's embedding is ``last_hidden_state[:, 0]`` = the CLS token after the final LayerNorm.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from mixmag.encoders.base import EncoderMeta, StateDict, register_encoder

# Hugging Face Dinov2 name -> timm VisionTransformer name (per-block names use {i}).
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.norm1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.norm2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale1\.lambda1$", r"blocks.\1.ls1.gamma"),
    (r"^encoder\.layer\.(\d+)\.layer_scale2\.lambda1$", r"blocks.\1.ls2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.fc1\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.mlp\.fc2\.", r"blocks.\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
)
_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")


def dinov2_hf_to_timm(state: StateDict, model: nn.Module) -> StateDict:
    """Map a Hugging Face ``Dinov2Model`` state dict onto timm ViT names.

    Already-timm state dicts (``blocks.0.attn.qkv.weight`` present) are returned unchanged. The HF
    ``mask_token`` (used only for masked pretraining) is dropped.
    """
    if any(k.endswith("attn.qkv.weight") for k in state):
        return state
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix("dinov2.")  # Dinov2ForImageClassification wraps the backbone
        m = _QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        if key == "embeddings.mask_token":
            continue
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            out[key] = value  # left for the strict loader to report
    for (block, kind), parts in qkv.items():
        # timm fuses q, k, v into one projection in that order
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


@register_encoder(
    EncoderMeta(
        key="phikon-v2", family="Owkin Phikon", embed_dim=1024, pooling="cls", native_mpp=0.5,
        license="Owkin non-commercial licence", gated=False, hf_repo="owkin/phikon-v2",
        default_weights="hf-hub:owkin/phikon-v2",
        paper="Phikon-v2, A large and public feature extractor for biomarker prediction (arXiv:2409.09173)",
        citation="Filiot et al., 2024",
        weights_note="Hugging Face Dinov2 checkpoint, converted to timm names on load.",
    ),
    convert_state_dict=dinov2_hf_to_timm,
    hub_filenames=("model.safetensors",),
)
def phikon_v2_backbone(**overrides: Any) -> nn.Module:
    """timm ViT-L/16 at 224 px with LayerScale (the DINOv2 ViT-L/16 that Phikon-v2 is)."""
    import timm

    kwargs: dict[str, Any] = dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0)
    kwargs.update(overrides)
    return timm.create_model("vit_large_patch16_224", pretrained=False, **kwargs)
