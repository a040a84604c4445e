"""Device and precision selection shared by the embedding, pretraining and MIL engines."""

from __future__ import annotations

import torch

from mixmag.errors import MixmagValueError


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX).

    bf16 autocast on a CPU without them is emulated and slower than fp32.
    """
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Map a precision name (``fp32``, ``fp16``, ``bf16``, ``auto``) to an autocast dtype or None.

    ``auto`` picks fp16 on CUDA and bf16 on CPUs that support it natively, else fp32 (None).
    """
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else None
    raise MixmagValueError(f"unknown precision {precision!r}; use one of fp32, fp16, bf16, auto")
