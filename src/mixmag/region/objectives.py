"""Self-supervised objectives of the region encoder: MEM, CMEM, and the untrained ``random`` baseline.

**MEM** (masked embedding modeling): a subset of each region's valid tokens is replaced by the mask
token (see :mod:`mixmag.region.masking`), the encoder contextualises the region, and a decoder head
predicts the original FM embedding of every masked token. Targets are standardised per dimension
with cohort statistics (so every FM dimension weighs the same, whatever its scale) and the loss is
the mean squared error (or ``1 - cosine``) over masked valid tokens only.

**CMEM** adds a contrastive term: two independently masked and subsampled views of each region
give two CLS vectors; an MLP projects them to 256-d, they are L2-normalised, and a symmetric
InfoNCE loss (temperature 0.1) over the global batch pulls the two views of the same region
together. Total = MEM(view 1) + MEM(view 2) + λ·InfoNCE.

Every loss term is computed as "this rank's share of the global mean": its numerator is local and
its denominator (number of masked tokens, number of regions) is summed over ranks. Summing the
terms over ranks therefore gives exactly the single-process loss of the global batch, which is what
makes an N-process DDP run match a one-process run with an N-times larger batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixmag.errors import MixmagValueError
from mixmag.region.distributed import DistContext
from mixmag.region.model import RegionEncoder
from mixmag.registry import Registry

RECONSTRUCTION_LOSSES = ("mse", "cosine")


@dataclass(frozen=True)
class Objective:
    """What a pretraining objective needs from the engine.

    Attributes:
        n_views: Stochastic views generated per region (2 for contrastive objectives).
        trains: False for ``random``: the initialised encoder is saved without any optimisation.
        contrastive: Whether the InfoNCE term over CLS projections is added.
        description: One line for ``--help`` and docs.
    """

    n_views: int
    trains: bool
    contrastive: bool
    description: str


OBJECTIVES: Registry[Objective] = Registry("pretraining objective")
OBJECTIVES.add("mem", Objective(1, True, False, "masked embedding modeling"))
OBJECTIVES.add("cmem", Objective(2, True, True, "MEM on two views + symmetric InfoNCE of their CLS"))
OBJECTIVES.add("random", Objective(1, False, False, "same encoder, saved at initialisation (baseline)"))


def masked_reconstruction_loss(pred: Tensor, target: Tensor, mask: Tensor, *, kind: str = "mse") -> tuple[Tensor, Tensor]:
    """Per-token reconstruction loss summed over masked tokens.

    Args:
        pred: (B, T, D) decoder output.
        target: (B, T, D) standardised FM embeddings.
        mask: (B, T) bool; only these tokens contribute (pass ``mask & valid``).
        kind: ``"mse"`` (mean over D of the squared error) or ``"cosine"`` (1 - cosine similarity).

    Returns:
        ``(sum of per-token losses, number of masked tokens)``, both scalar float tensors; unmasked
        tokens do not influence either value (their targets are never read into the sum).
    """
    if kind not in RECONSTRUCTION_LOSSES:
        raise MixmagValueError(f"unknown reconstruction loss {kind!r}; use one of {RECONSTRUCTION_LOSSES}")
    sel = mask.bool()
    p, t = pred[sel].float(), target[sel].float()  # (N, D) masked tokens only
    per_token = (p - t).pow(2).mean(dim=-1) if kind == "mse" else 1.0 - F.cosine_similarity(p, t, dim=-1)
    return per_token.sum(), sel.sum().to(per_token.dtype)


def info_nce_local(z1: Tensor, z2: Tensor, *, temperature: float, ctx: DistContext) -> Tensor:
    """This rank's summed symmetric InfoNCE terms against the *global* batch.

    Args:
        z1: (B_local, P) L2-normalised projections of view 1.
        z2: (B_local, P) the same regions' view 2.
        temperature: Softmax temperature τ.
        ctx: Process group (columns are gathered from every rank with gradients).

    Returns:
        Scalar: sum over local regions of ``(CE(1->2) + CE(2->1)) / 2``; divide by the global batch
        size for the mean.
    """
    g1, g2 = ctx.gather_with_grad(z1), ctx.gather_with_grad(z2)  # (B_global, P)
    offset = ctx.rank * z1.shape[0]
    labels = torch.arange(z1.shape[0], device=z1.device) + offset
    logits12 = z1.float() @ g2.float().T / temperature  # local rows of view 1 vs every view 2
    logits21 = z2.float() @ g1.float().T / temperature
    return 0.5 * (F.cross_entropy(logits12, labels, reduction="sum")
                  + F.cross_entropy(logits21, labels, reduction="sum"))


class RegionPretrainer(nn.Module):
    """Encoder + MEM decoder head (+ CMEM projection head) with the MAE-style three-stage split.

    Args:
        encoder: The region encoder being pretrained.
        objective: A registered :class:`Objective`.
        ctx: Process group used to normalise losses over the global batch.
        loss: Reconstruction loss, ``"mse"`` or ``"cosine"``.
        proj_dim: Output size of the contrastive projection head.
        temperature: InfoNCE temperature τ.
        contrastive_weight: λ, weight of the InfoNCE term.
    """

    def __init__(self, encoder: RegionEncoder, *, objective: Objective, ctx: DistContext, loss: str = "mse",
                 proj_dim: int = 256, temperature: float = 0.1, contrastive_weight: float = 1.0) -> None:
        super().__init__()
        if loss not in RECONSTRUCTION_LOSSES:
            raise MixmagValueError(f"unknown reconstruction loss {loss!r}; use one of {RECONSTRUCTION_LOSSES}")
        self.encoder = encoder
        self.objective = objective
        self.ctx = ctx
        self.loss_kind = loss
        self.temperature = float(temperature)
        self.contrastive_weight = float(contrastive_weight)
        w, d = encoder.width, encoder.tile_dim
        # A light MLP decoder: the encoder already contextualises mask tokens (BEiT-style), so a
        # deep decoder would mostly let the encoder off the hook.
        self.decoder = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, w), nn.GELU(), nn.Linear(w, d))
        self.projector = (nn.Sequential(nn.Linear(w, w), nn.GELU(), nn.Linear(w, proj_dim))
                          if objective.contrastive else None)
        for m in [*self.decoder.modules(), *(self.projector.modules() if self.projector else [])]:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_encoder(self, x: Tensor, keep: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Encode one view: x (B, T, D), keep/mask (B, T) bool -> (cls (B, W), tokens (B, T, W))."""
        return self.encoder.forward_encoder(x, keep, mask)

    def forward_decoder(self, tokens: Tensor) -> Tensor:
        """Predict FM embeddings (standardised units) of every token: (B, T, W) -> (B, T, D)."""
        return self.decoder(tokens)

    def forward_loss(self, pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """This rank's share of the mean reconstruction loss over the global batch's masked tokens.

        Returns:
            ``(loss share, local masked-token count)``.
        """
        total, count = masked_reconstruction_loss(pred, target, mask, kind=self.loss_kind)
        global_count = self.ctx.all_reduce_sum(count.detach()).clamp_min(1.0)
        return total / global_count, count

    def forward(self, x: Tensor, target: Tensor, keep: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Loss of one batch.

        Args:
            x: (B, T, D) raw FM embeddings.
            target: (B, T, D) the same, standardised with the cohort statistics.
            keep: (V, B, T) bool tokens visible to the encoder per view (after token dropping).
            mask: (V, B, T) bool masked tokens per view (subset of ``keep``).

        Returns:
            ``"loss"`` (this rank's share of the global loss: summing it over ranks gives the
            single-process loss) and detached shares of each term (``mem1``, ``mem2``, ``nce``).
        """
        parts: dict[str, Tensor] = {}
        cls_views = []
        loss = x.new_zeros((), dtype=torch.float32)
        for v in range(self.objective.n_views):
            cls, tokens = self.forward_encoder(x, keep[v], mask[v])
            share, _ = self.forward_loss(self.forward_decoder(tokens), target, mask[v])
            loss = loss + share
            parts[f"mem{v + 1}"] = share.detach()
            cls_views.append(cls)
        if self.projector is not None:
            z1, z2 = (F.normalize(self.projector(c).float(), dim=-1) for c in cls_views[:2])
            global_batch = x.shape[0] * self.ctx.world_size
            nce = info_nce_local(z1, z2, temperature=self.temperature, ctx=self.ctx) / global_batch
            loss = loss + self.contrastive_weight * nce
            parts["nce"] = nce.detach()
        parts["loss"] = loss
        return parts
