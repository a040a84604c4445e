"""Contract test over every tile-encoder registry entry (random weights, offline).

Large ViT entries (ViT-L/H/g) run in the default suite as depth-reduced configs of the *same* class
(same width, heads, MLP, register tokens, token layout, pooling); the full-size builds run under
``-m slow``. Every registry key must be classified below, so a new entry cannot skip the contract.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mixmag.encoders import ENCODERS, POOLINGS, TileEncoder, build_encoder

# Entries small enough to build at full size in the default suite.
SMALL = {"efficientnet-lite0-imagenet", "tiny.d16", "tiny.vit-d32", "vit-small-random"}
# Large timm ViTs: (number of prefix tokens = CLS + registers) as on their model cards.
LARGE_VIT_PREFIX = {
    "virchow2": 5, "virchow2-cls": 5, "uni2-h": 9, "uni": 1, "h-optimus-0": 5, "h-optimus-1": 5,
    "prov-gigapath": 1, "phikon-v2": 1,
}
DEPTH_REDUCED = {"depth": 1}


def _batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 224, 224, generator=g) * 2 - 1  # already-normalised float NCHW


def test_every_entry_is_classified() -> None:
    """A new registry entry must be added to SMALL or LARGE_VIT_PREFIX (so the contract covers it)."""
    assert set(ENCODERS.keys()) == SMALL | set(LARGE_VIT_PREFIX)


def _check_contract(
    key: str, overrides: dict[str, int] | None, *, check_uint8: bool = True,
    extra: Callable[[TileEncoder, torch.Tensor, torch.Tensor], None] | None = None,
) -> None:
    torch.set_num_threads(1)
    meta = ENCODERS.meta(key)
    assert meta.key == key and meta.pooling in POOLINGS
    enc = build_encoder(key, random_weights=True, arch_overrides=overrides)
    x = _batch()
    out = enc.encode(x)
    assert out.shape == (2, meta.embed_dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])  # different tiles -> different embeddings
    assert enc.provenance()["weights_hash"] == "random"
    if check_uint8:
        # uint8 NHWC input goes through the entry's transform: same result as float NCHW
        tiles = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(enc.encode(tiles), enc.encode(enc.transform(tiles)))
    if extra is not None:
        extra(enc, x, out)
    del enc  # full-size ViT-g is ~4.5 GB in fp32: never hold two
    # deterministic: a second build under the fixed init seed gives identical embeddings
    again = build_encoder(key, random_weights=True, arch_overrides=overrides).encode(x)
    torch.testing.assert_close(out, again, rtol=0, atol=0)


@pytest.mark.parametrize("key", sorted(SMALL))
def test_small_entry_contract(key: str) -> None:
    _check_contract(key, None)


@pytest.mark.parametrize("key", sorted(SMALL | set(LARGE_VIT_PREFIX)))
def test_weights_cast_once_give_the_autocast_embeddings_bit_for_bit(key: str) -> None:
    """cast_weights_for_autocast stores exactly what autocast would compute with: identical outputs."""
    torch.set_num_threads(1)
    overrides = None if key in SMALL else DEPTH_REDUCED
    enc = build_encoder(key, random_weights=True, precision="bf16", arch_overrides=overrides)
    x = _batch()
    before = enc.encode(x)
    n_params = sum(p.numel() for p in enc.parameters())
    assert enc.cast_weights_for_autocast() > 0 and enc.weights_dtype == torch.bfloat16
    cast = sum(p.numel() for p in enc.parameters() if p.dtype == torch.bfloat16)
    assert cast > 0.5 * n_params  # the matmul weights, i.e. most of the model
    torch.testing.assert_close(enc.encode(x), before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="build a new encoder"):
        enc.autocast_dtype = None


def _token_layout(key: str) -> Callable[[TileEncoder, torch.Tensor, torch.Tensor], None]:
    def check(enc: TileEncoder, x: torch.Tensor, out: torch.Tensor) -> None:
        backbone = enc.backbone
        n_prefix = LARGE_VIT_PREFIX[key]
        assert backbone.num_prefix_tokens == n_prefix
        with torch.inference_mode():
            tokens = backbone.forward_features(x)
        patch = 224 // backbone.patch_embed.patch_size[0]
        assert tokens.shape[1] == n_prefix + patch * patch
        expected = {"cls": tokens[:, 0], "cls+mean": torch.cat([tokens[:, 0], tokens[:, n_prefix:].mean(1)], -1)}
        torch.testing.assert_close(out, expected[enc.meta.pooling].float())

    return check


@pytest.mark.parametrize("key", sorted(LARGE_VIT_PREFIX))
def test_large_vit_contract_depth_reduced(key: str) -> None:
    """Same class as the card (width, heads, MLP, registers) with one block; checks the token layout."""
    _check_contract(key, DEPTH_REDUCED, check_uint8=False, extra=_token_layout(key))


def test_virchow2_is_2560_cls_plus_mean_without_registers() -> None:
    """Virchow2: ViT-H/14 width 1280, 4 registers, 2560 = concat(CLS, mean(tokens[:, 5:]))."""
    enc = build_encoder("virchow2", random_weights=True, arch_overrides=DEPTH_REDUCED)
    bb = enc.backbone
    assert bb.embed_dim == 1280 and bb.num_reg_tokens == 4 and bb.patch_embed.patch_size == (14, 14)
    assert type(bb.blocks[0].mlp).__name__ == "GluMlp"  # SwiGLUPacked
    assert isinstance(bb.blocks[0].mlp.act, torch.nn.SiLU)
    out = enc.encode(_batch())
    assert out.shape == (2, 2560)
    cls_only = build_encoder("virchow2-cls", random_weights=True, arch_overrides=DEPTH_REDUCED).encode(_batch())
    torch.testing.assert_close(out[:, :1280], cls_only)  # same weights, same CLS half


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(LARGE_VIT_PREFIX))
def test_large_vit_contract_full_size(key: str) -> None:
    """Full-size builds (ViT-L/H/g, up to 1.1 B parameters): minutes on CPU, several GB of RAM."""
    _check_contract(key, None, check_uint8=False, extra=_token_layout(key))
