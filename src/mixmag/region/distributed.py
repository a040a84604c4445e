"""Process-group plumbing for data-parallel pretraining (``torchrun`` / DDP, NCCL or gloo).

A single-process run uses the same code path with ``world_size == 1``, where every collective is a
no-op; the engine therefore never branches on "distributed or not" beyond wrapping the model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Attributes:
        rank: Global rank (0 writes every file).
        world_size: Number of processes.
        local_rank: Rank on this node (selects the CUDA device).
        device: The device this rank trains on.
        owns_group: True when this context initialised the process group (and must destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over ranks (returns a new tensor; identity for one process)."""
        if not self.distributed:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def gather_with_grad(self, tensor: Tensor) -> Tensor:
        """Concatenate every rank's ``tensor`` along dim 0, keeping gradients to all inputs.

        Needed for a contrastive loss over the *global* batch: the gradient of rank r's loss with
        respect to rank s's embeddings is sent back to rank s, so DDP with N processes computes the
        same gradient as one process holding the whole batch.
        """
        if not self.distributed:
            return tensor
        return _GatherWithGrad.apply(tensor)

    def barrier(self) -> None:
        """Wait for every rank (no-op for one process)."""
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients and returns this rank's slice.

    Written with all_gather/all_reduce only, which every backend (gloo included) implements.
    Requires the same dim-0 size on every rank.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.n = tensor.shape[0]  # type: ignore[attr-defined]
        ctx.rank = dist.get_rank()  # type: ignore[attr-defined]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.n  # type: ignore[attr-defined]
        return grad[start : start + ctx.n]  # type: ignore[attr-defined]


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group described by ``torchrun``'s environment, if any.

    ``WORLD_SIZE > 1`` (set by ``torchrun`` or a spawner) initialises the default group with NCCL
    for CUDA devices and gloo otherwise; an already initialised group is reused. Each CUDA rank
    uses ``cuda:LOCAL_RANK``.

    Args:
        device: Requested device; its index is replaced by LOCAL_RANK on CUDA.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return DistContext(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        owns = True
        logger.info("joined %s process group: rank %d of %d", backend, dist.get_rank(), dist.get_world_size())
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       device=device, owns_group=owns)
