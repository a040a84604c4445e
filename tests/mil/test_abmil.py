"""Gated AB-MIL head: attention is a distribution over valid instances and padding is inert."""

from __future__ import annotations

import pytest
import torch

from mixmag.mil.abmil import HEADS, GatedABMIL


def _head() -> GatedABMIL:
    torch.manual_seed(0)
    return GatedABMIL(6, n_classes=3, hidden_dim=16, attention_dim=8, dropout=0.25).eval()


def test_registered_and_keyword_only() -> None:
    assert HEADS.get("abmil") is GatedABMIL
    with pytest.raises(TypeError):
        GatedABMIL(6, 3)  # type: ignore[misc]


def test_attention_sums_to_one_over_valid_and_zero_on_padding() -> None:
    head = _head()
    x = torch.randn(3, 10, 6)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[0, 7:] = False
    mask[2, 1:] = False
    out = head(x, mask)
    assert out.logits.shape == (3, 3) and out.attention.shape == (3, 10)
    torch.testing.assert_close(out.attention.sum(1), torch.ones(3))
    assert (out.attention[~mask] == 0).all()
    assert out.attention[2, 0] == 1.0


def test_padding_values_do_not_change_outputs() -> None:
    head = _head()
    x = torch.randn(2, 8, 6)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, 5:] = False
    ref = head(x, mask)
    for filler in (1e4, float("inf"), float("nan")):
        y = x.clone()
        y[~mask] = filler
        out = head(y, mask)
        torch.testing.assert_close(out.logits, ref.logits)
        torch.testing.assert_close(out.attention, ref.attention)


def test_padded_batch_equals_unpadded_bags() -> None:
    head = _head()
    a, b = torch.randn(5, 6), torch.randn(9, 6)
    x = torch.zeros(2, 9, 6)
    x[0, :5], x[1] = a, b
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, :5], mask[1] = True, True
    batch = head(x, mask)
    torch.testing.assert_close(batch.logits[0], head(a[None]).logits[0])
    torch.testing.assert_close(batch.attention[0, :5], head(a[None]).attention[0])
    torch.testing.assert_close(batch.logits[1], head(b[None]).logits[0])


def test_empty_bag_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one valid instance"):
        _head()(torch.randn(1, 4, 6), torch.zeros(1, 4, dtype=torch.bool))
