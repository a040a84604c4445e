from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixmag.geometry import RegionSpec
from mixmag.region.distributed import DistContext
from mixmag.region.model import build_region_encoder
from mixmag.region.objectives import (
    OBJECTIVES,
    RegionPretrainer,
    info_nce_local,
    masked_reconstruction_loss,
)


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_loss_only_counts_masked_tokens(kind: str) -> None:
    torch.manual_seed(0)
    pred, target = torch.randn(3, 21, 8), torch.randn(3, 21, 8)
    mask = torch.zeros(3, 21, dtype=torch.bool)
    mask[:, 4:10] = True
    total, count = masked_reconstruction_loss(pred, target, mask, kind=kind)
    assert count == 18
    changed = target.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 8) * 50  # unmasked targets: no effect
    assert torch.equal(masked_reconstruction_loss(pred, changed, mask, kind=kind)[0], total)
    changed[0, 5] += 1.0  # a masked target: changes the loss
    assert not torch.equal(masked_reconstruction_loss(pred, changed, mask, kind=kind)[0], total)
    if kind == "mse":
        expected = ((pred - target) ** 2).mean(-1)[mask].sum()
        torch.testing.assert_close(total, expected)


def test_pretrainer_mem_loss_ignores_unmasked_targets_end_to_end() -> None:
    torch.manual_seed(1)
    enc = build_region_encoder(tile_dim=8, spec=RegionSpec(), preset="tiny")
    model = RegionPretrainer(enc, objective=OBJECTIVES.get("mem"), ctx=DistContext()).eval()
    x = torch.randn(4, 21, 8)
    keep = torch.ones(1, 4, 21, dtype=torch.bool)
    mask = torch.zeros(1, 4, 21, dtype=torch.bool)
    mask[0, :, ::3] = True
    out = model(x, x.clone(), keep, mask)
    target = x.clone()
    target[~mask[0]] = 7.0
    assert torch.equal(model(x, target, keep, mask)["loss"], out["loss"])
    assert set(out) == {"loss", "mem1"}


def test_cmem_parts_and_info_nce() -> None:
    torch.manual_seed(2)
    enc = build_region_encoder(tile_dim=8, spec=RegionSpec(), preset="tiny")
    model = RegionPretrainer(enc, objective=OBJECTIVES.get("cmem"), ctx=DistContext(), contrastive_weight=0.5)
    x = torch.randn(6, 21, 8)
    keep = torch.ones(2, 6, 21, dtype=torch.bool)
    mask = torch.rand(2, 6, 21) < 0.5
    out = model(x, x, keep, mask)
    assert set(out) == {"loss", "mem1", "mem2", "nce"}
    torch.testing.assert_close(out["loss"], out["mem1"] + out["mem2"] + 0.5 * out["nce"])
    z = F.normalize(torch.randn(16, 32), dim=-1)
    aligned = info_nce_local(z, z, temperature=0.1, ctx=DistContext()) / 16
    shuffled = info_nce_local(z, z.roll(1, 0), temperature=0.1, ctx=DistContext()) / 16
    assert aligned < 0.1 < shuffled
