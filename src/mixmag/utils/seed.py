"""Reproducible seeding of Python, NumPy and PyTorch."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def seed_everything(seed: int) -> None:
    """Seed ``random``, NumPy and (if importable) PyTorch on all devices."""
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return
    torch.manual_seed(seed)


@contextmanager
def torch_rng_scope(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed PyTorch's global RNGs for the ``with`` block and give the caller's state back afterwards.

    Model initialisation, dropout and ``torch.randperm`` draw from the global generators; seeding
    them inside a scope keeps a fit or a fresh build reproducible without changing the random
    stream of the code that called it (a notebook's own seeding, another fold running next).

    Args:
        seed: Seed for the block.
        device: Device whose CUDA generator is also saved and restored (the current CUDA device
            when None and CUDA is available; CPU only otherwise).
    """
    import torch

    if device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    elif device is None and torch.cuda.is_available():
        devices = [torch.cuda.current_device()]
    else:
        devices = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
