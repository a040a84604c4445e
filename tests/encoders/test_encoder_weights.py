"""Weights sources: packaged ImageNet weights, local files/folders, prefixes, hub failures, conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mixmag.encoders import ENCODERS, WeightsError, build_encoder, load_state_dict_file
from mixmag.encoders.zoo.imagenet import lite0_package_path, lite0_package_to_timm
from mixmag.encoders.zoo.owkin import dinov2_hf_to_timm
from mixmag.utils.hashing import sha256_file

# ImageNet-1k classes 281..285 are the domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian cat).
CAT_CLASSES = range(281, 286)


def test_lite0_packaged_weights_classify_chelsea_as_cat() -> None:
    """The packaged weights are real ImageNet weights: skimage's cat photo is classified as a cat."""
    import timm
    from skimage import data

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()  # with classifier
    model.load_state_dict(lite0_package_to_timm(load_state_dict_file(lite0_package_path()), model))
    img = np.asarray(Image.fromarray(data.chelsea()).resize((224, 224), Image.Resampling.BICUBIC))
    enc = build_encoder("efficientnet-lite0-imagenet")  # the registry's transform and weights
    with torch.inference_mode():
        probs = model(enc.transform(torch.from_numpy(img[None].copy()))).softmax(-1)[0]
    assert int(probs.argmax()) in CAT_CLASSES
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.5
    # the encoder's pooled features are the classifier's input: same backbone weights
    with torch.inference_mode():
        pooled = model.forward_head(model.forward_features(enc.transform(torch.from_numpy(img[None].copy()))),
                                    pre_logits=True)
    torch.testing.assert_close(enc.encode(torch.from_numpy(img[None].copy())), pooled)
    assert enc.weights_source.startswith("package:") and enc.weights_hash == sha256_file(lite0_package_path())


def test_lite0_converter_rejects_other_checkpoints() -> None:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    state = dict(load_state_dict_file(lite0_package_path()))
    first = next(iter(state))
    state[first] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(WeightsError, match="positional mapping failed"):
        lite0_package_to_timm(state, model)


@pytest.mark.parametrize("layout", ["safetensors-prefixed", "torch-wrapped", "folder"])
def test_local_weights_roundtrip(tmp_path, layout: str) -> None:
    """A state dict saved by a user (with a DDP prefix / wrapper / in a folder) loads exactly."""
    from safetensors.torch import save_file

    ref = build_encoder("tiny.vit-d32")
    state = {k: v.clone().add_(0.01) for k, v in ref.backbone.state_dict().items()}  # not the random init
    if layout == "safetensors-prefixed":
        path = tmp_path / "w.safetensors"
        save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, str(path))
        arg = path
    elif layout == "torch-wrapped":
        path = tmp_path / "ckpt.pth"
        torch.save({"state_dict": state, "epoch": 3}, path)
        arg = path
    else:
        (tmp_path / "snap").mkdir()
        path = tmp_path / "snap" / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        arg = tmp_path / "snap"
    enc = build_encoder("tiny.vit-d32", weights=arg)
    for k, v in enc.backbone.state_dict().items():
        torch.testing.assert_close(v, state[k])
    assert enc.weights_hash == sha256_file(path) and enc.weights_source == str(path.resolve())


def test_mismatched_weights_say_what_is_wrong(tmp_path) -> None:
    path = tmp_path / "tiny_conv.pt"
    torch.save(build_encoder("tiny.d16").backbone.state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit encoder 'tiny.vit-d32'.*missing"):
        build_encoder("tiny.vit-d32", weights=path)


def test_pickled_objects_are_refused(tmp_path) -> None:
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole pickled module, not a state dict
    with pytest.raises(WeightsError, match="pickled Python objects") as info:
        build_encoder("tiny.d16", weights=path)
    assert "weights_only" not in str(info.value)  # no library flag a user might be tempted to flip


def test_hub_failure_tells_how_to_use_a_local_copy(monkeypatch) -> None:
    """Offline/gated hub access fails with one message naming --weights PATH (no network used)."""
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("We have no connection or you passed local_files_only")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsError) as info:
        build_encoder("virchow2")
    msg = str(info.value)
    assert "hf-hub:paige-ai/Virchow2" in msg and "--weights PATH" in msg and "gated" in msg


