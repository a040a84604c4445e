"""One MIL model for every method: an optional region encoder, an instance source, and a MIL head.

For ``abmil-Nx`` the instances are tile embeddings, standardised with statistics of the training
bags, and there is no encoder. For ``mix-*`` the
encoder runs on the bag's regions *inside* :meth:`MILModel.forward`, so gradients reach it and the
whole stack is fine-tuned end-to-end (docs/concepts/evaluation.md); freezing it is an option of the training engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from mixmag.mil.data import BagRegions
from mixmag.mil.instances import InstanceSource, ModelInput
from mixmag.region.data import TargetMoments


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


def pad_by_bag(x: torch.Tensor, bag: torch.Tensor, n_bags: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter (N, W) instances grouped by bag into a padded (B, N_max, W) batch and a (B, N_max) mask.

    ``bag`` (N,) must be non-decreasing (instances of one bag contiguous), which is how sources emit them.
    """
    counts = torch.bincount(bag, minlength=n_bags)
    if bool((counts == 0).any()):
        raise ValueError("every bag of a batch needs at least one instance")
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(x.shape[0], device=x.device) - starts[bag]
    padded = x.new_zeros(n_bags, int(counts.max()), x.shape[1])
    padded[bag, pos] = x
    mask = torch.zeros(padded.shape[:2], dtype=torch.bool, device=x.device)
    mask[bag, pos] = True
    return padded, mask


class InstanceStandardizer(nn.Module):
    """Per-dimension standardisation ``(x - mean) / std`` of tile instances (identity until fitted).

    Fitted on the training bags of a fold only (no test statistics leak into the model) and saved
    with the weights. Tile methods need it for the same reason the region encoder standardises its
    inputs: a few FM dimensions carry most of the variance and would dominate the first layer.

    Args:
        dim: Instance dimension D.
    """

    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit_(self, batches: Iterable[torch.Tensor]) -> InstanceStandardizer:
        """Set mean/std from (N_i, D) instance batches, with the same statistics as pretraining
        (:class:`~mixmag.region.data.TargetMoments`: float64 sums, constant dimensions keep std 1)."""
        moments = TargetMoments.empty(self.mean.shape[0])
        for x in batches:
            moments.add(x.detach().cpu().numpy())
        mean, std = moments.finalize()
        self.mean.copy_(torch.from_numpy(mean))
        self.std.copy_(torch.from_numpy(std))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> standardised (..., D) in the input dtype."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # fold models saved before standardisation existed were trained on raw features: identity
        for name, fill in (("mean", self.mean), ("std", self.std)):
            state_dict.setdefault(prefix + name, fill.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


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
        # Tile instances are standardised here (fitted per fold); a region encoder standardises
        # its own inputs with its pretraining statistics, and its outputs are LayerNorm-ed.
        self.instance_norm: InstanceStandardizer | None = None
        if not source.needs_encoder:
            in_dim = getattr(head, "in_dim", None)
            if not isinstance(in_dim, int):
                raise ValueError(f"the MIL head {type(head).__name__} must expose its input width as `in_dim`")
            self.instance_norm = InstanceStandardizer(in_dim)

    def fit_instance_norm(self, bags: Iterable[BagRegions]) -> None:
        """Fit the tile standardisation on ``bags`` (every instance; no-op for encoder methods)."""
        if self.instance_norm is not None:
            self.instance_norm.fit_(self.source.prepare(bag).x for bag in bags)

    def forward_features(self, inp: ModelInput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Instance embeddings (N, W) with their region rows and token slots (encoder runs here)."""
        chunk = None if self.training else self.eval_chunk
        inst = self.source.instances(inp, self.encoder, chunk=chunk)
        x = inst.x if self.instance_norm is None else self.instance_norm(inst.x)
        return x, inst.region, inst.token

    def forward_head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, W) instances of one bag -> logits (C,) and attention (N,)."""
        out = self.head(x[None])
        return out.logits[0], out.attention[0]

    def forward_batch(self, inputs: Sequence[ModelInput]) -> torch.Tensor:
        """(B,) prepared bags (on the model's device) -> (B, C) logits, for mini-batch training.

        The encoder runs once over the regions of all bags; each bag's instances are then padded
        to the longest bag and the head's masked softmax ignores the padding, so every bag is
        pooled exactly as in :meth:`forward`.
        """
        if self.source.needs_encoder:
            merged, bag_of_row = ModelInput.concat(inputs)
            x, region, _ = self.forward_features(merged)
            bag = torch.as_tensor(bag_of_row, device=x.device)[region]
        else:
            parts = [self.forward_features(inp)[0] for inp in inputs]
            x = torch.cat(parts)
            bag = torch.repeat_interleave(torch.arange(len(parts), device=x.device),
                                          torch.as_tensor([len(p) for p in parts], device=x.device))
        padded, mask = pad_by_bag(x, bag, len(inputs))
        return self.head(padded, mask).logits

    def forward(self, inp: ModelInput) -> MILOutput:
        """Prepared bag (on the model's device) -> :class:`MILOutput`."""
        x, region, token = self.forward_features(inp)
        logits, attention = self.forward_head(x)
        return MILOutput(logits, attention, region, token)
