"""One optimisation step of region pretraining, shared by the engine and the benchmark.

:class:`Trainer` owns the pretraining model (encoder + heads, DDP-wrapped when distributed), AdamW
with linear warmup + cosine decay, mixed precision and gradient clipping. It knows nothing about
files: :mod:`mixmag.region.pretrain` feeds it batches and writes checkpoints and metrics.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from mixmag.errors import MixmagRuntimeError
from mixmag.geometry import RegionSpec
from mixmag.region.distributed import DistContext
from mixmag.region.model import RegionEncoder, build_region_encoder
from mixmag.region.objectives import OBJECTIVES, RegionPretrainer
from mixmag.region.settings import PretrainSettings, lr_factor
from mixmag.utils.device import resolve_amp


def param_groups(model: RegionPretrainer, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases, norm gains and embeddings/special tokens (MAE/timm convention)."""
    skip = {f"encoder.{n}" for n in model.encoder.no_weight_decay()}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Model, optimizer, schedule and precision of a pretraining run.

    Construction seeds nothing: call :func:`mixmag.utils.seed.seed_everything` first for a
    reproducible initialisation.

    Args:
        tile_dim: FM embedding dimension D.
        spec: Region layout.
        settings: Run settings (architecture, optimiser, objective).
        ctx: Process group; the model is wrapped in DDP when it spans several processes.
    """

    def __init__(self, *, tile_dim: int, spec: RegionSpec, settings: PretrainSettings, ctx: DistContext) -> None:
        s = self.settings = settings
        self.ctx = ctx
        self.objective = OBJECTIVES.get(s.objective)
        encoder = build_region_encoder(tile_dim=tile_dim, spec=spec, preset=s.preset, **s.architecture())
        self.model = RegionPretrainer(encoder, objective=self.objective, ctx=ctx, loss=s.loss, proj_dim=s.proj_dim,
                                      temperature=s.temperature,
                                      contrastive_weight=s.contrastive_weight).to(ctx.device)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, s.weight_decay), lr=s.lr, betas=s.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, functools.partial(lr_factor, total=s.steps, warmup=s.warmup_steps))
        amp = resolve_amp(s.precision, ctx.device, training=True)  # one meaning of "auto" (docs/concepts/precision.md)
        self.dtype = amp.dtype
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp.grad_scaler)
        self._wrapped: nn.Module | None = None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    @property
    def encoder(self) -> RegionEncoder:
        """The region encoder being trained."""
        encoder = self.model.encoder
        assert isinstance(encoder, RegionEncoder)
        return encoder

    def set_target_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Cohort statistics used to standardise MEM targets ((D,) each)."""
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.ctx.device)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.ctx.device)

    def state(self) -> dict[str, Any]:
        """Optimiser-side state for a resumable checkpoint (model weights are saved separately)."""
        return {"scaler": self.scaler.state_dict()}

    def load_state(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Restore model weights (``encoder.*`` / ``head.*`` checkpoint tensors) and optimiser state."""
        self.model.load_state_dict({k.removeprefix("head."): v for k, v in weights.items()
                                    if k.startswith(("encoder.", "head."))})
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    def _forward_module(self) -> nn.Module:
        if self._wrapped is None:
            self._wrapped = self.model
            if self.ctx.distributed:
                dev = self.ctx.device
                self._wrapped = torch.nn.parallel.DistributedDataParallel(
                    self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        return self._wrapped

    def step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimizer step on a rank-local batch from :class:`~mixmag.region.data.RegionStream`.

        Returns:
            Global (all-rank) values of ``loss`` and its terms, plus ``lr`` (used in this step) and
            ``grad_norm`` (before clipping).

        Raises:
            RuntimeError: The loss is not finite.
        """
        if self.mean is None or self.std is None:
            raise RuntimeError("call set_target_stats() before training")
        s, dev = self.settings, self.ctx.device
        model = self._forward_module()
        model.train()
        x = batch["x"].to(dev, non_blocking=True)
        keep, mask = batch["keep"].to(dev, non_blocking=True), batch["mask"].to(dev, non_blocking=True)
        target = (x - self.mean) / self.std  # standardised per FM dimension (fp32, outside autocast)
        lr = float(self.optimizer.param_groups[0]["lr"])
        with torch.autocast(dev.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            parts = model(x, target, keep, mask)
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks; each rank's loss is its share of the global mean, so
        # scaling by the world size makes the applied gradient that of the global loss.
        self.scaler.scale(parts["loss"] * self.ctx.world_size).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip if s.grad_clip > 0 else math.inf)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        names = sorted(parts)
        values = self.ctx.all_reduce_sum(torch.stack([parts[k].detach().float() for k in names])).tolist()
        record = dict(zip(names, values, strict=True))
        if not math.isfinite(record["loss"]):
            raise MixmagRuntimeError(f"pretraining loss became {record['loss']}; lower --lr or use --precision fp32")
        record.update(lr=lr, grad_norm=float(grad_norm))
        return record