def test_an_unreachable_hub_is_asked_once_and_its_retry_logs_stay_quiet(monkeypatch, caplog) -> None:
    """Offline: one try, not one per candidate file (each waits for the hub's retries and timeouts)."""
    import logging

    import huggingface_hub

    calls: list[str] = []

    class LocalEntryNotFoundError(FileNotFoundError):  # what the hub raises offline, by name
        pass

    def offline(*args, filename: str, **kwargs):
        calls.append(filename)
        logging.getLogger("huggingface_hub").warning("retrying in 8s [Retry 2/5]")
        raise LocalEntryNotFoundError("cannot reach the hub and the file is not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    hub_level = logging.getLogger("huggingface_hub").level  # the library sets its own
    with caplog.at_level(logging.INFO, logger="mixmag"), pytest.raises(WeightsError) as info:
        build_encoder("virchow2")
    assert len(calls) == 1 and "LocalEntryNotFoundError" in str(info.value)
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub")]
    assert logging.getLogger("huggingface_hub").level == hub_level  # restored


def test_weight_argument_errors(tmp_path) -> None:
    with pytest.raises(WeightsError, match="either --weights or --random-weights"):
        build_encoder("tiny.d16", weights=tmp_path, random_weights=True)
    with pytest.raises(WeightsError, match="neither an existing file"):
        build_encoder("tiny.d16", weights=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="random_weights"):
        build_encoder("virchow2", arch_overrides={"depth": 1})
    with pytest.raises(KeyError, match="virchow2"):
        build_encoder("virchow")


def _timm_to_hf_dinov2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of the converter, written independently from HF's Dinov2 naming, for the round trip."""
    out = {"embeddings.cls_token": state["cls_token"], "embeddings.position_embeddings": state["pos_embed"],
           "embeddings.mask_token": torch.zeros(1, state["cls_token"].shape[-1]),
           "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    blocks = {k.split(".")[1] for k in state if k.startswith("blocks.")}
    for i in blocks:
        b, e = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[f"{b}attn.qkv.{kind}"].chunk(3, dim=0)
            out.update({f"{e}attention.attention.query.{kind}": q, f"{e}attention.attention.key.{kind}": k,
                        f"{e}attention.attention.value.{kind}": v,
                        f"{e}attention.output.dense.{kind}": state[f"{b}attn.proj.{kind}"],
                        f"{e}norm1.{kind}": state[f"{b}norm1.{kind}"], f"{e}norm2.{kind}": state[f"{b}norm2.{kind}"],
                        f"{e}mlp.fc1.{kind}": state[f"{b}mlp.fc1.{kind}"], f"{e}mlp.fc2.{kind}": state[f"{b}mlp.fc2.{kind}"]})
        out[f"{e}layer_scale1.lambda1"] = state[f"{b}ls1.gamma"]
        out[f"{e}layer_scale2.lambda1"] = state[f"{b}ls2.gamma"]
    return out


def test_phikon_v2_hf_checkpoint_converts_to_timm(tmp_path) -> None:
    """HF Dinov2 names (separate q/k/v, layer_scale, mask_token) map onto the timm ViT-L/16 exactly."""
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    src = build_encoder("phikon-v2", random_weights=True, arch_overrides={"depth": 1})
    state = {k: v.clone().mul_(1.01) for k, v in src.backbone.state_dict().items()}
    hf = _timm_to_hf_dinov2(state)
    converted = dinov2_hf_to_timm(hf, src.backbone)
    assert set(converted) == set(state)
    for k in state:
        torch.testing.assert_close(converted[k], state[k])
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in hf.items()}, str(path))
    # the registry path: file -> converter -> strict load (depth-1 entry rebuilt the same way)
    recipe = ENCODERS.get("phikon-v2")
    model = recipe.build_backbone(depth=1)
    from mixmag.encoders.weights import fit_state_dict

    fit_state_dict(model, load_state_dict_file(path), recipe, key="phikon-v2")
    torch.testing.assert_close(model.state_dict()["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])


def test_position_embedding_of_another_grid_is_resampled() -> None:
    """DINOv2-style checkpoints trained at 518 px load into the 224-px model (pos_embed resampled)."""
    from mixmag.encoders.weights import fit_state_dict

    recipe = ENCODERS.get("tiny.vit-d32")
    model = recipe.build_backbone(img_size=224)
    big = recipe.build_backbone(img_size=448).state_dict()  # 14x14 grid instead of 7x7
    fit_state_dict(model, big, recipe, key="tiny.vit-d32")
    assert model.pos_embed.shape == (1, 2 + 7 * 7, 32)  # CLS + 1 register + 7x7 patches
