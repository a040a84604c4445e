from __future__ import annotations

import pytest
import torch

from mixmag.geometry import RegionSpec
from mixmag.region.model import REGION_ENCODERS, RegionEncoder, build_region_encoder

LAYOUTS = {
    "5x/10x/20x (21)": RegionSpec(),
    "5x/20x only (17)": RegionSpec(mpps=(2.0, 0.5)),
    "2x2 region of 5x tiles (84)": RegionSpec(region_um=896.0),
}


@pytest.mark.parametrize("position", ["slot", "sincos"])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_shapes_for_layouts(name: str, position: str) -> None:
    spec = LAYOUTS[name]
    model = build_region_encoder(tile_dim=12, spec=spec, preset="tiny", position=position).eval()
    t = spec.n_tokens
    assert t == {"5x/10x/20x (21)": 21, "5x/20x only (17)": 17, "2x2 region of 5x tiles (84)": 84}[name]
    x, valid = torch.randn(3, t, 12), torch.rand(3, t) > 0.3
    cls, tokens = model.forward_features(x, valid)
    assert cls.shape == (3, model.width) and tokens.shape == (3, t, model.width)
    assert torch.equal(model(x, valid), cls)


def test_invalid_tokens_are_key_padded_and_never_leak() -> None:
    torch.manual_seed(0)
    model = build_region_encoder(tile_dim=8, spec=RegionSpec(), preset="tiny").eval()
    x = torch.randn(2, 21, 8)
    valid = torch.ones(2, 21, dtype=torch.bool)
    valid[:, [3, 9, 15]] = False
    cls, tokens = model.forward_features(x, valid)
    x2 = x.clone()
    x2[:, [3, 9, 15]] = torch.randn(2, 3, 8) * 100
    x2[0, 9] = float("nan")  # even non-finite filler in background rows is harmless
    cls2, tokens2 = model.forward_features(x2, valid)
    torch.testing.assert_close(cls, cls2)
    torch.testing.assert_close(tokens[valid], tokens2[valid])
    assert torch.isfinite(tokens2).all()


def test_all_invalid_region_gives_finite_output() -> None:
    model = build_region_encoder(tile_dim=8, spec=RegionSpec(), preset="tiny").eval()
    valid = torch.zeros(2, 21, dtype=torch.bool)
    valid[1, 0] = True
    cls, tokens = model.forward_features(torch.randn(2, 21, 8), valid)
    assert torch.isfinite(cls).all() and torch.isfinite(tokens).all()


def test_mask_token_only_acts_where_masked() -> None:
    torch.manual_seed(1)
    model = build_region_encoder(tile_dim=8, spec=RegionSpec(), preset="tiny").eval()
    x, valid = torch.randn(2, 21, 8), torch.ones(2, 21, dtype=torch.bool)
    plain = model.forward_features(x, valid)
    none_masked = model.forward_encoder(x, valid, torch.zeros(2, 21, dtype=torch.bool))
    torch.testing.assert_close(plain[0], none_masked[0])
    mask = torch.zeros(2, 21, dtype=torch.bool)
    mask[:, 5:9] = True
    masked = model.forward_encoder(x, valid, mask)
    assert not torch.allclose(masked[0], plain[0])
    # a masked token's input is irrelevant: only the mask token, position and magnification remain
    x2 = x.clone()
    x2[:, 5:9] = torch.randn(2, 4, 8)
    torch.testing.assert_close(model.forward_encoder(x2, valid, mask)[1], masked[1])


def test_sincos_needs_centres_and_width_multiple_of_4() -> None:
    with pytest.raises(ValueError, match="token_centres"):
        RegionEncoder(tile_dim=4, n_tokens=2, n_mags=1, token_mag_index=[0, 0], position="sincos", width=8,
                      heads=2, depth=1)
    with pytest.raises(ValueError, match="divisible by 4"):
        build_region_encoder(tile_dim=4, spec=RegionSpec(), preset="tiny", width=30, heads=2, position="sincos")
    with pytest.raises(ValueError, match="token_mag_index"):
        RegionEncoder(tile_dim=4, n_tokens=3, n_mags=1, token_mag_index=[0, 0], width=8, heads=2, depth=1)


def test_wrong_input_layout_is_a_clear_error() -> None:
    model = build_region_encoder(tile_dim=8, spec=RegionSpec(), preset="tiny")
    with pytest.raises(ValueError, match=r"\(B, 21, 8\)"):
        model(torch.randn(2, 17, 8), torch.ones(2, 17, dtype=torch.bool))


def test_presets_and_registry() -> None:
    assert {"base", "small", "tiny"} <= set(REGION_ENCODERS.keys())
    base = REGION_ENCODERS.get("base")
    assert (base.width, base.depth, base.heads, base.mlp_ratio, base.drop_path) == (768, 6, 12, 4.0, 0.1)
    m = build_region_encoder(tile_dim=16, spec=RegionSpec(), preset="small", depth=1)
    assert m.width == 128 and len(m.blocks) == 1
    with pytest.raises(KeyError, match="Did you mean: small"):
        build_region_encoder(tile_dim=16, spec=RegionSpec(), preset="smal")


def test_drop_path_only_in_training_mode() -> None:
    torch.manual_seed(2)
    model = build_region_encoder(tile_dim=8, spec=RegionSpec(), preset="tiny", drop_path=0.5)
    x, valid = torch.randn(4, 21, 8), torch.ones(4, 21, dtype=torch.bool)
    model.eval()
    torch.testing.assert_close(model(x, valid), model(x, valid))
    model.train()
    assert not torch.allclose(model(x, valid), model(x, valid))
