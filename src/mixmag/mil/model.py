"""One MIL model for every method: an optional region encoder, an instance source, and a MIL head.

For ``abmil-Nx`` the instances are tile embeddings and there is no encoder. For ``mix-*`` the
encoder runs on the bag's regions *inside* :meth:`MILModel.forward`, so gradients reach it and the
whole stack is fine-tuned end-to-end (DESIGN.md §5); freezing it is an option of the training engine.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mixmag.mil.instances import InstanceSource, ModelInput


class MILOutput(NamedTuple):
    """Output for one bag.

    Attributes:
        logits: (C,) class logits.
        attention: (N,) attention weight of each instance (sums to 1).
        region: (N,) row in the bag's regions of each instance.
        token: (N,) token slot of each instance (-1 for a region CLS).
    """

    logits: torch.Tensor
    attention: torch.Tensor
    region: torch.Tensor
    token: torch.Tensor


class MILModel(nn.Module):
    """Region encoder (optional) + instance selection + MIL head.

    Args:
        source: The method's instance source.
        head: MIL head mapping (B, N, W) instances to logits and attention.
        encoder: Region encoder for the region sources (None for tile methods).
        eval_chunk: Regions per encoder call at evaluation, bounding memory on whole slides.
    """

    def __init__(self, *, source: InstanceSource, head: nn.Module, encoder: nn.Module | None = None,
                 eval_chunk: int = 256) -> None:
        super().__init__()
        if source.needs_encoder and encoder is None:
            raise ValueError(f"{type(source).__name__} needs a region encoder")
        self.source = source
        self.head = head
        self.encoder = encoder
        self.eval_chunk = eval_chunk

    def forward_features(self, inp: ModelInput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Instance embeddings (N, W) with their region rows and token slots (encoder runs here)."""
        chunk = None if self.training else self.eval_chunk
        inst = self.source.instances(inp, self.encoder, chunk=chunk)
        return inst.x, inst.region, inst.token

    def forward_head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, W) instances of one bag -> logits (C,) and attention (N,)."""
        out = self.head(x[None])
        return out.logits[0], out.attention[0]

    def forward(self, inp: ModelInput) -> MILOutput:
        """Prepared bag (on the model's device) -> :class:`MILOutput`."""
        x, region, token = self.forward_features(inp)
        logits, attention = self.forward_head(x)
        return MILOutput(logits, attention, region, token)
