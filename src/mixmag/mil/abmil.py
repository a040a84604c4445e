"""Gated attention-based MIL pooling (Ilse, Tomczak & Welling, ICML 2018), with padding masks.

Per instance ``x_i``: ``h_i = Dropout(ReLU(W1 x_i))``; attention logit
``a_i = w^T (tanh(V h_i) ⊙ sigmoid(U h_i))``; weights ``softmax(a)`` over the *valid* instances of
the bag; bag embedding ``z = Σ_i softmax(a)_i h_i``; class logits ``W2 z``. The same head is used
for every method of the comparison (docs/concepts/evaluation.md), only its input changes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mixmag.registry import Registry

HEADS: Registry[type[nn.Module]] = Registry("MIL head")


class ABMILOutput(NamedTuple):
    """Head output: ``logits`` (B, C) and ``attention`` (B, N), zero on padding, summing to 1."""

    logits: torch.Tensor
    attention: torch.Tensor


def masked_instances(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of bags with its padding zeroed, and the mask (all True when None).

    Every MIL head calls this first: padding is zeroed *before* the network so that NaN/inf or huge
    padded values can never leak into a sum (0 * inf = nan).

    Raises:
        ValueError: A bag has no valid instance.
    """
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every bag needs at least one valid instance")
    return torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device)), mask


@HEADS.register("abmil", meta={"paper": "Ilse et al. 2018, gated attention", "pooling": "attention"})
class GatedABMIL(nn.Module):
    """Gated attention MIL head.

    Args:
        in_dim: Instance feature dimension D.
        n_classes: Number of output logits C (2 for binary tasks: softmax over two logits).
        hidden_dim: Width of the instance embedding (512 in the paper's AB-MIL).
        attention_dim: Hidden size of the gated attention branches (256).
        dropout: Dropout after the instance embedding (0.25).
    """

    def __init__(self, in_dim: int, *, n_classes: int = 2, hidden_dim: int = 512, attention_dim: int = 256,
                 dropout: float = 0.25) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Sequential(nn.Linear(hidden_dim, attention_dim), nn.Tanh())
        self.attention_u = nn.Sequential(nn.Linear(hidden_dim, attention_dim), nn.Sigmoid())
        self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool a padded batch of bags.

        Args:
            x: (B, N, D) instances; rows where ``mask`` is False are padding and may hold anything.
            mask: (B, N) bool, True for real instances; None = all real.

        Returns:
            ``(z (B, hidden_dim), attention (B, N))``; attention is exactly 0 on padding.
        """
        x, mask = masked_instances(x, mask)
        h = self.embed(x)
        logits = self.attention_w(self.attention_v(h) * self.attention_u(h)).squeeze(-1)
        logits = logits.float().masked_fill(~mask, torch.finfo(torch.float32).min)
        attention = torch.softmax(logits, dim=1) * mask  # exact zeros on padding
        z = torch.einsum("bn,bnh->bh", attention.to(h.dtype), h)
        return z, attention

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        """(B, hidden_dim) bag embeddings -> (B, C) logits."""
        return self.classifier(z)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> ABMILOutput:
        """(B, N, D) instances (+ (B, N) mask) -> logits (B, C) and attention (B, N)."""
        z, attention = self.forward_features(x, mask)
        return ABMILOutput(self.forward_head(z), attention)
