"""TransMIL (Shao et al., NeurIPS 2021) as a MIL head: a small transformer over a bag's instances.

Written here from the paper's description (no code taken from its repository). Per bag of N
instances ``x`` (N, D):

1. ``h = Dropout(ReLU(W x))`` (N, H), as AB-MIL's instance embedding;
2. a learned class token is prepended: (1 + N, H);
3. layer 1: ``h = h + MSA(LayerNorm(h))``, multi-head self-attention over the class token and
   every valid instance (TransMIL's layers have no MLP block);
4. PPEG (pyramid position encoding generator): the instances, in bag order, are laid out row by
   row on the smallest square grid that holds them and ``grid + dw7x7(grid) + dw5x5(grid) +
   dw3x3(grid)`` (depthwise convolutions) is added back, which gives each instance a conditional
   position code from its sequence neighbours;
5. layer 2 as layer 1; only the class token's output feeds the classifier, so only its query is
   computed (the other rows of the last layer would be discarded: same result, O(N) instead of O(N²));
6. ``logits = W_c LayerNorm(h_cls)``.

Deviations from the reference model, and why:

- Exact softmax attention instead of the Nyström approximation. TransMIL used Nyström to fit bags of
  10^4 instances in memory; :func:`torch.nn.functional.scaled_dot_product_attention` now runs exact
  attention in flash / memory-efficient kernels whose memory is linear in N, on CUDA and on the CPU
  (measured on the CPU, one thread: 10,000 instances, 8 heads of 32, forward 2.2 s and +14 MB; a
  4,096-instance forward + backward +29 MB). Our bags (at most ``mil.max_instances`` = 4,096
  training instances, ~10^4 20x tiles per slide at evaluation) fit without approximating.
- The square grid is filled only inside PPEG (wrapping around to the first instances, as the
  reference does) and the copies are dropped again after the convolutions. The reference appends the copies
  before layer 1, so they take part in attention; here attention, and the attention map this head
  returns, cover each real instance exactly once, and padding in a batch changes nothing.
- PPEG's grid is a *sequence* layout: tiles arrive region by region and, inside a region, row by
  row (the order of ``RegionSpec.layout()``), so horizontal grid neighbours are mostly the same
  region's neighbouring tiles and vertical ones are unrelated regions. That is also true of the
  reference, whose patches arrive in a slide scan order; PPEG is kept for fidelity, but its
  "position" is not slide geometry, and a training subsample (``mil.max_instances``) shifts it.
- Dropout (the head's ``dropout``, 0.25 by default) acts on the instance embedding, as in AB-MIL,
  so the two heads are regularised alike; there is no attention dropout.

The returned ``attention`` is the class token's attention over the instances in the last layer,
averaged over heads; its weight on itself is dropped and the rest renormalised, so it sums to 1
over the valid instances and is exactly 0 on padding, like :class:`~mixmag.mil.abmil.GatedABMIL`'s.

Importing this module registers the ``transmil`` head in :data:`~mixmag.mil.abmil.HEADS`
(:mod:`mixmag.mil.methods` imports it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)
from torch import nn

from mixmag.mil.abmil import HEADS, ABMILOutput, masked_instances

#: TransMIL's number of attention heads (fewer for narrow layers, see :func:`n_heads`).
N_HEADS = 8
#: Narrowest head kept when splitting a layer: on the rare-instance task of
#: :mod:`mixmag.synth.mil_features` (attention width 16), 8 heads of 2 dimensions learned in some
#: seeds only (2-fold AUROC 0.63-0.98 over 4 seeds, 8 epochs), 2 heads of 8 in all (0.96-0.999).
MIN_HEAD_DIM = 8
#: PPEG's depthwise kernel sizes (the paper's 7, 5, 3).
PPEG_KERNELS = (7, 5, 3)


def n_heads(attention_dim: int) -> int:
    """Heads of a layer of width ``attention_dim``: 8 as in TransMIL, fewer (4, 2, 1) so that each
    head keeps at least :data:`MIN_HEAD_DIM` dimensions and the width divides evenly."""
    for heads in (N_HEADS, 4, 2):
        if attention_dim % heads == 0 and attention_dim // heads >= MIN_HEAD_DIM:
            return heads
    return 1


class _MultiHeadAttention(nn.Module):
    """Pre-norm multi-head self-attention of one TransMIL layer (the residual is added by the caller).

    Args:
        dim: Token width H.
        inner_dim: Width of the query/key/value projections, split over ``heads`` heads.
        heads: Number of heads (divides ``inner_dim``).
    """

    def __init__(self, dim: int, inner_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner_dim)
        self.out = nn.Linear(inner_dim, dim)

    def _qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, H) -> q, k, v, each (B, heads, L, inner_dim / heads)."""
        b, n, _ = h.shape
        qkv = self.qkv(self.norm(h)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, h: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """Update of every token: (B, L, H) tokens, (B, L) bool keys that may be attended -> (B, L, H)."""
        q, k, v = self._qkv(h)
        # no mask at all lets the flash kernel run (the usual case: one bag per forward)
        attn_mask = None if bool(key_mask.all()) else key_mask[:, None, None, :]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, heads, L, d)
        return self.out(o.transpose(1, 2).flatten(2))

    def forward_first(self, h: torch.Tensor, key_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Update of the first token (the class token) only.

        Returns:
            ``(update (B, H), weights (B, L))``: the class token's attention over all L tokens,
            averaged over heads (float32), exactly 0 on masked keys.
        """
        q, k, v = self._qkv(h)
        # .float() after the product: under autocast the matmul runs (and returns) in bf16/fp16
        scores = (q[:, :, :1] @ k.transpose(-1, -2)).float().squeeze(2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~key_mask[:, None, :], torch.finfo(torch.float32).min)  # (B, heads, L)
        weights = torch.softmax(scores, dim=-1) * key_mask[:, None, :]
        o = torch.einsum("bgl,bgld->bgd", weights.to(v.dtype), v)  # (B, heads, d)
        return self.out(o.flatten(1)), weights.mean(dim=1)


class PPEG(nn.Module):
    """Pyramid position encoding generator over the square-laid instances of each bag.

    Args:
        dim: Token width H (one depthwise filter per channel).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in PPEG_KERNELS)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, N, H) instances (no class token), (B, N) validity -> (B, N, H), 0 on padding.

        Each bag's valid instances, in order, fill a ``side x side`` grid row by row (``side =
        ceil(sqrt(n))``), wrapping around to its first instances; the convolutions see that grid
        and only the n real cells are kept, so a bag's result does not depend on its padding.
        """
        out = torch.zeros_like(h)
        for b in range(h.shape[0]):  # bags differ in length, hence in grid size
            idx = torch.nonzero(mask[b]).squeeze(1)
            n = idx.numel()
            side = math.isqrt(n - 1) + 1
            cells = h[b, idx[torch.arange(side * side, device=h.device) % n]]  # (side², H), row-major
            grid = cells.T.reshape(1, -1, side, side)  # (1, H, row, col)
            pos = grid
            for conv in self.convs:
                pos = pos + conv(grid)
            grid = pos
            out[b, idx] = grid.reshape(h.shape[2], side * side).T[:n]
        return out


@HEADS.register("transmil", meta={"paper": "Shao et al. 2021, TransMIL", "pooling": "class token"})
class TransMIL(nn.Module):
    """TransMIL head (see module docstring): same constructor and output as the AB-MIL head.

    Args:
        in_dim: Instance feature dimension D.
        n_classes: Number of output logits C.
        hidden_dim: Token width H (512 in the paper).
        attention_dim: Width of the query/key/value projections of each layer, split over 8 heads
            (fewer for narrow layers: :func:`n_heads`; the default 256 gives 8 heads of 32).
        dropout: Dropout after the instance embedding.
    """

    def __init__(self, in_dim: int, *, n_classes: int = 2, hidden_dim: int = 512, attention_dim: int = 256,
                 dropout: float = 0.25) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.n_classes = n_classes
        heads = n_heads(attention_dim)
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        nn.init.normal_(self.cls_token, std=0.02)
        self.layer1 = _MultiHeadAttention(hidden_dim, attention_dim, heads)
        self.ppeg = PPEG(hidden_dim)
        self.layer2 = _MultiHeadAttention(hidden_dim, attention_dim, heads)
        self.norm = nn.LayerNorm(hidden_dim)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool a padded batch of bags.

        Args:
            x: (B, N, D) instances; rows where ``mask`` is False are padding and may hold anything.
            mask: (B, N) bool, True for real instances; None = all real.

        Returns:
            ``(z (B, hidden_dim), attention (B, N))``: the normalised class token, and its last-layer
            attention over the instances (sums to 1, exactly 0 on padding).
        """
        x, mask = masked_instances(x, mask)
        h = self.embed(x)
        h = torch.cat([self.cls_token.to(h.dtype).expand(h.shape[0], -1, -1), h], dim=1)  # (B, 1 + N, H)
        keys = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        h = h + self.layer1(h, keys)
        h = torch.cat([h[:, :1], self.ppeg(h[:, 1:], mask)], dim=1)
        update, weights = self.layer2.forward_first(h, keys)
        z = self.norm(h[:, 0] + update)
        attention = weights[:, 1:]  # drop the class token's weight on itself, renormalise over instances
        total = attention.sum(dim=1, keepdim=True)
        # a class token attending only to itself (all instance weights underflowed) reads as uniform
        uniform = mask.float() / mask.sum(dim=1, keepdim=True)
        attention = torch.where(total > 0, attention / total.clamp_min(torch.finfo(total.dtype).tiny), uniform)
        return z, attention

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        """(B, hidden_dim) class tokens -> (B, C) logits."""
        return self.classifier(z)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> ABMILOutput:
        """(B, N, D) instances (+ (B, N) mask) -> logits (B, C) and attention (B, N)."""
        z, attention = self.forward_features(x, mask)
        return ABMILOutput(self.forward_head(z), attention)
